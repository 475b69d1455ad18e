"""Freed memory comes back: munmap frees a shared object's frames, the hugetlb pool is
LIFO, and whether a huge page's MTE flags survive the pool depends on the kernel."""

import numpy as np

from tagvisor.host.frames import HUGE_PAGE_FRAMES, FrameTable
from tagvisor.host.mapping import (
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
    Backing,
    BackingKind,
)
from tagvisor.host.process import HostProcess

RW = PROT_READ | PROT_WRITE
HUGE = HUGE_PAGE_FRAMES * 4096


def test_munmap_of_the_last_mapping_of_a_memfd_frees_its_frames() -> None:
    """Scenario: a memfd mapped once, written, unmapped: its frames are free again and the
    next mapping's first touch gets the same frame back (the allocator is LIFO)."""
    frames = FrameTable(4096)
    process = HostProcess(frames)
    backing = Backing.of_size(BackingKind.MEMFD, 4096, "memfd:test")
    address = process.mmap(4096, RW, MAP_SHARED, backing)
    process.write(address, b"x")
    pfn = int(backing.pfns[0])
    process.munmap(address, 4096)
    assert not frames.in_use[pfn]
    again = process.mmap(4096, RW, MAP_SHARED | MAP_ANONYMOUS)
    process.write(again, b"y")
    assert process.find_vma(again).backing.pfns[0] == pfn  # type: ignore[union-attr]


def test_a_shared_object_still_mapped_elsewhere_keeps_its_frames() -> None:
    """Scenario: one memfd mapped twice, one mapping unmapped: the other still reads the data."""
    process = HostProcess(FrameTable(4096))
    backing = Backing.of_size(BackingKind.MEMFD, 4096, "memfd:test")
    first = process.mmap(4096, RW, MAP_SHARED, backing)
    second = process.mmap(4096, RW, MAP_SHARED, backing)
    process.write(first, b"kept")
    process.munmap(first, 4096)
    assert process.read(second, 4) == b"kept"


def test_the_last_freed_huge_page_is_the_next_one_handed_out() -> None:
    """Scenario: two huge pages allocated, the first freed: the next allocation is that one."""
    frames = FrameTable(4 * HUGE_PAGE_FRAMES + 8)
    first, second = frames.alloc_huge(), frames.alloc_huge()
    frames.put(first)
    assert int(frames.alloc_huge()[0]) == int(first[0])
    assert frames.in_use[second].all()


def _tagged_then_freed(folio_flags: bool) -> tuple[FrameTable, np.ndarray]:
    frames = FrameTable(2 * HUGE_PAGE_FRAMES + 8)
    frames.hugetlb_folio_flags = folio_flags
    process = HostProcess(frames)
    address = process.mmap(HUGE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB)
    pfns = process.fault_in(address, HUGE, write=True)
    frames.sanitise(pfns)
    frames.packed_pages[pfns] = 0xBB  # an owner's tags
    process.munmap(address, HUGE)
    return frames, pfns


def test_before_6_13_a_huge_page_keeps_its_pages_tagged_flags_through_the_pool() -> None:
    """Scenario: pre-6.13 host (per-page flags): a tagged huge page freed and allocated again
    still says PG_mte_tagged, so KVM keeps (does not clear) the old owner's tags."""
    frames, pfns = _tagged_then_freed(folio_flags=False)
    again = frames.alloc_huge()
    assert int(again[0]) == int(pfns[0])
    assert frames.mte_tagged[again].all()
    assert frames.sanitise(again) == 0
    assert (frames.packed_pages[again] == 0xBB).all()


def test_from_6_13_the_pool_clears_a_huge_pages_flags_and_the_next_owner_gets_zeros() -> None:
    """Scenario: 6.13+ host (folio flags, arch_clear_hugetlb_flags): the same sequence, and
    the next sanitise clears the old tags."""
    frames, pfns = _tagged_then_freed(folio_flags=True)
    again = frames.alloc_huge()
    assert int(again[0]) == int(pfns[0])
    assert not frames.mte_tagged[again].any()
    assert frames.sanitise(again) == 1
    assert (frames.packed_pages[again] == 0).all()
