"""KSM never merges a tagged page.

arch/arm64/kernel/mte.c memcmp_pages: when two candidate pages have equal data but
either is PG_mte_tagged, it reports them different, because merging would make one
page's tags stand for both. Untagged equal pages merge as usual: both mappings share
one frame copy-on-write.
"""

from __future__ import annotations

from tagvisor.host.frames import as_pfns
from tagvisor.host.process import HostProcess


def ksm_try_merge(process: HostProcess, address_a: int, address_b: int) -> bool:
    """Try to merge the pages at two addresses; return whether KSM merged them."""
    frames = process.frames
    pfn_a = int(process.fault_in(address_a, 1, write=False)[0])
    pfn_b = int(process.fault_in(address_b, 1, write=False)[0])
    if pfn_a == pfn_b:
        return True
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
