"""A progress register: a guest stores an 8-byte counter, the VMM keeps the last value.

Bulk workloads (tagvisor.kvm.model.workloads) report how far they got here after each
batch, which gives the VMM regular exits to interleave work with, as a timer would.
"""

from __future__ import annotations

from typing import Final

WINDOW: Final = 0x1000


class ProgressRegister:
    """A register bulk workloads store a counter to after each batch."""

    name = "progress"

    def __init__(self) -> None:
        self.value = 0
        self.writes = 0

    def mmio_read(self, offset: int, size: int) -> bytes:
        """The last value stored."""
        return self.value.to_bytes(8, "little")[:size]

    def mmio_write(self, offset: int, data: bytes) -> None:
        """Store a new value, and count the store."""
        self.value = int.from_bytes(data, "little")
        self.writes += 1
