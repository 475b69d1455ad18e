"""The arch layer's TagMemory over the running guest's *virtual* addresses.

:mod:`tagvisor.arch` reaches allocation tags by untagged address. For the CPU those
addresses are virtual: each page is translated through stage 1 (with the permission
the instruction needs - a tag store is a write), pages that are not Normal Tagged have
no tags (:data:`~tagvisor.arch.NO_TAG`; stores there are dropped), and tagged pages go
to stage 2's tag storage, where a tag store needs write permission and so marks the
page dirty. A fault is reported with the instruction's own pointer top byte restored
in FAR_EL1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tagvisor.arch.constants import TAG_GRANULE
from tagvisor.arch.memory import NO_TAG
from tagvisor.arch.tagformat import U8
from tagvisor.cpu.bus import MmioExit
from tagvisor.cpu.exceptions import FSC_EXTERNAL, data_abort
from tagvisor.cpu.mmu import TAGGED

if TYPE_CHECKING:
    from tagvisor.cpu.memory import GuestMemory

_LOW56 = (1 << 56) - 1


class VirtualTagMemory:
    """TagMemory for one instruction: ``write`` is the permission stores need."""

    def __init__(self, memory: GuestMemory, *, write: bool, el: int, pointer: int) -> None:
        self.memory = memory
        self.write = write
        self.el = el
        self.top = pointer & ~_LOW56

    def _far(self, address: int) -> int:
        return (address & _LOW56) | self.top

    def _chunks(self, address: int, length: int) -> list[tuple[int, int, int]]:
        """(virtual address, offset, length) per page of [address, address + length)."""
        out = []
        done = 0
        while done < length:
            here = address + done
            size = min(length - done, 4096 - (here & 0xFFF))
            out.append((here, done, size))
            done += size
        return out

    def load_tags(self, address: int, count: int) -> U8:
        """Tags of ``count`` granules from virtual ``address``; NO_TAG where the page is not
        Normal Tagged, outside RAM, or tags are not reachable (HCR_EL2.ATA)."""
        tags = np.full(count, NO_TAG, np.uint8)
        stage2 = self.memory.stage2
        for here, offset, size in self._chunks(address, count * TAG_GRANULE):
            entry, gpa = self.memory.translate_data(
                here, write=False, el=self.el, far=self._far(here)
            )
            if entry.memtype != TAGGED or not self.memory.state.tag_access:
                continue
            try:
                first = offset // TAG_GRANULE
                tags[first : first + size // TAG_GRANULE] = stage2.load_tags(
                    gpa, size // TAG_GRANULE
                )
            except MmioExit:
                continue  # no tag storage outside RAM
        return tags

    def store_tags(self, address: int, tags: U8) -> None:
        """Store tags from virtual ``address``, a write for both stages; dropped where the page
        is not Normal Tagged or tags are not reachable, an external abort outside RAM."""
        stage2 = self.memory.stage2
        for here, offset, size in self._chunks(address, int(tags.size) * TAG_GRANULE):
            far = self._far(here)
            entry, gpa = self.memory.translate_data(here, write=True, el=self.el, far=far)
            if entry.memtype != TAGGED or not self.memory.state.tag_access:
                continue
            first = offset // TAG_GRANULE
            try:
                stage2.store_tags(gpa, tags[first : first + size // TAG_GRANULE])
            except MmioExit:
                raise data_abort(FSC_EXTERNAL, far, write=True) from None

    def write_data(self, address: int, data: bytes) -> None:
        """Write ``data`` at virtual ``address`` through both stages (STGP, STZG and DC GZVA)."""
        for here, offset, size in self._chunks(address, len(data)):
            _, gpa = self.memory.translate_data(here, write=True, el=self.el, far=self._far(here))
            self.memory.write_phys(gpa, data[offset : offset + size])
