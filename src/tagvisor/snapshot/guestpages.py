"""Reading and writing runs of guest pages with their tags, through the VMM's own ways.

Data goes through the VMM's mapping of guest RAM; tags through the machine's configured
tag access (KVM_ARM_MTE_COPY_TAGS by default), in bulk over contiguous runs. A machine
without MTE has no tags: they read as zero and are never written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import GRANULES_PER_PAGE, PAGE_SIZE
from tagvisor.snapshot.pages import MAX_PAGES, PageRun
from tagvisor.vmm.machine import Machine
from tagvisor.vmm.memory import GuestRegion

#: Pages read at once when scanning all of memory (16 MiB of data).
SCAN_PAGES = 4096


def read_run(machine: Machine, gpa: int, npages: int, *, live: bool = False) -> PageRun:
    """Pages with their tags. While the guest runs (``live``) the data is copied, so
    what is checksummed is what is sent; a paused guest's memory is read in place."""
    data = machine.memory.view(gpa, npages * PAGE_SIZE)
    if live:
        data = data.copy()
    if machine.config.mte:
        tags = machine.tags.read_tags(gpa, npages * GRANULES_PER_PAGE)
    else:
        tags = np.zeros(npages * GRANULES_PER_PAGE, np.uint8)
    return PageRun(gpa, data.reshape(npages, PAGE_SIZE), tags.reshape(npages, GRANULES_PER_PAGE))


def write_run(machine: Machine, run: PageRun, *, with_tags: bool = True) -> None:
    """Place a run: data first, then (if the VM has MTE) every page's tags.

    Tags are written for all pages of the run, zeros included, so the pages are marked
    tagged and a later first touch cannot clear what was restored.
    """
    machine.memory.write(run.gpa, np.ascontiguousarray(run.data).reshape(-1).data)
    if with_tags and machine.config.mte:
        machine.tags.write_tags(run.gpa, run.tags.reshape(-1))


def runs_of(mask: NDArray[np.bool_], limit: int = MAX_PAGES) -> Iterator[tuple[int, int]]:
    """(first page, count) of each run of set bits, split at ``limit`` pages."""
    if not mask.any():
        return
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    for start, stop in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
        for first in range(start, stop, limit):
            yield first, min(limit, stop - first)


def iter_runs(
    machine: Machine,
    region: GuestRegion,
    mask: NDArray[np.bool_] | None = None,
    limit: int = SCAN_PAGES,
    *,
    live: bool = False,
) -> Iterator[PageRun]:
    """Runs of the region's pages (all, or those set in ``mask``), read with tags."""
    selected = np.ones(region.npages, bool) if mask is None else mask
    for first, count in runs_of(selected, limit):
        yield read_run(machine, region.gpa + first * PAGE_SIZE, count, live=live)


def memory_digest(machine: Machine) -> str:
    """SHA-256 over every page's data and tags, in address order: equal digests mean
    equal memory and equal tags."""
    digest = hashlib.sha256()
    for region in machine.memory.regions:
        for run in iter_runs(machine, region):
            digest.update(run.data.tobytes())
            digest.update(run.tags.tobytes())
    return digest.hexdigest()
