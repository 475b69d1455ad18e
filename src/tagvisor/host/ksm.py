"""KSM never merges a tagged page.

arch/arm64/kernel/mte.c memcmp_pages: when two candidate pages have equal data but
either is PG_mte_tagged, it reports them different, because merging would make one
page's tags stand for both. Untagged equal pages merge as usual: both mappings share
one frame copy-on-write.
"""

from __future__ import annotations

from collections.abc import Sequence

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.host.frames import as_pfns
from tagvisor.host.mapping import NO_FRAME, BackingKind
from tagvisor.host.process import HostProcess


def ksm_try_merge(process: HostProcess, address_a: int, address_b: int) -> bool:
    """Try to merge the pages at two addresses; return whether KSM merged them."""
    frames = process.frames
    pfn_a = int(process.fault_in(address_a, 1, write=False)[0])
    pfn_b = int(process.fault_in(address_b, 1, write=False)[0])
    if pfn_a == pfn_b:
        return True
    # write_protect_page on both before pages_identical: a secondary MMU hears of each
    # (before 6.2 KVM tagged a page of an MTE VM's memslot right there).
    process.write_protect(address_b)
    process.write_protect(address_a)
    if frames.mte_tagged[pfn_a] or frames.mte_tagged[pfn_b]:
        return False
    if not (frames.data[pfn_a] == frames.data[pfn_b]).all():
        return False
    vma_b = process.find_vma(address_b)
    assert vma_b is not None  # fault_in succeeded, so it is mapped
    index = vma_b.page_index(address_b)
    process.invalidate(address_b - address_b % 4096, address_b - address_b % 4096 + 4096)
    frames.get(as_pfns(pfn_a))
    vma_b.backing.pfns[index] = pfn_a
    frames.put(as_pfns(pfn_b))
    return True


def ksm_scan(process: HostProcess, ranges: Sequence[tuple[int, int]]) -> int:
    """What ksmd's passes do to the (address, length) ranges once MADV_MERGEABLE: each
    present page of a private anonymous mapping merges with the first earlier page of
    equal data that may merge with it (neither tagged); returns how many merged.

    Shared, file and hugetlb mappings are never mergeable (mm/ksm.c ksm_madvise ignores
    VM_SHARED, VM_MAYSHARE and VM_HUGETLB areas); pages not present are not scanned.
    """
    merged = 0
    seen: dict[bytes, int] = {}  # data -> an untagged page's address with it
    for address, length in ranges:
        merged += _scan_range(process, address, length, seen)
    return merged


def _scan_range(process: HostProcess, address: int, length: int, seen: dict[bytes, int]) -> int:
    merged = 0
    for vma in process.vmas_between(address, address + length):
        if vma.shared or vma.backing.kind is not BackingKind.ANON:
            continue
        lo, hi = max(vma.start, address), min(vma.end, address + length)
        for page in range(lo - lo % PAGE_SIZE, hi, PAGE_SIZE):
            pfn = int(vma.backing.pfns[vma.page_index(page)])
            if pfn == NO_FRAME or process.frames.mte_tagged[pfn]:
                continue
            data = process.frames.data[pfn].tobytes()
            first = seen.setdefault(data, page)
            if first != page and ksm_try_merge(process, first, page):
                merged += 1
    return merged
