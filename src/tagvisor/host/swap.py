"""Swap with tags: a swapped-out page's tags are saved and come back with it.

arch/arm64/mm/mteswap.c: before a tagged page is written to swap, arch_prepare_to_swap
calls mte_save_tags, which keeps the page's 128 bytes of packed tags keyed by its swap
entry; on swap-in arch_swap_restore calls mte_restore_tags, which restores them under
try_page_mte_tagging and marks the page tagged; when the swap entry goes,
arch_swap_invalidate_page drops the saved tags. Untagged pages save nothing, and a
page that comes back without saved tags is cleared by mte_sync_tags when it is mapped
PROT_MTE again.
"""

from __future__ import annotations

import errno
from typing import Final

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import PACKED_TAGS_PER_PAGE, PAGE_SIZE
from tagvisor.host.errors import SyscallError
from tagvisor.host.frames import FrameTable, Pfns
from tagvisor.host.mapping import NO_FRAME, BackingKind
from tagvisor.host.process import HostProcess

#: The first swap slot handed out (see SwapDevice).
FIRST_SLOT: Final = 1


class SwapDevice:
    """``nslots`` page-sized swap slots, and the saved tags of tagged pages.

    Slots are numbered from FIRST_SLOT: slot 0 is never used, so that a page table's
    zeros mean "not in swap" (tagvisor.host.mapping.NO_SLOT)."""

    def __init__(self, frames: FrameTable, nslots: int) -> None:
        self.frames = frames
        total = nslots + FIRST_SLOT
        self.data = np.zeros((total, PAGE_SIZE), dtype=np.uint8)
        self.saved_tags = np.zeros((total, PACKED_TAGS_PER_PAGE), dtype=np.uint8)
        self.has_tags = np.zeros(total, dtype=bool)
        self.used = np.zeros(total, dtype=bool)
        self.used[:FIRST_SLOT] = True  # reserved for good

    @property
    def tag_bytes_saved(self) -> int:
        """Bytes of tag storage in use: 128 per tagged page in swap."""
        return int(self.has_tags.sum()) * PACKED_TAGS_PER_PAGE

    def _alloc_slots(self, count: int) -> NDArray[np.int64]:
        free = np.flatnonzero(~self.used)[:count]
        if free.size < count:
            raise SyscallError(errno.ENOMEM, "swap_out", "the swap device is full")
        self.used[free] = True
        return free.astype(np.int64)

    def swap_out(self, process: HostProcess, address: int, length: int) -> int:
        """Reclaim the present, unshared pages of [address, address + length) to swap.

        Returns how many pages went out. Hugetlb pages are never swapped.
        """
        count = 0
        stop = address + length
        for vma in list(process.vmas):
            lo, hi = max(vma.start, address), min(vma.end, stop)
            if lo >= hi or vma.backing.kind is BackingKind.HUGETLB:
                continue
            backing = vma.backing
            index = np.arange(vma.page_index(lo), vma.page_index(hi - 1) + 1)
            index = index[backing.pfns[index] != NO_FRAME]
            pfns = backing.pfns[index]
            # Pages shared by CoW or KSM stay: reclaiming them needs rmap, not modelled.
            alone = self.frames.refcount[pfns] == 1
            index, pfns = index[alone], pfns[alone]
            if not index.size:
                continue
            process.invalidate(lo, hi)
            slots = self._alloc_slots(index.size)
            self.data[slots] = self.frames.data[pfns]
            tagged = self.frames.mte_tagged[pfns]
            self.saved_tags[slots[tagged]] = self.frames.packed_pages[pfns[tagged]]
            self.has_tags[slots] = tagged
            backing.swap_slots[index] = slots
            backing.pfns[index] = NO_FRAME
            self.frames.put(pfns)
            count += int(index.size)
        return count

    def swap_in(self, slots: NDArray[np.int64]) -> Pfns:
        """Read pages back into fresh frames, restoring saved tags; frees the slots."""
        pfns = self.frames.alloc(slots.size)
        self.frames.data[pfns] = self.data[slots]
        tagged = self.has_tags[slots]
        if tagged.any():
            self.frames.restore_tags(pfns[tagged], self.saved_tags[slots[tagged]])
        self.release(slots)
        return pfns

    def release(self, slots: NDArray[np.int64]) -> None:
        """Free swap slots and their saved tags (arch_swap_invalidate_page)."""
        self.used[slots] = False
        self.has_tags[slots] = False
