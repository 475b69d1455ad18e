"""Encoding a run of guest pages with their tags (the PAGE section of both formats).

    PAGE := gpa:u64 npages:u32 flags:u32 body
    body := kinds[npages] uniform_tags[#uniform] packed_tags[#full][128] data[#data][4096]
            (zlib-compressed when flags bit 0 is set)

Each page has a kind:

    0 ZERO          data all zero and every tag 0: nothing else is stored
    1 DATA_UNIFORM  data, and one tag byte for all 256 granules
    2 DATA_TAGS     data, and its 256 tags packed in 128 bytes
    3 ZERO_UNIFORM  zero data, one non-zero tag for all granules
    4 ZERO_TAGS     zero data, 128 bytes of packed tags

A zero page with non-zero tags is not a zero page: the guest stored information in
those tags (the 2021 QEMU review's point), so kinds 3 and 4 keep them. Tags never cost
more than 1/32 of the page bytes, and a page whose granules share one tag costs one
byte. Encoding and decoding are vectorised over the whole run.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import GRANULES_PER_PAGE, PACKED_TAGS_PER_PAGE, PAGE_SIZE
from tagvisor.arch.tagformat import pack_tags, unpack_tags
from tagvisor.snapshot.container import FormatError, Payload

HEAD: Final = struct.Struct("<QII")
COMPRESSED: Final = 1 << 0
#: Pages in one PAGE section at most (64 MiB of data), which bounds a reader's memory.
MAX_PAGES: Final = 16384
MAX_BODY: Final = MAX_PAGES * (1 + 1 + PACKED_TAGS_PER_PAGE + PAGE_SIZE)


class Kind(enum.IntEnum):
    ZERO = 0
    DATA_UNIFORM = 1
    DATA_TAGS = 2
    ZERO_UNIFORM = 3
    ZERO_TAGS = 4


@dataclass
class PageRun:
    """``npages`` consecutive pages from ``gpa``: data (n, 4096) and tags (n, 256)."""

    gpa: int
    data: NDArray[np.uint8]
    tags: NDArray[np.uint8]

    @property
    def npages(self) -> int:
        return int(self.data.shape[0])


@dataclass
class EncodeStats:
    pages: int = 0
    zero_pages: int = 0
    data_bytes: int = 0
    tag_bytes: int = 0
    uniform_tag_pages: int = 0
    wire_bytes: int = 0

    def add(self, other: EncodeStats) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def classify(data: NDArray[np.uint8], tags: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The kind of each page (vectorised over 64-bit lanes)."""
    has_data = _lanes(data).any(axis=1)
    tag_lanes = _lanes(tags)
    first = tags[:, 0].astype(np.uint64) * np.uint64(0x0101_0101_0101_0101)
    uniform = (tag_lanes == first[:, None]).all(axis=1)
    tagged = tag_lanes.any(axis=1)
    kinds = np.full(data.shape[0], Kind.ZERO, np.uint8)
    kinds[has_data & uniform] = Kind.DATA_UNIFORM
    kinds[has_data & ~uniform] = Kind.DATA_TAGS
    kinds[~has_data & tagged & uniform] = Kind.ZERO_UNIFORM
    kinds[~has_data & ~uniform] = Kind.ZERO_TAGS
    return kinds


def _lanes(rows: NDArray[np.uint8]) -> NDArray[np.uint64]:
    return np.ascontiguousarray(rows).view(np.uint64)


def encode(run: PageRun, *, compress: bool = False) -> tuple[bytes, EncodeStats]:
    """The PAGE payload for a run, and what it cost."""
    parts, stats = encode_parts(run, compress=compress)
    return b"".join(parts), stats


def encode_parts(
    run: PageRun, *, compress: bool = False
) -> tuple[list[bytes | memoryview], EncodeStats]:
    """The PAGE payload as a list of buffers to send one after another (no join, and
    the page data is not copied when every page of the run carries data)."""
    if not 0 < run.npages <= MAX_PAGES:
        raise ValueError(f"a PAGE section holds 1 to {MAX_PAGES} pages")
    kinds = classify(run.data, run.tags)
    uniform = (kinds == Kind.DATA_UNIFORM) | (kinds == Kind.ZERO_UNIFORM)
    full = (kinds == Kind.DATA_TAGS) | (kinds == Kind.ZERO_TAGS)
    with_data = (kinds == Kind.DATA_UNIFORM) | (kinds == Kind.DATA_TAGS)
    full_tags = np.ascontiguousarray(run.tags[full]).reshape(-1)
    packed = np.empty(full_tags.size // 2, np.uint8)
    if full_tags.size:
        pack_tags(full_tags, packed)
    data = run.data if with_data.all() else run.data[with_data]
    body: list[bytes | memoryview] = [
        kinds.tobytes(),
        run.tags[uniform, 0].tobytes(),
        packed.tobytes(),
        np.ascontiguousarray(data).reshape(-1).data,
    ]
    flags = 0
    if compress:
        body, flags = [zlib.compress(b"".join(body), 1)], COMPRESSED
    parts: list[bytes | memoryview] = [HEAD.pack(run.gpa, run.npages, flags), *body]
    stats = EncodeStats(
        pages=run.npages,
        zero_pages=int((kinds == Kind.ZERO).sum()),
        data_bytes=int(with_data.sum()) * PAGE_SIZE,
        tag_bytes=int(uniform.sum()) + int(full.sum()) * PACKED_TAGS_PER_PAGE,
        uniform_tag_pages=int(uniform.sum()),
        wire_bytes=sum(len(part) for part in parts),
    )
    return parts, stats


def decode(payload: Payload) -> PageRun:
    """Parse a PAGE payload, checking every size against what the kinds promise."""
    if len(payload) < HEAD.size:
        raise FormatError("a PAGE section is shorter than its header")
    gpa, npages, flags = HEAD.unpack_from(payload)
    if not 0 < npages <= MAX_PAGES or gpa % PAGE_SIZE:
        raise FormatError(f"a PAGE section claims {npages} pages at {gpa:#x}")
    if flags & ~COMPRESSED:
        raise FormatError(f"a PAGE section has unknown flags {flags:#x}")
    body = payload[HEAD.size :]
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
    if kinds.max(initial=0) > Kind.ZERO_TAGS:
        raise FormatError(f"a PAGE section has an unknown page kind {int(kinds.max())}")
    uniform = (kinds == Kind.DATA_UNIFORM) | (kinds == Kind.ZERO_UNIFORM)
    full = (kinds == Kind.DATA_TAGS) | (kinds == Kind.ZERO_TAGS)
    with_data = (kinds == Kind.DATA_UNIFORM) | (kinds == Kind.DATA_TAGS)
    n_uniform, n_full, n_data = int(uniform.sum()), int(full.sum()), int(with_data.sum())
    expected = npages + n_uniform + n_full * PACKED_TAGS_PER_PAGE + n_data * PAGE_SIZE
    if len(body) != expected:
        raise FormatError(f"a PAGE section holds {len(body)} bytes where its kinds need {expected}")
    offset = npages
    uniform_tags = np.frombuffer(body, np.uint8, n_uniform, offset)
    offset += n_uniform
    packed = np.frombuffer(body, np.uint8, n_full * PACKED_TAGS_PER_PAGE, offset)
    offset += packed.size
    data_rows = np.frombuffer(body, np.uint8, n_data * PAGE_SIZE, offset)
    if uniform_tags.max(initial=0) > 0xF:
        raise FormatError("a PAGE section has a uniform tag above 15")
    if n_data == npages:  # every page has data: use the payload's bytes as they are
        data = data_rows.reshape(npages, PAGE_SIZE)
    else:
        data = np.zeros((npages, PAGE_SIZE), np.uint8)
        data[with_data] = data_rows.reshape(-1, PAGE_SIZE)
    tags = np.zeros((npages, GRANULES_PER_PAGE), np.uint8)
    tags[uniform] = uniform_tags[:, None]
    if n_full:
        unpacked = np.empty(packed.size * 2, np.uint8)
        unpack_tags(packed, unpacked)
        tags[full] = unpacked.reshape(-1, GRANULES_PER_PAGE)
    return PageRun(gpa, data, tags)
