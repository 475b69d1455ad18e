"""Memslots: guest physical ranges backed by the VMM's memory, with their stage-2 state.

Each memslot keeps, per guest page, the host frame stage 2 maps it to (or none), whether
that mapping is writable, and, while dirty logging, the dirty bitmap. Guest physical
page numbers are plain ints here; the vectorised paths take NumPy arrays of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, NewType

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.kvm.uapi import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY

#: A guest physical address (an IPA, in Arm terms).
GuestPhysAddr = NewType("GuestPhysAddr", int)

#: No host frame is numbered 0 (tagvisor.host.frames.FIRST_FRAME), so 0 is "no stage-2
#: entry" and a memslot's table starts as zeros the OS backs lazily.
NOT_MAPPED: Final = 0


@dataclass(eq=False)
class Memslot:
    """One KVM memslot and its stage-2 mappings."""

    slot: int
    flags: int
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    s2_pfn: NDArray[np.int64] = field(init=False)
    s2_writable: NDArray[np.bool_] = field(init=False)
    dirty: NDArray[np.bool_] | None = field(init=False, default=None)
    #: False only when no bit of ``dirty`` is set, so a clean log is found unread.
    dirty_pending: bool = field(init=False, default=False)
    _clean_bitmap: bytes | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.s2_pfn = np.zeros(self.npages, dtype=np.int64)  # NOT_MAPPED everywhere
        self.s2_writable = np.zeros(self.npages, dtype=bool)

    @property
    def npages(self) -> int:
        """Pages in the slot."""
        return self.memory_size // PAGE_SIZE

    @property
    def base_gfn(self) -> int:
        """The guest frame number of the slot's first page."""
        return self.guest_phys_addr // PAGE_SIZE

    @property
    def end(self) -> int:
        """The guest-physical address just past the slot."""
        return self.guest_phys_addr + self.memory_size

    @property
    def readonly(self) -> bool:
        """Whether KVM_MEM_READONLY is set."""
        return bool(self.flags & KVM_MEM_READONLY)

    @property
    def logging(self) -> bool:
        """Whether KVM_MEM_LOG_DIRTY_PAGES is set."""
        return bool(self.flags & KVM_MEM_LOG_DIRTY_PAGES)

    def contains(self, gpa: int) -> bool:
        """Whether ``gpa`` lies in the slot."""
        return self.guest_phys_addr <= gpa < self.end

    def hva_of(self, page: int) -> int:
        """Host virtual address of the slot's ``page``-th page."""
        return self.userspace_addr + page * PAGE_SIZE

    def unmap(self, pages: NDArray[np.int64] | slice) -> None:
        """Drop stage-2 entries (MMU notifier, memslot change)."""
        self.s2_pfn[pages] = NOT_MAPPED
        self.s2_writable[pages] = False

    def clean_bitmap_bytes(self) -> bytes:
        """A bitmap with no page dirty, made once (a paused guest's log, read again
        and again while it migrates)."""
        if self._clean_bitmap is None:
            self._clean_bitmap = bytes(-(-self.npages // 64) * 8)
        return self._clean_bitmap

    def dirty_bitmap_bytes(self) -> bytes:
        """The dirty bitmap as KVM_GET_DIRTY_LOG returns it: ALIGN(npages, 64) / 8 bytes."""
        assert self.dirty is not None
        bitmap = np.zeros(-(-self.npages // 64) * 8, dtype=np.uint8)
        packed = np.packbits(self.dirty, bitorder="little")  # zero-padded to a byte
        bitmap[: packed.size] = packed
        return bitmap.tobytes()


class MemslotTable:
    """The VM's memslots by id, and lookups from guest physical addresses."""

    def __init__(self) -> None:
        self.slots: dict[int, Memslot] = {}
        #: Bumped whenever a stage-2 entry is removed or loses write permission, so a
        #: CPU's cached guest-page translations know to start again.
        self.generation = 0

    def changed(self) -> None:
        """Count a change of the memslots: cached translations must be looked up again."""
        self.generation += 1

    def __iter__(self) -> object:
        return iter(self.slots.values())

    def find(self, gpa: int) -> Memslot | None:
        """The memslot covering ``gpa`` (gfn_to_memslot)."""
        for memslot in self.slots.values():
            if memslot.contains(gpa):
                return memslot
        return None

    def overlapping(self, gpa: int, size: int, exclude: int) -> Memslot | None:
        """A slot other than ``exclude`` that overlaps [gpa, gpa + size), if any."""
        for memslot in self.slots.values():
            if (
                memslot.slot != exclude
                and gpa < memslot.end
                and memslot.guest_phys_addr < gpa + size
            ):
                return memslot
        return None

    def logging_count(self) -> int:
        """kvm->nr_memslots_dirty_logging."""
        return sum(1 for memslot in self.slots.values() if memslot.logging)
