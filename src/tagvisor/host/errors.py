"""Errors of the host kernel model: system calls fail with Linux's errno."""

from __future__ import annotations

import errno as _errno
import os

from tagvisor.errors import TagvisorError


class SyscallError(TagvisorError, OSError):
    """A host system call (mmap, mprotect, ...) failed with ``errno``."""

    def __init__(self, err: int, syscall: str, detail: str) -> None:
        super().__init__(err, f"{syscall}: {os.strerror(err)}: {detail}")
        self.syscall = syscall
        self.detail = detail

    def __str__(self) -> str:
        return str(self.strerror)


class OutOfMemory(SyscallError):
    """No free frames (ENOMEM)."""

    def __init__(self, detail: str) -> None:
        super().__init__(_errno.ENOMEM, "alloc_pages", detail)


class SegmentationFault(TagvisorError):
    """A host process touched an address with no mapping, or broke its protection.

    ``si_code`` follows Linux: SEGV_MAPERR 1, SEGV_ACCERR 2, SEGV_MTEAERR 8,
    SEGV_MTESERR 9.
    """

    def __init__(self, address: int, si_code: int, detail: str) -> None:
        super().__init__(f"SIGSEGV (si_code {si_code}) at {address:#x}: {detail}")
        self.address = address
        self.si_code = si_code
