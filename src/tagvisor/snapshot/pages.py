"""Encoding guest pages with their tags (the PAGE section of both formats).

    PAGE := gpa:u64 npages:u32 flags:u32 body
    body := kinds[npages] uniform_tags[#uniform] packed_tags[#full][128] data[#data][4096]
            (zlib-compressed when flags bit 0 is set)

A section covers the window of ``npages`` pages from ``gpa``. Each page has a kind:

    0 ZERO          data all zero and every tag 0: nothing else is stored
    1 DATA_UNIFORM  data, and one tag byte for all 256 granules
    2 DATA_TAGS     data, and its 256 tags packed in 128 bytes
    3 ZERO_UNIFORM  zero data, one non-zero tag for all granules
    4 ZERO_TAGS     zero data, 128 bytes of packed tags
    5 SKIP          not carried by this section: the reader leaves the page as it is

A zero page with non-zero tags is not a zero page: the guest stored information in
those tags (the 2021 QEMU review's point), so kinds 3 and 4 keep them. Tags never cost
more than 1/32 of the page bytes, and a page whose granules share one tag costs one
byte. SKIP lets one section carry a scattered set of pages (what a dirty log reports)
for one byte per page left out, rather than a section per run of pages; a section
carries at least one page. Encoding and
decoding are vectorised over the whole window; a decoded section's data rows are views
of the payload, not copies.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import GRANULES_PER_PAGE, PACKED_TAGS_PER_PAGE, PAGE_SIZE
from tagvisor.arch.tagformat import pack_tags, unpack_tags
from tagvisor.kvm.api import page_runs
from tagvisor.snapshot.container import FormatError, Payload

HEAD: Final = struct.Struct("<QII")
COMPRESSED: Final = 1 << 0
#: Pages in one PAGE section at most (64 MiB of data), which bounds a reader's memory.
MAX_PAGES: Final = 16384
MAX_BODY: Final = MAX_PAGES * (1 + 1 + PACKED_TAGS_PER_PAGE + PAGE_SIZE)


class Kind(enum.IntEnum):
    """What a PAGE section stores of one page (the table above): data or not, one tag byte or all
    256 tags, or nothing (SKIP)."""

    ZERO = 0
    DATA_UNIFORM = 1
    DATA_TAGS = 2
    ZERO_UNIFORM = 3
    ZERO_TAGS = 4
    SKIP = 5


_UNIFORM: Final = np.zeros(256, bool)
_UNIFORM[[Kind.DATA_UNIFORM, Kind.ZERO_UNIFORM]] = True
_FULL: Final = np.zeros(256, bool)
_FULL[[Kind.DATA_TAGS, Kind.ZERO_TAGS]] = True
_DATA: Final = np.zeros(256, bool)
_DATA[[Kind.DATA_UNIFORM, Kind.DATA_TAGS]] = True


@dataclass
class PageRun:
    """Pages of guest memory with their tags, one row each in ``data`` (n, 4096) and
    ``tags`` (n, 256).

    The rows are the consecutive pages from ``gpa``; or, when ``pages`` is given, the
    pages at those (ascending) indices of a window of ``window`` pages from ``gpa``,
    the window's other pages not being part of the run.
    """

    gpa: int
    data: NDArray[np.uint8]
    tags: NDArray[np.uint8]
    pages: NDArray[np.intp] | None = None
    window: int = 0

    @property
    def npages(self) -> int:
        """The pages the run spans from ``gpa``, those left out included."""
        return self.window if self.pages is not None else self.count

    @property
    def count(self) -> int:
        """The pages the run holds."""
        return int(self.data.shape[0])

    def indices(self) -> NDArray[np.intp]:
        """The held pages as indices from ``gpa``."""
        return self.pages if self.pages is not None else np.arange(self.count)


@dataclass
class EncodeStats:
    """What encoding pages cost: the pages held, how many of them were ZERO, the data and tag bytes
    stored, the pages whose tags took one byte, and the bytes on the wire."""

    pages: int = 0
    zero_pages: int = 0
    data_bytes: int = 0
    tag_bytes: int = 0
    uniform_tag_pages: int = 0
    wire_bytes: int = 0

    def add(self, other: EncodeStats) -> None:
        """Add ``other``'s counts to these (the totals over several sections)."""
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def classify(data: NDArray[np.uint8], tags: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The kind of each page (vectorised over 64-bit lanes).

    A page whose first eight bytes are not zero has data; only the others are read in
    full, so classifying pages of real data costs a cache line per page, not the page.
    """
    lanes = _lanes(data)
    has_data = lanes[:, 0] != 0
    maybe_zero = np.flatnonzero(~has_data)
    if maybe_zero.size:
        has_data[maybe_zero] = nonzero_rows(data[maybe_zero])
    tag_lanes = _lanes(tags)
    first = tags[:, 0].astype(np.uint64) * np.uint64(0x0101_0101_0101_0101)
    uniform = (tag_lanes == first[:, None]).all(axis=1)
    tagged = first != 0
    index = has_data.astype(np.uint8) << 2 | uniform.astype(np.uint8) << 1 | tagged
    kinds: NDArray[np.uint8] = _KIND_OF[index]
    return kinds


def rows_with_data(rows: NDArray[np.uint8], indices: NDArray[np.intp]) -> NDArray[np.bool_]:
    """Which of the rows at the ascending ``indices`` of ``rows`` (n, PAGE_SIZE, in
    place: guest memory itself) are not all zero: each row's first 8 bytes, then the
    whole of the rows whose first bytes are zero, a run of consecutive rows at a time
    (views: nothing is copied)."""
    lanes = _lanes(rows)
    has_data: NDArray[np.bool_] = lanes[indices, 0] != 0
    positions = np.flatnonzero(~has_data)
    if positions.size:
        for index, first, count in page_runs(indices[positions]):
            has_data[positions[index : index + count]] = nonzero_rows(rows[first : first + count])
    return has_data


def nonzero_rows(rows: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Which rows of ``rows`` are not all zero. Each row's largest 32-bit word: Arm's
    SIMD has a lane-wise maximum for 32-bit lanes and none for 64-bit ones, and under
    TCG this ran 2.4 times as fast as any() over 64-bit lanes (qemu-user, 16 MiB)."""
    words = np.ascontiguousarray(rows).view(np.uint32)
    nonzero: NDArray[np.bool_] = words.max(axis=1, initial=0) != 0
    return nonzero


#: Kind by (has data, uniform tags, first tag non-zero) as bits 2, 1, 0.
_KIND_OF: Final = np.array(
    [
        *(Kind.ZERO_TAGS, Kind.ZERO_TAGS, Kind.ZERO, Kind.ZERO_UNIFORM),
        *(Kind.DATA_TAGS, Kind.DATA_TAGS, Kind.DATA_UNIFORM, Kind.DATA_UNIFORM),
    ],
    np.uint8,
)


def _lanes(rows: NDArray[np.uint8]) -> NDArray[np.uint64]:
    return np.ascontiguousarray(rows).view(np.uint64)


def encode(run: PageRun, *, compress: bool = False) -> tuple[bytes, EncodeStats]:
    """The PAGE payload for a run, and what it cost."""
    parts, stats = encode_parts(run, compress=compress)
    return b"".join(parts), stats


def encode_parts(
    run: PageRun, *, compress: bool = False, skip_zero: bool = False
) -> tuple[list[bytes | memoryview], EncodeStats]:
    """The PAGE payload as a list of buffers to send one after another (no join, and
    the page data is not copied: it goes as views of the run's rows, a run of pages
    with data at a time, unless those runs are many, MAX_DATA_PARTS).

    With ``skip_zero`` the run's ZERO pages are left out too (SKIP), for a reader whose
    memory starts zeroed; if nothing is left the payload is empty (no parts).
    """
    if not 0 < run.npages <= MAX_PAGES:
        raise ValueError(f"a PAGE section holds 1 to {MAX_PAGES} pages")
    kinds = classify(run.data, run.tags)
    keep = kinds != Kind.ZERO if skip_zero else None
    if keep is not None and keep.all():
        keep = None
    held = kinds if keep is None else kinds[keep]
    if not held.size:
        return [], EncodeStats()
    uniform, full, with_data = _UNIFORM[held], _FULL[held], _DATA[held]
    gpa, window = run.gpa, kinds
    if run.pages is not None or keep is not None:
        positions = run.indices() if keep is None else run.indices()[keep]
        first, last = int(positions[0]), int(positions[-1])
        window = np.full(last - first + 1, Kind.SKIP, np.uint8)
        window[positions - first] = held
        gpa += first * PAGE_SIZE
    tags = run.tags if keep is None else run.tags[keep]
    if full.all():
        full_tags = np.ascontiguousarray(tags).reshape(-1)
    else:
        full_tags = np.ascontiguousarray(tags[full]).reshape(-1)
    packed = np.empty(full_tags.size // 2, np.uint8)
    if full_tags.size:
        pack_tags(full_tags, packed)
    body: list[bytes | memoryview] = [
        window.tobytes(),
        tags[uniform, 0].tobytes(),
        packed.data,
        *_data_parts(run.data, _DATA[kinds]),
    ]
    flags = 0
    if compress:
        body, flags = [zlib.compress(b"".join(body), 1)], COMPRESSED
    parts: list[bytes | memoryview] = [HEAD.pack(gpa, window.size, flags), *body]
    n_uniform, n_full = int(uniform.sum()), int(full.sum())
    stats = EncodeStats(
        pages=int(held.size),
        zero_pages=int((held == Kind.ZERO).sum()),
        data_bytes=int(with_data.sum()) * PAGE_SIZE,
        tag_bytes=n_uniform + n_full * PACKED_TAGS_PER_PAGE,
        uniform_tag_pages=n_uniform,
        wire_bytes=sum(len(part) for part in parts),
    )
    return parts, stats


#: Runs of pages with data that a section's data is sent as, at most, each a view of
#: the run's rows; with more, the rows are gathered into one copy.
MAX_DATA_PARTS: Final = 64


def _data_parts(rows: NDArray[np.uint8], with_data: NDArray[np.bool_]) -> list[memoryview]:
    """The rows with data, in order, as byte views of ``rows`` run by run (the pages
    left out, zero, are not copied around), or as one gathered copy if the runs are
    many."""
    if with_data.all():
        return [np.ascontiguousarray(rows).reshape(-1).data]
    selected = np.flatnonzero(with_data)
    if not selected.size:
        return []
    runs = page_runs(selected)
    if len(runs) > MAX_DATA_PARTS or not rows.flags.c_contiguous:
        return [np.ascontiguousarray(rows[selected]).reshape(-1).data]
    return [rows[first : first + count].reshape(-1).data for _, first, count in runs]


def has_data(kinds: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Which pages of these kinds come with data."""
    with_data: NDArray[np.bool_] = _DATA[kinds]
    return with_data


@dataclass
class PageSection:
    """A decoded PAGE payload: the kinds of the window's pages, and the rows of data
    of the pages with data (in page order, views of the payload; none if ``placed``:
    the reader received them into guest memory directly)."""

    gpa: int
    kinds: NDArray[np.uint8]
    data: NDArray[np.uint8]
    uniform_tags: NDArray[np.uint8]
    packed_tags: NDArray[np.uint8]
    placed: bool = False

    @property
    def npages(self) -> int:
        """The pages the section spans, SKIP included."""
        return int(self.kinds.size)

    def held(self) -> NDArray[np.bool_]:
        """Which pages of the window the section carries (not SKIP)."""
        held: NDArray[np.bool_] = self.kinds != Kind.SKIP
        return held

    def with_data(self) -> NDArray[np.bool_]:
        """Which pages of the window come with data (the rows of ``data``)."""
        with_data: NDArray[np.bool_] = _DATA[self.kinds]
        return with_data

    def tagged(self) -> NDArray[np.bool_]:
        """Which pages of the window carry a non-zero tag (SKIP and ZERO pages do not;
        a page whose tags differ has one)."""
        tagged: NDArray[np.bool_] = _FULL[self.kinds] | (self.kinds == Kind.ZERO_UNIFORM)
        uniform_data = np.flatnonzero(_UNIFORM[self.kinds])
        if uniform_data.size:
            tagged[uniform_data] = self.uniform_tags != 0
        return tagged

    def tags_are_zero(self) -> bool:
        """Whether every carried page's tags are all 0."""
        return not self.packed_tags.size and not self.uniform_tags.any()

    def tags(self, out: NDArray[np.uint8] | None = None) -> NDArray[np.uint8]:
        """Tags of the carried pages, one row of 256 per page (into ``out`` if given)."""
        held = self.kinds[self.kinds != Kind.SKIP]
        if out is None:
            out = np.empty((held.size, GRANULES_PER_PAGE), np.uint8)
        full, uniform = _FULL[held], _UNIFORM[held]
        if full.all():
            unpack_tags(self.packed_tags, out.reshape(-1))
            return out
        out[~full] = 0
        out[uniform] = self.uniform_tags[:, None]
        if self.packed_tags.size:
            unpacked = np.empty(self.packed_tags.size * 2, np.uint8)
            unpack_tags(self.packed_tags, unpacked)
            out[full] = unpacked.reshape(-1, GRANULES_PER_PAGE)
        return out

    def run(self) -> PageRun:
        """The carried pages as a run (zero pages' rows materialised); not for a placed
        section, whose data is in guest memory already."""
        if self.placed:
            raise ValueError("a placed PAGE section's data is not in the section")
        held = self.held()
        with_data = self.with_data()[held]
        if with_data.all():
            data = self.data
        else:
            data = np.zeros((with_data.size, PAGE_SIZE), np.uint8)
            data[with_data] = self.data
        pages = None if held.all() else np.flatnonzero(held)
        return PageRun(self.gpa, data, self.tags(), pages, self.npages)


def decode(payload: Payload) -> PageRun:
    """Parse a PAGE payload, checking every size against what the kinds promise."""
    return decode_section(payload).run()


def decode_section(
    payload: Payload, placed: Sequence[NDArray[np.uint8]] | None = None
) -> PageSection:
    """Parse and check a PAGE payload without copying its page data.

    ``placed``: the reader received the data rows straight into that memory, run by
    run (see :func:`data_layout`), and ``payload`` holds everything before them; the
    section's ``data`` is then empty.
    """
    if len(payload) < HEAD.size:
        raise FormatError("a PAGE section is shorter than its header")
    gpa, npages, flags = HEAD.unpack_from(payload)
    if not 0 < npages <= MAX_PAGES or gpa % PAGE_SIZE:
        raise FormatError(f"a PAGE section claims {npages} pages at {gpa:#x}")
    if flags & ~COMPRESSED:
        raise FormatError(f"a PAGE section has unknown flags {flags:#x}")
    body: Payload = memoryview(payload)[HEAD.size :]
    if flags & COMPRESSED:
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(body, MAX_BODY)
        except zlib.error as error:
            raise FormatError(f"a PAGE section does not decompress: {error}") from None
        if inflater.unconsumed_tail or not inflater.eof:
            raise FormatError("a compressed PAGE section inflates beyond its limit")
    if len(body) < npages:
        raise FormatError("a PAGE section is shorter than its kinds")
    kinds = np.frombuffer(body, np.uint8, npages)
    if kinds.max(initial=0) > Kind.SKIP:
        raise FormatError(f"a PAGE section has an unknown page kind {int(kinds.max())}")
    counts = np.bincount(kinds, minlength=len(Kind))
    n_uniform = int(counts[Kind.DATA_UNIFORM] + counts[Kind.ZERO_UNIFORM])
    n_full = int(counts[Kind.DATA_TAGS] + counts[Kind.ZERO_TAGS])
    n_data = int(counts[Kind.DATA_UNIFORM] + counts[Kind.DATA_TAGS])
    if counts[Kind.SKIP] == npages:
        raise FormatError("a PAGE section carries no page")
    expected = npages + n_uniform + n_full * PACKED_TAGS_PER_PAGE + n_data * PAGE_SIZE
    if placed is not None:
        placed_bytes = sum(target.size for target in placed)
        if flags & COMPRESSED or placed_bytes != n_data * PAGE_SIZE:
            raise FormatError("a PAGE section's placed data does not match its kinds")
        expected -= placed_bytes
        n_data = 0
    if len(body) != expected:
        raise FormatError(f"a PAGE section holds {len(body)} bytes where its kinds need {expected}")
    offset = npages
    uniform_tags = np.frombuffer(body, np.uint8, n_uniform, offset)
    offset += n_uniform
    packed = np.frombuffer(body, np.uint8, n_full * PACKED_TAGS_PER_PAGE, offset)
    offset += packed.size
    data = np.frombuffer(body, np.uint8, n_data * PAGE_SIZE, offset)
    if uniform_tags.max(initial=0) > 0xF:
        raise FormatError("a PAGE section has a uniform tag above 15")
    return PageSection(
        gpa, kinds, data.reshape(n_data, PAGE_SIZE), uniform_tags, packed, placed is not None
    )


def data_layout(head: Payload, length: int) -> tuple[int, NDArray[np.uint8], int] | None:
    """For a reader that places page data as it arrives: given the first bytes of a
    PAGE payload of ``length`` bytes (header and kinds, at least ``HEAD.size`` bytes),
    (gpa, kinds, bytes before the data) if the payload is uncompressed and its sizes
    agree with its kinds; None if it needs more of the head (then ``HEAD.size +
    npages`` bytes) or cannot be placed (decode_section will then say what is wrong).
    """
    gpa, npages, flags = HEAD.unpack_from(head)
    if flags or not 0 < npages <= MAX_PAGES or gpa % PAGE_SIZE:
        return None
    if len(head) < HEAD.size + npages:
        return None
    kinds = np.frombuffer(head, np.uint8, npages, HEAD.size)
    if kinds.max(initial=0) > Kind.SKIP:
        return None
    counts = np.bincount(kinds, minlength=len(Kind))
    n_data = int(counts[Kind.DATA_UNIFORM] + counts[Kind.DATA_TAGS])
    before = HEAD.size + npages + int(counts[Kind.DATA_UNIFORM] + counts[Kind.ZERO_UNIFORM])
    before += int(counts[Kind.DATA_TAGS] + counts[Kind.ZERO_TAGS]) * PACKED_TAGS_PER_PAGE
    if before + n_data * PAGE_SIZE != length or not n_data:
        return None
    return gpa, kinds, before
