"""PAGE sections that carry a scattered set of pages (SKIP), and the reader's helpers."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagvisor.snapshot.container import FormatError
from tagvisor.snapshot.pages import (
    HEAD,
    Kind,
    PageRun,
    classify,
    data_layout,
    decode,
    decode_section,
    encode,
    encode_parts,
)

GPA = 0x4000_0000


def random_pages(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (count, 4096), dtype=np.uint8)
    data[:, 0] = 1
    tags = rng.integers(0, 16, (count, 256), dtype=np.uint8)
    return data, tags


def test_a_page_whose_first_bytes_are_zero_still_counts_as_data() -> None:
    """Scenario: classify looks at a page's first eight bytes first; a page that
    starts with zeros but has data further on must still be a data page."""
    data = np.zeros((3, 4096), np.uint8)
    data[1, 4095] = 7
    data[2, 8] = 1
    tags = np.zeros((3, 256), np.uint8)
    assert classify(data, tags).tolist() == [Kind.ZERO, Kind.DATA_UNIFORM, Kind.DATA_UNIFORM]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=60).filter(any), st.booleans())
def test_scattered_pages_round_trip_and_the_others_are_skipped(
    held: list[bool], compress: bool
) -> None:
    """Scenario: a window of pages of which only some belong to the run (a dirty log's
    pages): one section carries them, the rest are SKIP, and decoding gives back the
    same pages at the same places."""
    window = np.array(held)
    first, last = np.flatnonzero(window)[[0, -1]]
    window = window[first : last + 1]
    pages = np.flatnonzero(window)
    data, tags = random_pages(pages.size)
    run = PageRun(GPA, data, tags, pages, window.size)
    payload, stats = encode(run, compress=compress)
    back = decode(payload)
    assert back.gpa == GPA
    assert back.npages == window.size
    assert back.indices().tolist() == pages.tolist()
    assert np.array_equal(back.data, data)
    assert np.array_equal(back.tags, tags)
    assert stats.pages == pages.size
    assert stats.tag_bytes <= stats.data_bytes // 32


def test_skip_zero_leaves_zero_pages_out_and_trims_the_window() -> None:
    """Scenario: the first pass of a migration, whose destination starts zeroed: zero
    pages at the ends and inside the run are not sent, tagged zero pages are."""
    data, tags = random_pages(6)
    data[[0, 2, 5]] = 0
    tags[[0, 2, 5]] = 0
    tags[3] = 0  # data with tag 0 everywhere: still sent
    data[4] = 0  # zero data but tagged: still sent
    parts, stats = encode_parts(PageRun(GPA, data, tags), skip_zero=True)
    section = decode_section(b"".join(bytes(part) for part in parts))
    assert section.gpa == GPA + 4096
    assert section.kinds.tolist() == [
        Kind.DATA_TAGS,
        Kind.SKIP,
        Kind.DATA_UNIFORM,
        Kind.ZERO_TAGS,
    ]
    assert stats.pages == 3
    assert stats.zero_pages == 0


def test_a_run_of_zero_pages_only_gives_no_section_with_skip_zero() -> None:
    data = np.zeros((4, 4096), np.uint8)
    tags = np.zeros((4, 256), np.uint8)
    parts, stats = encode_parts(PageRun(GPA, data, tags), skip_zero=True)
    assert parts == []
    assert stats.pages == 0


def test_a_section_that_carries_no_page_is_refused() -> None:
    payload = struct.pack("<QII", GPA, 3, 0) + bytes([Kind.SKIP] * 3)
    with pytest.raises(FormatError, match="carries no page"):
        decode(payload)


def test_a_kind_beyond_skip_is_refused() -> None:
    payload = struct.pack("<QII", GPA, 1, 0) + bytes([Kind.SKIP + 1])
    with pytest.raises(FormatError, match="unknown page kind"):
        decode(payload)


def test_data_received_in_place_decodes_like_data_in_the_payload() -> None:
    """Scenario: a reader receives the data rows straight into guest memory; the rest
    of the payload decodes as before, and the sizes must agree with the kinds."""
    data, tags = random_pages(4)
    payload, _ = encode(PageRun(GPA, data, tags))
    layout = data_layout(payload[: HEAD.size + 4], len(payload))
    assert layout is not None
    gpa, kinds, before = layout
    assert gpa == GPA
    assert kinds.tolist() == [Kind.DATA_TAGS] * 4
    placed = np.frombuffer(payload, np.uint8, offset=before).copy()
    section = decode_section(payload[:before], [placed[:4096], placed[4096:]])
    assert section.placed
    assert section.data.shape == (0, 4096)
    assert np.array_equal(section.tags(), tags)
    with pytest.raises(FormatError, match="placed data"):
        decode_section(payload[:before], [placed[:-4096]])


def test_data_layout_declines_what_it_cannot_place() -> None:
    """Scenario: compressed sections, sections without data and sections whose size
    disagrees with their kinds are not placed (decode_section then judges them)."""
    data, tags = random_pages(2)
    compressed, _ = encode(PageRun(GPA, data, tags), compress=True)
    assert data_layout(compressed[: HEAD.size + 2], len(compressed)) is None
    zero, _ = encode(PageRun(GPA, np.zeros((2, 4096), np.uint8), tags))
    assert data_layout(zero[: HEAD.size + 2], len(zero)) is None
    plain, _ = encode(PageRun(GPA, data, tags))
    assert data_layout(plain[: HEAD.size + 2], len(plain) + 1) is None
    assert data_layout(plain[: HEAD.size], len(plain)) is None  # needs the kinds
