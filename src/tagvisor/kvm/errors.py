"""KvmError: an ioctl failed, with the kernel's errno and the ioctl's name."""

from __future__ import annotations

import os

from tagvisor.errors import TagvisorError


class KvmError(TagvisorError, OSError):
    """A KVM ioctl failed. ``errno`` is what the kernel returned; ``ioctl`` its name.

    ``detail`` says, in words, which of the kernel's checks refused the call and what
    to do about it; the real backend cannot know that and leaves it empty.
    """

    def __init__(self, err: int, ioctl: str, detail: str = "") -> None:
        super().__init__(err, os.strerror(err))
        self.ioctl = ioctl
        self.detail = detail

    def __str__(self) -> str:
        text = f"{self.ioctl}: {self.strerror} (errno {self.errno})"
        return f"{text}: {self.detail}" if self.detail else text
