"""A DMA engine: the VMM side copies guest memory, and on request its tags too.

This is the seed's case for VMM access to guest tags: device emulation that moves
memory must carry the tags along or the guest loses them. The engine reaches memory
through the configured :class:`~tagvisor.vmm.tag_access.TagAccess`, so the same device
runs on every way the seed discussed.

Registers (64-bit): SRC 0x00, DST 0x08, LEN 0x10, CMD 0x18 (write 1: copy data; 2:
copy data and tags, everything 16-byte aligned), STATUS 0x20 (0 done, 1 error).
"""

from __future__ import annotations

from typing import Final

from tagvisor.arch.constants import TAG_GRANULE
from tagvisor.errors import TagvisorError
from tagvisor.vmm.tag_access import TagAccess

WINDOW: Final = 0x1000
SRC, DST, LEN, CMD, STATUS = 0x00, 0x08, 0x10, 0x18, 0x20
COPY_DATA: Final = 1
COPY_WITH_TAGS: Final = 2
#: One request moves at most this much, so a guest cannot make the VMM allocate freely.
MAX_LENGTH: Final = 16 << 20


class DmaEngine:
    name = "dma"

    def __init__(self, access: TagAccess) -> None:
        self.access = access
        self.registers = {SRC: 0, DST: 0, LEN: 0}
        self.status = 0
        self.last_error = ""

    def mmio_read(self, offset: int, size: int) -> bytes:
        value = self.status if offset == STATUS else self.registers.get(offset, 0)
        return value.to_bytes(8, "little")[:size]

    def mmio_write(self, offset: int, data: bytes) -> None:
        value = int.from_bytes(data, "little")
        if offset in self.registers:
            self.registers[offset] = value
        elif offset == CMD:
            self.status = 0 if self._run(value) else 1

    def _run(self, command: int) -> bool:
        src, dst, length = self.registers[SRC], self.registers[DST], self.registers[LEN]
        try:
            if command not in (COPY_DATA, COPY_WITH_TAGS):
                raise TagvisorError(f"unknown DMA command {command}")
            if length > MAX_LENGTH:
                raise TagvisorError(f"DMA of {length} bytes exceeds {MAX_LENGTH}")
            if command == COPY_WITH_TAGS and (src | dst | length) % TAG_GRANULE:
                raise TagvisorError("a DMA with tags needs 16-byte aligned src, dst and length")
            data = self.access.read_data(src, length)
            tags = self.access.read_tags(src, length // TAG_GRANULE) if command == 2 else None
            self.access.write_data(dst, data)
            if tags is not None:
                self.access.write_tags(dst, tags)
        except TagvisorError as error:  # a VmmTagFault or an unmapped address too
            self.last_error = str(error)
            return False
        return True
