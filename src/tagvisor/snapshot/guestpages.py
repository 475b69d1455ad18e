"""Reading and writing runs of guest pages with their tags, through the VMM's own ways.

Data goes through the VMM's mapping of guest RAM; tags through the machine's configured
tag access (KVM_ARM_MTE_COPY_TAGS by default), in bulk over contiguous runs. A machine
without MTE has no tags: they read as zero and are never written. Windows of scattered
pages (a dirty log's) are read and placed with vectorised gathers and scatters and a
tag call per run, never a Python step per page.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Final

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import GRANULES_PER_PAGE, PAGE_SIZE
from tagvisor.kvm.api import page_runs
from tagvisor.snapshot.container import FormatError
from tagvisor.snapshot.pages import (
    MAX_PAGES,
    Kind,
    PageRun,
    PageSection,
    nonzero_rows,
    rows_with_data,
)
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


#: A KVM_ARM_MTE_COPY_TAGS call costs as much as reading the tags of this many pages
#: (testbed, Linux 6.1 under nested TCG: 78 to 153 us a call beyond its pages, 11 to
#: 24 us a page read, ``migration.tag_copies``), and writing a page's tags as much as reading
#: WRITE_COST pages' (TO_GUEST: 21 us a page). Scattered pages' tags move run by run
#: unless their calls cost more than one call over their whole window would, pages
#: between included (and, for a write, the window's tags read back first unless they
#: are known to be 0). The window is read in one call only if every page of it has
#: memory already (so none is faulted in just for its tags), or if its runs are
#: shorter than SHORT_RUN pages on average (gaps included).
PAGES_PER_TAG_CALL = 8
WRITE_COST = 2
SHORT_RUN = 16


def _one_tag_call(
    machine: Machine,
    gpa: int,
    span: int,
    runs: int,
    held: int,
    *,
    write: bool = False,
    read_back: bool = True,
) -> bool:
    """Whether to move the tags of ``held`` pages in ``runs`` runs within ``span``
    pages from ``gpa`` in one call over the whole span rather than one call per run
    (for a ``write``, with the span's tags read first if ``read_back``)."""
    call = PAGES_PER_TAG_CALL
    if write:
        by_runs = runs * call + held * WRITE_COST
        whole = call + span * WRITE_COST + (call + span if read_back else 0)
    else:
        by_runs, whole = runs * call + held, call + span
    if by_runs <= whole:
        return False
    return runs * SHORT_RUN > span or bool(machine.memory.populated(gpa, span).all())


class PageBuffers:
    """Reusable buffers for up to ``npages`` pages of data (if ``data``) and tags, in
    windows of up to ``window`` pages, so that reading or placing section after section
    allocates nothing and faults in no fresh memory (the arrays are reserved, not
    touched, until used)."""

    def __init__(self, npages: int, window: int = MAX_PAGES, *, data: bool = True) -> None:
        self.npages = npages
        self.data = np.empty((npages if data else 0, PAGE_SIZE), np.uint8)
        self.tags = np.empty((npages, GRANULES_PER_PAGE), np.uint8)
        self.window_tags = np.empty(max(npages, window) * GRANULES_PER_PAGE, np.uint8)


def read_window(
    machine: Machine,
    gpa: int,
    npages: int,
    pages: NDArray[np.intp] | None = None,
    *,
    live: bool = False,
    buffers: PageBuffers | None = None,
    leave_out_zero: bool = False,
) -> PageRun:
    """The pages of the window of ``npages`` pages from ``gpa`` (all, or those at the
    ascending indices ``pages``) with their tags, read in bulk: the data in one
    gather, the tags in one call per run of pages or one over the whole window.

    While the guest runs (``live``) the data is copied, so what is checksummed is what
    is sent; a paused guest's memory is read in place when the window is whole. With
    ``buffers`` (of at least ``npages`` pages) the copies go there and the run is valid
    until the buffers are used again. With ``leave_out_zero`` a live whole window may
    leave out pages whose data and tags are all zero (for a reader whose memory starts
    zeroed), found in place before anything is copied (:func:`_without_zero_pages`).
    """
    buffers = buffers if buffers is not None else PageBuffers(npages)
    tags = _read_tags(machine, gpa, npages, pages, buffers)
    # (A view of a window faults its pages in on some backends: only a whole one.)
    view = None if pages is not None else machine.memory.mapped_view(gpa, npages * PAGE_SIZE)
    if leave_out_zero and live and view is not None:
        return _without_zero_pages(machine, gpa, npages, view, tags, buffers)
    count = npages if pages is None else int(pages.size)
    if view is not None and not live:
        data = view.reshape(npages, PAGE_SIZE)
    else:
        data = buffers.data[:count]
        machine.memory.read_pages(gpa, np.arange(npages) if pages is None else pages, data)
    return PageRun(gpa, data, tags, pages, npages if pages is not None else 0)


def _read_tags(
    machine: Machine,
    gpa: int,
    npages: int,
    pages: NDArray[np.intp] | None,
    buffers: PageBuffers,
) -> NDArray[np.uint8]:
    """The tags of the window's pages (all, or those at ``pages``), a row each."""
    count = npages if pages is None else int(pages.size)
    tags = buffers.tags[:count]
    if not machine.config.mte:
        tags.fill(0)
    elif pages is None:
        machine.tags.read_tags(gpa, npages * GRANULES_PER_PAGE, out=tags.reshape(-1))
    else:
        runs = page_runs(pages)
        if _one_tag_call(machine, gpa, npages, len(runs), count):
            window = buffers.window_tags[: npages * GRANULES_PER_PAGE]
            machine.tags.read_tags(gpa, window.size, out=window)
            np.take(window.reshape(npages, GRANULES_PER_PAGE), pages, axis=0, out=tags)
        else:
            for index, first, length in runs:
                machine.tags.read_tags(
                    gpa + first * PAGE_SIZE,
                    length * GRANULES_PER_PAGE,
                    out=tags[index : index + length].reshape(-1),
                )
    return tags


def _without_zero_pages(
    machine: Machine,
    gpa: int,
    npages: int,
    view: NDArray[np.uint8],
    tags: NDArray[np.uint8],
    buffers: PageBuffers,
) -> PageRun:
    """The window's pages but those whose data and tags are all zero: the tags are
    read, the data looked at in place (``view``) and only the other pages' copied. A
    first pass over memory the host gave in huge pages finds many zero pages, and
    copying them to find that out cost as much as all the rest. A page that changes
    meanwhile is dirty in the log, and goes again in the next pass."""
    indices = np.arange(npages)
    keep = rows_with_data(view.reshape(npages, PAGE_SIZE), indices)
    keep |= nonzero_rows(tags)
    kept = indices[keep]
    data = buffers.data[: kept.size]
    machine.memory.read_pages(gpa, kept, data)
    kept_tags = buffers.tags[: kept.size]
    kept_tags[:] = tags[keep]  # (indexing copies first: the rows may overlap)
    return PageRun(gpa, data, kept_tags, kept, npages)


def write_run(machine: Machine, run: PageRun, *, with_tags: bool = True) -> None:
    """Place a run: data first, then (if the VM has MTE) every page's tags.

    Tags are written for all pages of the run, zeros included, so the pages are marked
    tagged and a later first touch cannot clear what was restored.
    """
    if run.pages is None:
        machine.memory.write(run.gpa, np.ascontiguousarray(run.data).reshape(-1).data)
    else:
        machine.memory.write_pages(run.gpa, run.pages, run.data)
    if with_tags and machine.config.mte:
        write_page_tags(machine, run.gpa, run.indices(), run.tags)


class FreshTags:
    """Which pages of a machine that has not run yet may hold non-zero tags: those
    given some here. The others read as zero, to the guest and to the VMM, without a
    tag ever written: KVM clears the tags of a page not yet marked tagged when the
    guest first maps it (arch/arm64/kvm/mmu.c, sanitise_mte_tags), KVM_ARM_MTE_COPY_TAGS
    reads a page never tagged as zeros (arch/arm64/kvm/guest.c), and the builder
    cleared every tag of huge-page RAM, whose pages share one tagged flag
    (vmm.builder.clear_stale_tags). So a page that arrives with all its tags 0 needs no
    tag write unless it was given others before. Valid only until the guest runs."""

    def __init__(self, machine: Machine) -> None:
        self.base = machine.config.ram_base
        self.nonzero = np.zeros(machine.config.ram_size // PAGE_SIZE, bool)

    def select(
        self, gpa: int, pages: NDArray[np.intp], tagged: NDArray[np.bool_]
    ) -> NDArray[np.bool_]:
        """Of the pages at ``pages`` from ``gpa`` about to get their tags (``tagged``:
        those with a non-zero one), which need a write; from now on exactly the
        ``tagged`` ones may hold non-zero tags."""
        rows = (gpa - self.base) // PAGE_SIZE + pages
        needed: NDArray[np.bool_] = tagged | self.nonzero[rows]
        self.nonzero[rows] = tagged
        return needed

    def zero_between(self, gpa: int, first: int, pages: NDArray[np.intp]) -> bool:
        """Whether every page from ``first`` to the last of ``pages`` (indices from
        ``gpa``) that is not in ``pages`` has all its tags 0 here."""
        start = (gpa - self.base) // PAGE_SIZE
        between = self.nonzero[start + first : start + int(pages[-1]) + 1].copy()
        between[pages - first] = False
        return not between.any()


def apply_section(
    machine: Machine,
    section: PageSection,
    *,
    buffers: PageBuffers | None = None,
    fresh: FreshTags | None = None,
) -> int:
    """Place a decoded PAGE section; return how many pages it carried.

    Pages with data get it (unless the reader received it in place); carried zero
    pages are zeroed, except ZERO pages that never had memory behind them here (they
    are zero with zero tags already: a destination starts zeroed, so they cost
    nothing); then the tags of every placed page, as :func:`write_run` does, but for
    a machine that has not run (``fresh``) only of pages whose tags are not all 0
    or were not before. SKIP pages are left as they are. With ``buffers`` (of
    MAX_PAGES pages) nothing is allocated per section.
    """
    memory = machine.memory
    gpa, npages = section.gpa, section.npages
    held = section.held()
    with_data = section.with_data()
    zero_data = held & ~with_data
    placed = held
    if zero_data.any():
        populated = memory.populated(gpa, npages)
        placed = held & ~((section.kinds == Kind.ZERO) & ~populated)
        memory.write_pages(gpa, np.flatnonzero(zero_data & populated), None)
    if section.placed:
        pass  # the reader received the data into guest memory already
    elif with_data.all():
        memory.write(gpa, section.data.reshape(-1).data)
    elif section.data.size:
        memory.write_pages(gpa, np.flatnonzero(with_data), section.data)
    if machine.config.mte and placed.any():
        _apply_tags(machine, section, placed, buffers, fresh)
    return int(held.sum())


def _apply_tags(
    machine: Machine,
    section: PageSection,
    placed: NDArray[np.bool_],
    buffers: PageBuffers | None,
    fresh: FreshTags | None,
) -> None:
    """The tags of the section's ``placed`` pages (see :func:`apply_section`)."""
    gpa, held = section.gpa, section.held()
    indices = np.flatnonzero(placed)
    keep = None
    if fresh is not None:
        keep = fresh.select(gpa, indices, section.tagged()[indices])
        indices = indices[keep]
        if not indices.size:
            return
    out = buffers.tags[: int(held.sum())] if buffers is not None else None
    tags = section.tags(out)
    if placed is not held:
        tags = tags[placed[held]]
    if keep is not None and not keep.all():
        tags = tags[keep]
    window = buffers.window_tags if buffers is not None else None
    zero = fresh is not None and fresh.zero_between(gpa, int(indices[0]), indices)
    write_page_tags(machine, gpa, indices, tags, window=window, zero_between=zero)


def write_page_tags(
    machine: Machine,
    gpa: int,
    pages: NDArray[np.intp],
    tags: NDArray[np.uint8],
    *,
    window: NDArray[np.uint8] | None = None,
    zero_between: bool = False,
) -> None:
    """Write rows of 256 tags to the pages at the ascending indices ``pages`` from
    ``gpa``, in bulk (never page by page): run by run when the runs are few, else by
    reading, updating and writing back the tags of the whole span (in ``window``, if
    given and big enough), see PAGES_PER_TAG_CALL; with ``zero_between`` the span's
    other pages are known to have all their tags 0, and are not read."""
    if not pages.size:
        return
    first, last = int(pages[0]), int(pages[-1])
    base = gpa + first * PAGE_SIZE
    if pages.size == last - first + 1:
        machine.tags.write_tags(base, np.ascontiguousarray(tags).reshape(-1))
        return
    span = last - first + 1
    runs = page_runs(pages)
    one = _one_tag_call(
        machine, base, span, len(runs), int(pages.size), write=True, read_back=not zero_between
    )
    if not one:
        for index, start, length in runs:
            machine.tags.write_tags(
                gpa + start * PAGE_SIZE,
                np.ascontiguousarray(tags[index : index + length]).reshape(-1),
            )
        return
    granules = span * GRANULES_PER_PAGE
    out = window[:granules] if window is not None and window.size >= granules else None
    if zero_between:  # the span's other pages hold zeros: nothing to read back
        current = out if out is not None else np.empty(granules, np.uint8)
        current.fill(0)
    else:
        current = machine.tags.read_tags(base, granules, out=out)
    current.reshape(span, GRANULES_PER_PAGE)[pages - first] = tags
    machine.tags.write_tags(base, current)


def windows_of(
    mask: NDArray[np.bool_], limit: int = MAX_PAGES, max_gap: int = 0, held: int = 0
) -> Iterator[tuple[int, int]]:
    """(first page, count) of windows covering the set bits, each starting and ending
    on one, at most ``limit`` pages long, holding at most ``held`` set bits (if not 0),
    and never spanning ``max_gap`` or more clear bits in a row (with 0, windows are the
    runs of set bits, as :func:`runs_of`)."""
    for start, stop in _spans(mask, max_gap):
        first = start
        while first < stop:
            end = min(first + limit, stop)
            set_bits = np.flatnonzero(mask[first:end])
            if held and set_bits.size > held:
                set_bits = set_bits[:held]
            last = first + int(set_bits[-1])
            yield first, last - first + 1
            following = np.flatnonzero(mask[last + 1 : stop])
            if not following.size:
                break
            first = last + 1 + int(following[0])


def _spans(mask: NDArray[np.bool_], max_gap: int) -> list[tuple[int, int]]:
    """[start, stop) of the runs of set bits, merged across gaps shorter than
    ``max_gap``."""
    if not mask.any():
        return []
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, stops = edges[0::2], edges[1::2]
    if max_gap > 0 and starts.size > 1:
        keep = np.concatenate(([True], starts[1:] - stops[:-1] >= max_gap))
        starts = starts[keep]
        stops = np.concatenate((stops[:-1][keep[1:]], stops[-1:]))
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


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


class DigestReplay:
    """:func:`memory_digest` recomputed from a snapshot's stored pages alone; the pages
    it leaves out (data and tags all zero) are hashed as zeros.

    The digest is SHA-256 over each SCAN_PAGES chunk of each region, as
    :func:`iter_runs` cuts them: the chunk's data, then its tags. Pages must come in
    ascending order without overlaps, as a snapshot writes them; anything else is a
    FormatError. So a reader can compare the digest before it builds anything.
    """

    def __init__(self, regions: list[tuple[int, int]]) -> None:
        #: (gpa, pages) of each region, in address order.
        self.regions = regions
        self._digest = hashlib.sha256()
        self._region = 0
        self._chunk = 0  # first page of the current chunk, in the region
        self._next = 0  # the first page not hashed yet, in the region
        self._tags = np.zeros((SCAN_PAGES, GRANULES_PER_PAGE), np.uint8)

    def add(self, run: PageRun) -> None:
        """The pages of the next PAGE section, with their tags."""
        if not run.count:
            return
        pages = self._locate(run.gpa) + run.indices()
        if int(pages[0]) < self._next or int(pages[-1]) >= self.regions[self._region][1]:
            raise FormatError(f"a PAGE section at {run.gpa:#x} is out of order or overlaps")
        data = np.ascontiguousarray(run.data)
        for index, first, count in _pieces(pages):
            while first >= self._chunk + SCAN_PAGES:
                self._end_chunk()
            self._zeros((first - self._next) * PAGE_SIZE)
            self._digest.update(data[index : index + count].data)
            offset = first - self._chunk
            self._tags[offset : offset + count] = run.tags[index : index + count]
            self._next = first + count

    def hexdigest(self) -> str:
        """The digest, every page after the last one stored hashed as zero."""
        while self._region < len(self.regions):
            self._end_chunk()
        return self._digest.hexdigest()

    def _locate(self, gpa: int) -> int:
        """``gpa``'s page in its region, finishing the regions before it."""
        while self._region < len(self.regions):
            base, npages = self.regions[self._region]
            if base <= gpa < base + npages * PAGE_SIZE:
                return (gpa - base) // PAGE_SIZE
            if gpa < base:
                break
            region = self._region
            while self._region == region:  # the rest of this region is zeros
                self._end_chunk()
        raise FormatError(f"a PAGE section at {gpa:#x} is out of order or outside guest RAM")

    def _end_chunk(self) -> None:
        """Hash the rest of the current chunk's data as zeros, then its tags; move on
        to the next chunk, or the next region after the last."""
        npages = self.regions[self._region][1]
        end = min(self._chunk + SCAN_PAGES, npages)
        self._zeros((end - self._next) * PAGE_SIZE)
        count = end - self._chunk
        self._digest.update(self._tags[:count].data)
        self._tags[:count] = 0
        self._chunk = self._next = end
        if end == npages:
            self._region += 1
            self._chunk = self._next = 0

    def _zeros(self, size: int) -> None:
        for done in range(0, size, len(_ZEROS)):
            self._digest.update(_ZEROS[: min(len(_ZEROS), size - done)])


_ZEROS: Final = memoryview(bytes(1 << 20))


def _pieces(pages: NDArray[np.intp]) -> list[tuple[int, int, int]]:
    """(index, first page, count) of each run of consecutive ``pages`` that lies in
    one SCAN_PAGES chunk."""
    breaks = np.flatnonzero((np.diff(pages) != 1) | (np.diff(pages // SCAN_PAGES) != 0)) + 1
    starts = [0, *breaks.tolist()]
    stops = [*breaks.tolist(), int(pages.size)]
    return [
        (start, int(pages[start]), stop - start) for start, stop in zip(starts, stops, strict=True)
    ]
