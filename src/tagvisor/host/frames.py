"""Host physical memory: page frames, their tags, and the two MTE page flags.

Linux keeps a page's MTE state in two page flags (arch/arm64/include/asm/mte.h):
``PG_mte_tagged`` says the page's tags are valid (initialised or restored), and
``PG_mte_lock`` serialises who initialises them. ``try_page_mte_tagging`` wins the lock
for exactly one caller, which clears or restores the tags and then calls
``set_page_mte_tagged``; a loser waits until the flag is set. Both flags are cleared
when a page is freed (mm/page_alloc.c, ``PAGE_FLAGS_CHECK_AT_PREP`` covers every page
flag), so a reused frame's old tags are never considered valid for the new owner.

For hugetlb folios the flags live on the head page and the whole folio is initialised
at once (arch/arm64/kvm/mmu.c, sanitise_mte_tags; folio_try_hugetlb_mte_tagging).

Everything here works on arrays of frame numbers, so touching a GiB of memory is a few
vector operations, not a Python loop per page.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
from typing import Final, NewType

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import GRANULES_PER_PAGE, PACKED_TAGS_PER_PAGE, PAGE_SIZE
from tagvisor.arch.tagstore import TagStorage
from tagvisor.host.errors import OutOfMemory
from tagvisor.host.populate import populate

#: A host page frame number.
Pfn = NewType("Pfn", int)
Pfns = NDArray[np.int64]

HUGE_PAGE_FRAMES: Final = 512  # 2 MiB hugetlb folio of 4 KiB pages

#: Frame 0 is never handed out (on arm64 no RAM need sit at physical address 0), so
#: page tables can say "no frame" with 0: a table of zeros is one the OS backs lazily,
#: where one filled with -1 costs a page fault per page of table when it is made (8 MiB
#: per 4 GiB mapped; on a VM whose hypervisor reclaims freed memory, 20 ms each).
FIRST_FRAME: Final = 1


#: Whether frame data is advised transparent huge pages (first touches then fault 2 MiB
#: at a time). Off: where free memory goes back to a hypervisor (free page reporting,
#: as on the VMs tagvisor is benchmarked on) fresh 2 MiB blocks come unbacked, and the
#: migration benchmark's destination took 2.8-3.0 s to fill 1 GiB of fresh guest RAM
#: with THP against 0.9-1.6 s with 4 KiB pages. On bare metal THP may win.
ADVISE_HUGE_PAGES = False


def _lazy_zeroed(size: int) -> NDArray[np.uint8]:
    """Zeroed memory the OS backs lazily, in huge pages if ADVISE_HUGE_PAGES."""
    if size == 0:
        return np.zeros(0, np.uint8)
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if ADVISE_HUGE_PAGES:
        with contextlib.suppress(OSError, AttributeError):  # THP may be off or unknown
            area.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(area, np.uint8)


def as_pfns(frames: Pfns | list[int] | int) -> Pfns:
    """One frame number, a list or an array of them, as an int64 array."""
    return np.atleast_1d(np.asarray(frames, dtype=np.int64))


def consecutive(pfns: Pfns) -> bool:
    """Whether the frames are one ascending run, so ``array[first:first + n]`` is a view."""
    if pfns.size < 2:
        return True
    return int(pfns[-1]) - int(pfns[0]) == pfns.size - 1 and bool(np.all(np.diff(pfns) == 1))


class FrameTable:
    """``usable`` page frames of host RAM with data, tags and MTE flags, numbered from
    FIRST_FRAME (``nframes`` counts the reserved frame 0 as well).

    Data and tags are allocated with ``np.zeros``: the OS backs them lazily, so a large
    table costs only what is touched (unless :meth:`prealloc` faults some in ahead).
    """

    def __init__(self, usable: int) -> None:
        nframes = usable + FIRST_FRAME
        self.nframes = nframes
        self.data = _lazy_zeroed(nframes * PAGE_SIZE).reshape(nframes, PAGE_SIZE)
        self.tags = TagStorage(nframes * GRANULES_PER_PAGE)
        self.mte_tagged = np.zeros(nframes, dtype=bool)
        self.mte_lock = np.zeros(nframes, dtype=bool)
        #: Head frame of the folio a frame belongs to (itself for a small page).
        self.folio_head = np.arange(nframes, dtype=np.int64)
        self.hugetlb = np.zeros(nframes, dtype=bool)
        #: Frames of a huge page from the hugetlb pool (in use or back in the pool).
        self.pooled = np.zeros(nframes, dtype=bool)
        #: A huge page's MTE flags live on its folio and are cleared when it goes back
        #: to the pool (Linux 6.13, 25c17c4b55de). Before, each 4 KiB page of it had
        #: its own PG_mte_tagged, which the pool kept (ModelKvm sets this per profile).
        self.hugetlb_folio_flags = True
        self.in_use = np.zeros(nframes, dtype=bool)
        #: Frames handed out at least once: only those can hold old data.
        self.ever_used = np.zeros(nframes, dtype=bool)
        #: Mappings (page table entries, KSM) sharing each frame.
        self.refcount = np.zeros(nframes, dtype=np.int32)
        #: How many times each frame's tags were initialised since it was allocated:
        #: the evidence that initialisation happens exactly once.
        self.tag_inits = np.zeros(nframes, dtype=np.int32)
        self._flags = threading.Condition()
        self._free_small = list(range(nframes - 1, FIRST_FRAME - 1, -1))
        #: Heads of freed hugetlb folios: the hugetlb pool, last freed at the end.
        self._free_huge: list[int] = []
        # The pre-fault thread's frontier is the first frame never handed out.
        self.ever_used[:FIRST_FRAME] = True
        #: Frames below this were faulted in ahead of use (:meth:`prealloc`): the OS
        #: backs them already, so nothing needs to fault them in again.
        self.backed = FIRST_FRAME

    def prealloc(self, nframes: int) -> None:
        """Fault in the lowest ``nframes`` frames' data and tags now, as a physical
        host's RAM exists before any VM starts (and as QEMU's ``-mem-prealloc`` does
        for a guest's RAM), so that the first write to them later, a migrated guest's
        pages arriving for one, takes no page fault. The model sees no change: the
        frames still read as zeros and are no more allocated than before."""
        end = max(FIRST_FRAME, min(FIRST_FRAME + nframes, self.nframes))
        if end > self.backed:
            populate(self.data[self.backed : end])
            populate(self.packed_pages[self.backed : end])
            self.backed = end

    # -- tags as pages ---------------------------------------------------------------

    @property
    def packed_pages(self) -> NDArray[np.uint8]:
        """The tag storage as (frame, 128 packed bytes): one row per page."""
        return self.tags._packed.reshape(self.nframes, PACKED_TAGS_PER_PAGE)

    def page_tags(self, pfn: int) -> NDArray[np.uint8]:
        """One page's tags, one per byte (256 bytes)."""
        return self.tags.get(pfn * GRANULES_PER_PAGE, GRANULES_PER_PAGE)

    # -- allocation ------------------------------------------------------------------

    def alloc(self, count: int) -> Pfns:
        """``count`` free small frames, zero-filled as the page allocator hands them out.

        Raises OutOfMemory (ENOMEM) if there are not enough.
        """
        with self._flags:
            if count > len(self._free_small):
                raise OutOfMemory(f"need {count} free frames, {len(self._free_small)} left")
            taken = [self._free_small.pop() for _ in range(count)] if count < 64 else None
            if taken is None:
                split = len(self._free_small) - count
                taken = self._free_small[split:][::-1]
                del self._free_small[split:]
            pfns = as_pfns(taken)
            self._prepare(pfns)
            return pfns

    def alloc_huge(self) -> Pfns:
        """One 2 MiB hugetlb folio: 512 contiguous frames, head first.

        A folio freed before comes back first, the last freed first: the hugetlb pool
        keeps freed huge pages on a list and hands out its head (mm/hugetlb.c
        enqueue_hugetlb_folio, dequeue_hugetlb_folio_node_exact); a new one is carved
        out of free small frames otherwise. Without :attr:`hugetlb_folio_flags` its
        pages come back with the MTE flags they had when the pool took them.
        """
        with self._flags:
            head = self._free_huge.pop() if self._free_huge else self._carve_huge()
            pfns = np.arange(head, head + HUGE_PAGE_FRAMES, dtype=np.int64)
            kept = self.mte_tagged[pfns].copy()
            self._prepare(pfns)
            self.pooled[pfns] = True
            if self.hugetlb_folio_flags:
                self.folio_head[pfns] = head
                self.hugetlb[pfns] = True
            else:
                self.mte_tagged[pfns] = kept
            return pfns

    def _carve_huge(self) -> int:
        free = np.zeros(self.nframes, dtype=bool)
        free[self._free_small] = True
        for head in range(FIRST_FRAME, self.nframes - HUGE_PAGE_FRAMES + 1, HUGE_PAGE_FRAMES):
            if free[head : head + HUGE_PAGE_FRAMES].all():
                taken = set(range(head, head + HUGE_PAGE_FRAMES))
                self._free_small = [p for p in self._free_small if p not in taken]
                self.mte_tagged[head : head + HUGE_PAGE_FRAMES] = False
                return head
        raise OutOfMemory("no free 2 MiB block of contiguous frames for a huge page")

    def huge_page_frames(self, pfns: Pfns) -> Pfns:
        """``pfns`` with every frame of each hugetlb page one of them is in: what a
        stage-2 block mapping of a huge page covers (user_mem_abort's vma_pagesize)."""
        pfns = as_pfns(pfns)
        huge = pfns[self.pooled[pfns]]
        if not huge.size:
            return pfns
        heads = np.unique(huge - (huge - FIRST_FRAME) % HUGE_PAGE_FRAMES)
        spans = (heads[:, None] + np.arange(HUGE_PAGE_FRAMES)).reshape(-1)
        return np.unique(np.concatenate([pfns, spans]))

    def _prepare(self, pfns: Pfns) -> None:
        # Flags are clear on allocation (cleared when the page was freed); data is zeroed
        # as for __GFP_ZERO / a first anonymous fault. Tags are NOT cleared here: a
        # frame's old tags stay in memory until someone initialises them.
        self.in_use[pfns] = True
        self.refcount[pfns] = 1
        self.mte_tagged[pfns] = False
        self.mte_lock[pfns] = False
        self.tag_inits[pfns] = 0
        # A never-used frame is still the zero page np.zeros gave (and the OS backs it
        # lazily), so only recycled frames need zeroing: a GiB of first touches costs
        # bookkeeping, not a GiB of memset.
        recycled = pfns[self.ever_used[pfns]]
        if recycled.size:
            self.data[recycled] = 0
        self.ever_used[pfns] = True

    def free(self, pfns: Pfns) -> None:
        """Return frames to the allocator; page flags are cleared, tags stay as they are."""
        pfns = as_pfns(pfns)
        with self._flags:
            if not self.in_use[pfns].all():
                raise ValueError("freeing a frame that is not in use")
            self.in_use[pfns] = False
            self.refcount[pfns] = 0
            whole = self._whole_huge_pages(pfns)
            heads = pfns - (pfns - FIRST_FRAME) % HUGE_PAGE_FRAMES
            pooled = self.pooled[pfns] & np.isin(heads, whole)
            # Small pages lose their flags at free (free_pages_prepare); a huge page going
            # back to the pool only where arch_clear_hugetlb_flags clears PG_mte_tagged
            # and PG_mte_lock (arch/arm64/include/asm/hugetlb.h, 25c17c4b55de, 6.13).
            cleared = pfns if self.hugetlb_folio_flags else pfns[~pooled]
            self.mte_tagged[cleared] = False
            self.mte_lock[cleared] = False
            self._free_huge.extend(whole)
            small = pfns[~pooled]
            self.hugetlb[small] = False
            self.pooled[small] = False
            self.folio_head[small] = small
            self._free_small.extend(small.tolist())

    def _whole_huge_pages(self, pfns: Pfns) -> list[int]:
        """Heads of the hugetlb pages all of whose frames are in ``pfns``."""
        huge = pfns[self.pooled[pfns]]
        if not huge.size:
            return []
        starts = huge - (huge - FIRST_FRAME) % HUGE_PAGE_FRAMES
        heads, counts = np.unique(starts, return_counts=True)
        return [int(h) for h, c in zip(heads, counts, strict=True) if c == HUGE_PAGE_FRAMES]

    def get(self, pfns: Pfns) -> None:
        """Take another reference (a second mapping of the same frame)."""
        with self._flags:
            np.add.at(self.refcount, as_pfns(pfns), 1)

    def put(self, pfns: Pfns) -> None:
        """Drop a reference; frames nobody maps any more go back to the allocator."""
        pfns = as_pfns(pfns)
        with self._flags:
            np.subtract.at(self.refcount, pfns, 1)
            dead = np.unique(pfns[self.refcount[pfns] <= 0])
        if dead.size:
            self.free(dead)

    def copy_page(self, dst: int, src: int) -> None:
        """copy_highpage (arch/arm64/mm/copypage.c): data, and tags if src is tagged.

        Used by copy-on-write and page migration; the destination is a fresh frame.
        """
        self.data[dst] = self.data[src]
        if self.mte_tagged[self.folio_head[src]]:
            self.restore_tags(as_pfns(dst), self.packed_pages[src].copy())

    # -- PG_mte_tagged / PG_mte_lock ----------------------------------------------------

    def _distinct_heads(self, pfns: Pfns) -> Pfns:
        """Folio heads of ``pfns``, each once; free when the pages ascend (the usual case)."""
        heads = self.folio_head[as_pfns(pfns)]
        if heads.size < 2 or bool(np.all(heads[1:] > heads[:-1])):
            return heads
        return np.unique(heads)

    def try_mte_tagging(self, pfns: Pfns) -> Pfns:
        """try_page_mte_tagging over many pages: the folio heads this caller must init.

        A head is won when neither PG_mte_lock nor PG_mte_tagged is set; the winner
        holds the lock, initialises the tags and calls :meth:`set_mte_tagged`. Heads
        lost to another caller are waited for with :meth:`wait_mte_tagged`, after the
        caller has finished its own (waiting first could deadlock two callers).
        """
        heads = self._distinct_heads(pfns)
        with self._flags:
            won = heads[~self.mte_lock[heads] & ~self.mte_tagged[heads]]
            self.mte_lock[won] = True
        return won

    def set_mte_tagged(self, heads: Pfns) -> None:
        """set_page_mte_tagged: publish initialised tags and wake any waiter."""
        pages = self._folio_pages(as_pfns(heads))
        with self._flags:
            self.mte_tagged[pages] = True
            self._flags.notify_all()

    def wait_mte_tagged(self, pfns: Pfns, timeout: float = 10.0) -> None:
        """Wait until every page's folio has PG_mte_tagged (another CPU's init done)."""
        heads = self._distinct_heads(pfns)
        with self._flags:
            done = self._flags.wait_for(lambda: bool(self.mte_tagged[heads].all()), timeout)
        if not done:
            raise TimeoutError("pages stayed locked for MTE initialisation")

    def sanitise(self, pfns: Pfns) -> int:
        """Make every page's tags valid, clearing those never initialised.

        arch/arm64/kvm/mmu.c sanitise_mte_tags and arch/arm64/kernel/mte.c
        mte_sync_tags: exactly one caller clears a page's (or hugetlb folio's) tags.
        Returns how many folios this call initialised.
        """
        pfns = as_pfns(pfns)
        heads = self.try_mte_tagging(pfns)
        if heads.size:
            pages = self._folio_pages(heads)
            self.packed_pages[pages] = 0
            self.tag_inits[pages] += 1
            self.set_mte_tagged(heads)
        self.wait_mte_tagged(pfns)
        return int(heads.size)

    def restore_tags(self, pfns: Pfns, packed: NDArray[np.uint8]) -> int:
        """Give small pages saved tags (swap-in, copy) and mark them tagged.

        ``packed`` holds one 128-byte row per page. A page some other path already
        tagged keeps its tags (mte_restore_tags only writes under a won
        try_page_mte_tagging). Returns how many pages were restored.
        """
        pfns = as_pfns(pfns)
        won = self.try_mte_tagging(pfns)
        if won.size:
            mine = np.isin(pfns, won)
            self.packed_pages[pfns[mine]] = packed.reshape(-1, PACKED_TAGS_PER_PAGE)[mine]
            self.tag_inits[pfns[mine]] += 1
            self.set_mte_tagged(won)
        self.wait_mte_tagged(pfns)
        return int(won.size)

    def _folio_pages(self, heads: Pfns) -> Pfns:
        small = heads[~self.hugetlb[heads]]
        huge = heads[self.hugetlb[heads]]
        if not huge.size:
            return small
        spans = (huge[:, None] + np.arange(HUGE_PAGE_FRAMES)).reshape(-1)
        return np.concatenate([small, spans])
