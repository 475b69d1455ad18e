"""What the kernel's own tag copies cost, measured on a migrated guest's memory.

A migration's first pass reads the tags of every page with memory behind it through
KVM_ARM_MTE_COPY_TAGS FROM_GUEST, and the destination writes those that are not all
zero through TO_GUEST; under nested TCG every granule is an LDG or an STG that QEMU
emulates. Timing the same calls again on the source's paused machine after the move
(its memory is still there, and writing a page's own tags back changes nothing) says
how much of the migration's CPU time the kernel spends on tags alone: the part no VMM
that moves tags through KVM can save. One-page calls against one call of as many pages
say what a call costs beyond its pages, which decides how scattered pages' tags move
(tagvisor.snapshot.guestpages.PAGES_PER_TAG_CALL).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import GRANULES_PER_PAGE, PAGE_SIZE
from tagvisor.snapshot.guestpages import runs_of
from tagvisor.snapshot.pages import MAX_PAGES
from tagvisor.vmm.machine import Machine


def tag_copy_costs(machine: Machine) -> dict[str, Any]:
    """Seconds of COPY_TAGS FROM_GUEST over the pages with memory behind them, and of
    TO_GUEST over those whose tags are not all 0, in runs of up to MAX_PAGES pages (as
    a migration moves them); and how many pages each covered."""
    read = write = 0.0
    read_pages = written_pages = 0
    memory = machine.memory
    for region in memory.regions:
        for first, count in runs_of(memory.populated(region.gpa, region.npages), MAX_PAGES):
            gpa = region.gpa + first * PAGE_SIZE
            started = time.perf_counter()
            tags = machine.tags.read_tags(gpa, count * GRANULES_PER_PAGE)
            read += time.perf_counter() - started
            read_pages += count
            rows = tags.reshape(count, GRANULES_PER_PAGE)
            tagged: NDArray[np.bool_] = np.asarray(rows.any(axis=1), dtype=bool)
            for start, length in runs_of(tagged, MAX_PAGES):
                part = np.ascontiguousarray(rows[start : start + length]).reshape(-1)
                started = time.perf_counter()
                machine.tags.write_tags(gpa + start * PAGE_SIZE, part)
                write += time.perf_counter() - started
                written_pages += length
    per_call, per_page = _call_and_page_costs(machine)
    return {
        "from_guest_call_us": per_call,
        "from_guest_page_us": per_page,
        "from_guest_seconds": round(read, 3),
        "from_guest_pages": read_pages,
        "to_guest_seconds": round(write, 3),
        "to_guest_pages": written_pages,
    }


#: Single-page calls timed for the cost of a call (the pages spread over RAM, as a
#: dirty log's are), and the pages of the one call timed for the cost of a page.
CALLS_TIMED = 256


def _call_and_page_costs(machine: Machine) -> tuple[float, float]:
    """Microseconds a COPY_TAGS FROM_GUEST call costs beyond its pages, and each page
    costs, from CALLS_TIMED one-page calls and one call over as many pages: what
    tagvisor.snapshot.guestpages weighs when it reads scattered pages' tags run by run
    or in one call over their window."""
    region = machine.memory.regions[0]
    populated = np.flatnonzero(machine.memory.populated(region.gpa, region.npages))
    # The bulk call covers CALLS_TIMED pages in a row that all have memory already.
    last = CALLS_TIMED - 1
    runs = np.flatnonzero(populated[last:] - populated[: populated.size - last] == last)
    if populated.size < 2 * CALLS_TIMED or not runs.size:
        return 0.0, 0.0
    spread = populated[:: populated.size // CALLS_TIMED][:CALLS_TIMED]
    started = time.perf_counter()
    for page in spread.tolist():
        machine.tags.read_tags(region.gpa + page * PAGE_SIZE, GRANULES_PER_PAGE)
    singles = time.perf_counter() - started
    started = time.perf_counter()
    machine.tags.read_tags(
        region.gpa + int(populated[runs[0]]) * PAGE_SIZE, CALLS_TIMED * GRANULES_PER_PAGE
    )
    bulk = time.perf_counter() - started
    page = bulk / CALLS_TIMED
    return round((singles / CALLS_TIMED - page) * 1e6, 1), round(page * 1e6, 1)
