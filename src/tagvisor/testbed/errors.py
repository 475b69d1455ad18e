"""The testbed's error: a part is missing, a download failed, or the boot went wrong."""

from __future__ import annotations

from tagvisor.errors import TagvisorError


class TestbedError(TagvisorError):
    """The testbed could not be built or run; the message says what is missing."""

    __test__ = False  # not a pytest test class, whatever its name says
