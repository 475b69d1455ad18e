"""A DMA engine: the VMM side copies guest memory, and on request its tags too.

This is the seed's case for VMM access to guest tags: device emulation that moves
memory must carry the tags along or the guest loses them. The engine reaches memory
through the configured :class:`~tagvisor.vmm.tag_access.TagAccess`, so the same device
runs on every way the seed discussed.

Registers (64-bit): SRC 0x00, DST 0x08, LEN 0x10, CMD 0x18 (write 1: copy data; 2:
copy data and tags, everything 16-byte aligned), STATUS 0x20 (0 done, 1 error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tagvisor import wire
from tagvisor.arch.constants import TAG_GRANULE
from tagvisor.errors import TagvisorError
from tagvisor.vmm.tag_access import TagAccess

WINDOW: Final = 0x1000
SRC, DST, LEN, CMD, STATUS = 0x00, 0x08, 0x10, 0x18, 0x20
COPY_DATA: Final = 1
COPY_WITH_TAGS: Final = 2
#: One request moves at most this much, so a guest cannot make the VMM allocate freely.
MAX_LENGTH: Final = 16 << 20


@dataclass(frozen=True)
class DmaState:
    """The engine's SRC, DST and LEN registers and its STATUS."""

    registers: tuple[int, int, int]
    status: int

    def encode(self) -> bytes:
        """The registers and status as deterministic JSON."""
        return wire.dumps({"registers": list(self.registers), "status": self.status})

    @classmethod
    def decode(cls, payload: wire.Payload) -> DmaState:
        """The state in ``payload``, every field checked (FormatError otherwise)."""
        return cls.from_json(wire.loads(payload, "the DMA engine's state"))

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> DmaState:
        """The state in a parsed JSON object, every field checked."""
        registers = wire.field(raw, "registers", list)
        if len(registers) != 3 or not all(_is_u64(value) for value in registers):
            raise wire.FormatError("the DMA engine's registers are not three u64 values")
        status = wire.integer(raw, "status", 0, 1)
        return cls((registers[0], registers[1], registers[2]), status)


def _is_u64(value: object) -> bool:
    return type(value) is int and 0 <= value < 1 << 64


class DmaEngine:
    """A DMA engine the guest programs with SRC, DST and LEN: the VMM copies guest
    memory, with its tags when CMD asks (docs/guest-abi.md)."""

    name = "dma"

    def __init__(self, access: TagAccess) -> None:
        self.access = access
        self.registers = {SRC: 0, DST: 0, LEN: 0}
        self.status = 0
        self.last_error = ""

    def mmio_read(self, offset: int, size: int) -> bytes:
        """A register's value (STATUS, or SRC, DST, LEN as written)."""
        value = self.status if offset == STATUS else self.registers.get(offset, 0)
        return value.to_bytes(8, "little")[:size]

    def mmio_write(self, offset: int, data: bytes) -> None:
        """Set a register; a write to CMD runs the copy it names."""
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

    def save(self) -> DmaState:
        """The registers and status."""
        registers = self.registers
        return DmaState((registers[SRC], registers[DST], registers[LEN]), self.status)

    def restore(self, state: DmaState) -> None:
        """Set the registers and status."""
        self.registers.update(zip((SRC, DST, LEN), state.registers, strict=True))
        self.status = state.status
