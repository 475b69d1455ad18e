"""Whether two machines hold the same pages and tags, read the kernel's way."""

from __future__ import annotations

from typing import Final

import numpy as np

from tagvisor.arch.constants import GRANULES_PER_PAGE, PAGE_SIZE
from tagvisor.kvm.model import ModelKvm
from tagvisor.vmm.machine import Machine
from tagvisor.vmm.tag_access import CopyTagsAccess

#: Pages compared at a time (16 MiB), so a GiB never sits in memory twice.
CHUNK_PAGES: Final = 4096


def truth(machine: Machine, kvm: ModelKvm) -> CopyTagsAccess:
    """COPY_TAGS over the VM itself, whatever design the VMM uses: the reference."""
    return CopyTagsAccess(machine.vm, machine.memory, kvm.user_memory)


def differing_pages(
    a: Machine, a_kvm: ModelKvm, b: Machine, b_kvm: ModelKvm, gpa: int, npages: int
) -> int:
    """Pages of [gpa, gpa + npages pages) whose data or tags differ between a and b."""
    a_tags, b_tags = truth(a, a_kvm), truth(b, b_kvm)
    differing = 0
    for first in range(0, npages, CHUNK_PAGES):
        count = min(CHUNK_PAGES, npages - first)
        at = gpa + first * PAGE_SIZE
        data_a = a.memory.view(at, count * PAGE_SIZE).reshape(count, PAGE_SIZE)
        data_b = b.memory.view(at, count * PAGE_SIZE).reshape(count, PAGE_SIZE)
        bad = (data_a != data_b).any(axis=1)
        granules = count * GRANULES_PER_PAGE
        tags_a = a_tags.read_tags(at, granules).reshape(count, GRANULES_PER_PAGE)
        tags_b = b_tags.read_tags(at, granules).reshape(count, GRANULES_PER_PAGE)
        bad |= (tags_a != tags_b).any(axis=1)
        differing += int(np.count_nonzero(bad))
    return differing
