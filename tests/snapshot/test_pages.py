"""The page+tag encoding: kinds, sizes, round trips and hostile payloads."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagvisor.snapshot.container import FormatError
from tagvisor.snapshot.pages import (
    Kind,
    PageRun,
    classify,
    decode,
    encode,
    encode_parts,
    nonzero_rows,
    rows_with_data,
)


def run_of(kinds: list[int], seed: int = 0) -> PageRun:
    rng = np.random.default_rng(seed)
    data = np.zeros((len(kinds), 4096), np.uint8)
    tags = np.zeros((len(kinds), 256), np.uint8)
    for i, kind in enumerate(kinds):
        if kind in (Kind.DATA_UNIFORM, Kind.DATA_TAGS):
            data[i] = rng.integers(0, 256, 4096)
            data[i, 0] = 1
        if kind in (Kind.DATA_UNIFORM, Kind.ZERO_UNIFORM):
            tags[i] = 3 if kind == Kind.ZERO_UNIFORM else rng.integers(0, 16)
        if kind in (Kind.DATA_TAGS, Kind.ZERO_TAGS):
            tags[i] = rng.integers(0, 16, 256)
            tags[i, :2] = (1, 2)
    return PageRun(0x4000_0000, data, tags)


STORED = [kind for kind in Kind if kind is not Kind.SKIP]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(STORED), min_size=1, max_size=40), st.booleans())
def test_any_mix_of_pages_round_trips_exactly(kinds: list[int], compress: bool) -> None:
    """Scenario: random runs of all five kinds, compressed or not."""
    run = run_of(kinds)
    assert classify(run.data, run.tags).tolist() == kinds
    payload, stats = encode(run, compress=compress)
    back = decode(payload)
    assert back.gpa == run.gpa
    assert np.array_equal(back.data, run.data)
    assert np.array_equal(back.tags, run.tags)
    assert stats.tag_bytes <= len(kinds) * 128


def test_zero_page_with_tags_is_not_a_zero_page() -> None:
    """Scenario: a page of zeros whose granules are tagged 0x3, and one with mixed tags.

    Neither is skipped as zero: uniform tags cost 1 byte, mixed 128 (1/32 of 4 KiB)."""
    run = run_of([Kind.ZERO_UNIFORM, Kind.ZERO_TAGS, Kind.ZERO])
    _, stats = encode(run)
    assert stats.zero_pages == 1
    assert stats.tag_bytes == 1 + 128
    assert stats.data_bytes == 0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p[:20], r"shorter than its kinds|holds"),
        (lambda p: struct.pack("<QII", 0x4000_0000, 70000, 0) + p[16:], "claims 70000 pages"),
        (lambda p: struct.pack("<QII", 0x4000_0001, 1, 0) + p[16:], "claims 1 pages"),
        (lambda p: p[:16] + bytes([9]) + p[17:], "unknown page kind"),
        (lambda p: p + b"x", "holds"),
        (lambda p: p[:12] + struct.pack("<I", 4) + p[16:], "unknown flags"),
    ],
    ids=["short", "too many pages", "unaligned", "bad kind", "trailing", "flags"],
)
def test_hostile_page_payloads_are_refused(mutate: object, message: str) -> None:
    """Scenario: PAGE payloads whose header or body lies about their contents."""
    assert callable(mutate)
    payload, _ = encode(run_of([Kind.DATA_TAGS]))
    with pytest.raises(FormatError, match=message):
        decode(mutate(payload))


def test_compressed_bomb_is_refused() -> None:
    """Scenario: a compressed body that would inflate past the section limit."""
    import zlib

    body = zlib.compress(bytes([0]) + bytes(200 << 20), 9)
    with pytest.raises(FormatError, match=r"beyond its limit|holds"):
        decode(struct.pack("<QII", 0x4000_0000, 1, 1) + body)


@pytest.mark.parametrize(("zero_every", "parts"), [(8, 32), (2, 1)], ids=["few-runs", "many-runs"])
def test_page_data_goes_as_views_of_its_runs_unless_they_are_many(
    zero_every: int, parts: int
) -> None:
    """Scenario: a first pass's window where every ``zero_every``-th page is zero (left
    out, skip_zero). With few runs of data pages the data goes as views of the run's
    own rows, one per run, never copied; with many (every other page zero: 128 runs) it
    is gathered into one copy. Either way the payload decodes to the same pages."""
    rng = np.random.default_rng(11)
    data = rng.integers(1, 256, (256, 4096), dtype=np.uint8)
    data[::zero_every] = 0
    tags = rng.integers(0, 16, (256, 256), dtype=np.uint8)
    tags[::zero_every] = 0
    run = PageRun(0x4000_0000, data, tags)
    body, _ = encode_parts(run, skip_zero=True)
    data_parts = body[4:]
    assert len(data_parts) == parts
    views = [np.shares_memory(np.frombuffer(part, np.uint8), data) for part in data_parts]
    assert all(views) is (parts > 1)
    decoded = decode(b"".join(bytes(part) for part in body))
    assert decoded.pages is not None
    pages = (decoded.gpa - run.gpa) // 4096 + decoded.pages
    assert np.array_equal(pages, np.flatnonzero(data.any(axis=1)))
    assert np.array_equal(decoded.data, data[pages])


def test_a_page_with_one_byte_set_anywhere_has_data() -> None:
    """Scenario: pages that are zero but for one byte, at the first, a middle and the
    last offset (and in each byte of a 32-bit word), are pages with data, to both
    ways of looking (nonzero_rows, and classify's first-bytes shortcut); an all-zero
    page is not."""
    offsets = [0, 1, 2, 3, 7, 8, 2049, 4095]
    data = np.zeros((len(offsets) + 1, 4096), np.uint8)
    for row, offset in enumerate(offsets):
        data[row, offset] = 0x80
    assert nonzero_rows(data).tolist() == [True] * len(offsets) + [False]
    kinds = classify(data, np.zeros((data.shape[0], 256), np.uint8))
    assert kinds.tolist() == [Kind.DATA_UNIFORM] * len(offsets) + [Kind.ZERO]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["zero", "first", "late"]), min_size=1, max_size=48), st.data())
def test_rows_with_data_are_found_among_any_subset_of_rows(
    shapes: list[str], draw: st.DataObject
) -> None:
    """Scenario: a window of pages in place, each zero, with data in its first bytes,
    or zero but for a byte late in the page, and any ascending subset of them asked
    about (a first pass's pages with memory behind them): exactly those not all zero
    have data, however the zero-looking ones lie between the others."""
    rows = np.zeros((len(shapes), 4096), np.uint8)
    for row, shape in enumerate(shapes):
        if shape == "first":
            rows[row, 3] = 1
        elif shape == "late":
            rows[row, 4000 - row] = 9
    chosen = draw.draw(st.sets(st.integers(0, len(shapes) - 1), min_size=1))
    indices = np.array(sorted(chosen), np.intp)
    found = rows_with_data(rows, indices)
    assert found.tolist() == rows[indices].any(axis=1).tolist()
