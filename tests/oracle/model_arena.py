"""The model's side of the probe's memory: the same three regions as FlatTaggedMemory.

The probe maps ``3 * region`` bytes and gives only the middle third PROT_MTE, so the
model needs memory whose granules are tagged or not by address. :class:`ArenaMemory`
implements :class:`tagvisor.arch.TagMemory` over three
:class:`tagvisor.arch.FlatTaggedMemory` blocks (untagged, tagged, untagged); a request
that crosses a block boundary is split granule-range by granule-range.
"""

from __future__ import annotations

import numpy as np

from tagvisor.arch import TAG_GRANULE, FlatTaggedMemory
from tagvisor.arch.tagformat import U8
from tests.oracle.qemu_probe import Arena


class ArenaMemory:
    """Untagged, tagged and untagged memory of ``arena.region`` bytes each."""

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
        r = arena.region
        self.blocks = [
            FlatTaggedMemory(arena.base, r, tagged=False),
            FlatTaggedMemory(arena.base + r, r, tagged=True),
            FlatTaggedMemory(arena.base + 2 * r, r, tagged=False),
        ]

    def _pieces(self, address: int, length: int) -> list[tuple[FlatTaggedMemory, int, int, int]]:
        """(block, address, length, offset into the request) covering the request."""
        pieces = []
        done = 0
        for block in self.blocks:
            start = max(address, block.base)
            stop = min(address + length, block.base + block.size)
            if start < stop:
                pieces.append((block, start, stop - start, start - address))
                done += stop - start
        if done != length:
            raise ValueError(f"[{address:#x}, +{length:#x}) is outside the arena")
        return pieces

    def load_tags(self, address: int, count: int) -> U8:
        out = np.empty(count, dtype=np.uint8)
        for block, start, length, offset in self._pieces(address, count * TAG_GRANULE):
            first = offset // TAG_GRANULE
            out[first : first + length // TAG_GRANULE] = block.load_tags(
                start, length // TAG_GRANULE
            )
        return out

    def store_tags(self, address: int, tags: U8) -> None:
        for block, start, length, offset in self._pieces(address, tags.size * TAG_GRANULE):
            first = offset // TAG_GRANULE
            block.store_tags(start, tags[first : first + length // TAG_GRANULE])

    def write_data(self, address: int, data: bytes) -> None:
        for block, start, length, offset in self._pieces(address, len(data)):
            block.write_data(start, data[offset : offset + length])

    def read_data(self, address: int, length: int) -> bytes:
        return b"".join(
            block.read_data(start, size) for block, start, size, _ in self._pieces(address, length)
        )

    # Probe-offset conveniences ------------------------------------------------------

    def at(self, offset: int) -> int:
        """The untagged address of probe offset ``offset``."""
        return self.arena.base + offset

    def tag_of(self, offset: int) -> int:
        """The model's allocation tag of the granule at probe offset ``offset`` (0 if none)."""
        tag = int(self.load_tags(self.at(offset - offset % TAG_GRANULE), 1)[0])
        return 0 if tag == 0xFF else tag

    def fill(self, offset: int, length: int, byte: int) -> None:
        self.write_data(self.at(offset), bytes([byte]) * length)

    def tag_fill(self, offset: int, length: int, tag: int) -> None:
        """What the probe's ``tagfill`` does: STG each granule (untagged ones ignore it)."""
        self.store_tags(self.at(offset), np.full(length // TAG_GRANULE, tag, dtype=np.uint8))
