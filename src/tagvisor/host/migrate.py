"""Page migration and compaction move a page's tags with its data.

mm/migrate.c copies each folio with folio_copy -> copy_highpage, which on arm64
(arch/arm64/mm/copypage.c) copies the tags too when the source is PG_mte_tagged and
marks the destination tagged. The old frame is freed; KVM hears of the move through
the MMU notifier and faults the new frame in later.
"""

from __future__ import annotations

import numpy as np

from tagvisor.host.mapping import NO_FRAME, BackingKind
from tagvisor.host.process import HostProcess


def migrate_pages(process: HostProcess, address: int, length: int) -> int:
    """Move every present, unshared page of the range to a new frame; return the count."""
    frames = process.frames
    moved = 0
    for vma in list(process.vmas):
        lo, hi = max(vma.start, address), min(vma.end, address + length)
        if lo >= hi or vma.backing.kind is BackingKind.HUGETLB:
            continue
        backing = vma.backing
        index = np.arange(vma.page_index(lo), vma.page_index(hi - 1) + 1)
        index = index[backing.pfns[index] != NO_FRAME]
        index = index[frames.refcount[backing.pfns[index]] == 1]
        if not index.size:
            continue
        process.invalidate(lo, hi)
        old = backing.pfns[index]
        new = frames.alloc(index.size)
        frames.data[new] = frames.data[old]
        tagged = frames.mte_tagged[old]
        if tagged.any():
            frames.restore_tags(new[tagged], frames.packed_pages[old[tagged]])
        backing.pfns[index] = new
        frames.put(old)
        moved += int(index.size)
    return moved
