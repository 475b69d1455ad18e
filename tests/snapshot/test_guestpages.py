"""Reading and placing windows of scattered guest pages in bulk, and what is populated."""

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagvisor.kvm.model import ModelKvm
from tagvisor.snapshot import guestpages
from tagvisor.snapshot.guestpages import (
    PageBuffers,
    apply_section,
    read_run,
    read_window,
    runs_of,
    windows_of,
    write_page_tags,
)
from tagvisor.snapshot.pages import PageRun, decode_section, encode_parts
from tagvisor.vmm import Machine, MachineBuilder
from tagvisor.vmm.builder import RAM_BASE
from tests.vmm.guests import Exits

RAM = 8 << 20
BASE = RAM_BASE + (1 << 20)  # clear of what the builder writes (the boot block)
PAGES = 512  # the part of RAM the tests fill


def idle(ctx: object) -> Exits:
    yield from ()


def machine_with_pages(seed: int = 0) -> Machine:
    machine = MachineBuilder(ModelKvm(64 << 20)).memory(RAM).python_guest(idle).build()
    rng = np.random.default_rng(seed)
    machine.memory.write(BASE, rng.bytes(PAGES * 4096))
    machine.tags.write_tags(BASE, rng.integers(0, 16, PAGES * 256, dtype=np.uint8))
    return machine


def empty_machine() -> Machine:
    return MachineBuilder(ModelKvm(64 << 20)).memory(RAM).python_guest(idle).build()


def scattered(seed: int, count: int = PAGES) -> np.ndarray:
    """Sorted page indices in runs of 1 to 16 pages with gaps."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(count, bool)
    start = 0
    while start < count:
        length = int(rng.integers(1, 17))
        mask[start : start + length] = True
        start += length + int(rng.integers(1, 40))
    return np.flatnonzero(mask)


@pytest.mark.parametrize("live", [False, True])
@pytest.mark.parametrize("sparse_tags", [False, True], ids=["window-tags", "run-tags"])
def test_a_window_of_scattered_pages_reads_what_page_by_page_reads_would(
    live: bool, sparse_tags: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: the pages of a dirty log, read as one window: each row equals the
    page read on its own, whether tags come run by run or over the whole window."""
    machine = machine_with_pages()
    monkeypatch.setattr(guestpages, "PAGES_PER_TAG_CALL", 1 if sparse_tags else PAGES + 1)
    pages = scattered(1)
    run = read_window(machine, BASE, PAGES, pages, live=live, buffers=PageBuffers(PAGES))
    whole = read_run(machine, BASE, PAGES)
    assert run.npages == PAGES
    assert run.indices().tolist() == pages.tolist()
    assert np.array_equal(run.data, whole.data[pages])
    assert np.array_equal(run.tags, whole.tags[pages])


def test_a_live_read_is_a_copy_and_a_paused_whole_window_is_read_in_place() -> None:
    machine = machine_with_pages()
    live = read_window(machine, BASE, 4, live=True, buffers=PageBuffers(4))
    paused = read_window(machine, BASE, 4)
    machine.memory.write(BASE, b"\xee" * 4096)
    assert live.data[0, 0] != 0xEE
    assert paused.data[0, 0] == 0xEE


def test_tags_of_pages_in_short_runs_take_one_call_per_window_not_per_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scenario: every other page of a fresh region is written (runs of one page):
    reading or writing their tags takes a bulk call over the window, never one per
    page, even though that faults in the pages between."""
    machine = empty_machine()
    pages = np.arange(0, 512, 2)
    rows = np.random.default_rng(6).integers(1, 16, (pages.size, 4096), dtype=np.uint8)
    machine.memory.write_pages(BASE, pages, rows)
    calls: list[str] = []
    tags = machine.tags

    class Counting:
        def read_tags(self, *args: Any, **kwargs: Any) -> np.ndarray:
            calls.append("read")
            return tags.read_tags(*args, **kwargs)

        def write_tags(self, *args: Any, **kwargs: Any) -> None:
            calls.append("write")
            tags.write_tags(*args, **kwargs)

    monkeypatch.setattr(machine, "tags", Counting())
    new = np.random.default_rng(7).integers(0, 16, (pages.size, 256), dtype=np.uint8)
    write_page_tags(machine, BASE, pages, new)
    run = read_window(machine, BASE, 511, pages)
    assert np.array_equal(run.tags, new)
    assert len(calls) <= 3


@pytest.mark.parametrize("sparse_tags", [False, True], ids=["read-modify-write", "run-tags"])
def test_scattered_tags_are_written_to_their_pages_only(
    sparse_tags: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: new tags for scattered pages; every other page keeps its tags."""
    machine = machine_with_pages()
    monkeypatch.setattr(guestpages, "PAGES_PER_TAG_CALL", 1 if sparse_tags else PAGES + 1)
    before = read_run(machine, BASE, PAGES).tags.copy()
    pages = scattered(2)
    new = np.random.default_rng(3).integers(0, 16, (pages.size, 256), dtype=np.uint8)
    write_page_tags(machine, BASE, pages, new, window=np.empty(PAGES * 256, np.uint8))
    after = read_run(machine, BASE, PAGES).tags
    expected = before.copy()
    expected[pages] = new
    assert np.array_equal(after, expected)


def test_placing_a_scattered_section_changes_its_pages_and_nothing_else() -> None:
    """Scenario: a destination applies a section of scattered pages (SKIP between)."""
    source, destination = machine_with_pages(1), machine_with_pages(2)
    pages = scattered(4)
    run = read_window(source, BASE, PAGES, pages)
    parts, _ = encode_parts(run)
    before = read_run(destination, BASE, PAGES)
    before_data, before_tags = before.data.copy(), before.tags.copy()
    carried = apply_section(destination, decode_section(b"".join(bytes(p) for p in parts)))
    after = read_run(destination, BASE, PAGES)
    assert carried == pages.size
    others = np.setdiff1d(np.arange(PAGES), pages)
    assert np.array_equal(after.data[pages], run.data)
    assert np.array_equal(after.tags[pages], run.tags)
    assert np.array_equal(after.data[others], before_data[others])
    assert np.array_equal(after.tags[others], before_tags[others])


@pytest.mark.parametrize("per_page_calls", [1, PAGES], ids=["run-tags", "window-tags"])
def test_zero_pages_are_not_written_where_memory_was_never_touched(
    per_page_calls: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: a section with data pages and zero pages reaches a fresh destination:
    the zero pages get no memory at all (they are zero already, and their tags are not
    written either, not even as part of a whole window's), the others do; a zero page
    over memory that had data is zeroed."""
    monkeypatch.setattr(guestpages, "PAGES_PER_TAG_CALL", per_page_calls)
    destination = empty_machine()
    data = np.zeros((64, 4096), np.uint8)
    data[:20] = data[40:] = 5
    tags = np.zeros((64, 256), np.uint8)
    expected = np.arange(64) < 20
    expected[40:] = True
    parts, _ = encode_parts(PageRun(BASE, data, tags))
    apply_section(destination, decode_section(b"".join(bytes(p) for p in parts)))
    assert destination.memory.populated(BASE, 64).tolist() == expected.tolist()
    # Now page 50 becomes zero at the source: the destination must clear it.
    data[50] = 0
    parts, _ = encode_parts(PageRun(BASE, data, tags))
    apply_section(destination, decode_section(b"".join(bytes(p) for p in parts)))
    assert destination.memory.populated(BASE, 64).tolist() == expected.tolist()
    page = np.empty((1, 4096), np.uint8)
    destination.memory.read_pages(BASE, np.array([50]), page)
    assert not page.any()


@pytest.mark.parametrize("per_page_calls", [1, PAGES], ids=["run-tags", "window-tags"])
def test_a_fresh_destination_writes_no_zero_tags_unless_it_gave_the_page_others(
    per_page_calls: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: pre-copy passes reach a destination that has not run (FreshTags).
    Pages whose tags are all 0 get no tag write (they read as 0 already); pages with
    tags get them; a page retagged to 0 in a later pass gets its zeros. After every
    pass the destination's tags are the source's."""
    monkeypatch.setattr(guestpages, "PAGES_PER_TAG_CALL", per_page_calls)
    destination = empty_machine()
    fresh = guestpages.FreshTags(destination)
    written: list[int] = []
    write_tags = destination.tags.write_tags

    def counted(gpa: int, tags: np.ndarray) -> None:
        written.append(tags.size // 256)
        write_tags(gpa, tags)

    monkeypatch.setattr(destination.tags, "write_tags", counted)
    rng = np.random.default_rng(7)
    data = rng.integers(1, 256, (64, 4096), dtype=np.uint8)
    tags = np.zeros((64, 256), np.uint8)
    tags[8:16] = rng.integers(1, 16, (8, 256))
    tags[30] = 9
    # Pages 8 to 15 and 30 need tags, then page 10 its zeros; then page 30 its zeros,
    # but page 10 nothing. A call over the whole span covers pages 8 to 30.
    expected = [23, 23, 23] if per_page_calls == PAGES else [9, 9, 8]
    for retag, pages_written in zip((None, 10, 30), expected, strict=True):
        if retag is not None:
            tags[retag] = 0
        written.clear()
        parts, _ = encode_parts(PageRun(BASE, data, tags))
        section = decode_section(b"".join(bytes(p) for p in parts))
        apply_section(destination, section, fresh=fresh)
        assert np.array_equal(read_run(destination, BASE, 64).tags, tags)
        assert sum(written) == pages_written
    assert np.flatnonzero(fresh.nonzero).tolist() == [
        (BASE - RAM_BASE) // 4096 + page for page in (8, 9, 11, 12, 13, 14, 15)
    ]


def test_only_touched_pages_count_as_populated() -> None:
    """Scenario: a guest's RAM of which a few pages were written: populated() says so,
    and reading scattered pages faults in only those pages."""
    machine = empty_machine()
    machine.memory.write(BASE + 5 * 4096, b"x")
    populated = machine.memory.populated(BASE, 16)
    assert np.flatnonzero(populated).tolist() == [5]
    out = np.empty((2, 4096), np.uint8)
    machine.memory.read_pages(BASE, np.array([5, 9]), out)
    assert out[0, 0] == ord("x")
    assert not out[1].any()
    assert np.flatnonzero(machine.memory.populated(BASE, 16)).tolist() == [5, 9]


def test_scattered_page_writes_land_on_the_right_pages_when_frames_are_not_in_order() -> None:
    """Scenario: guest pages whose host frames were allocated out of order (touched in
    reverse), so no contiguous view exists: gathers and scatters still hit the right
    frames."""
    machine = empty_machine()
    for page in (7, 5, 3, 1):  # each write faults in one page: frames in reverse order
        machine.memory.write(BASE + page * 4096, bytes([page]))
    rows = np.stack([np.full(4096, 40 + p, np.uint8) for p in (1, 3, 5, 7)])
    machine.memory.write_pages(BASE, np.array([1, 3, 5, 7]), rows)
    out = np.empty((4, 4096), np.uint8)
    machine.memory.read_pages(BASE, np.array([1, 3, 5, 7]), out)
    assert out[:, 0].tolist() == [41, 43, 45, 47]
    assert machine.memory.read(BASE + 3 * 4096, 1) == bytes([43])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.booleans(), min_size=1, max_size=200),
    st.integers(1, 64),
    st.integers(0, 50),
    st.integers(0, 20),
)
def test_windows_cover_every_set_bit_once_within_their_limits(
    bits: list[bool], limit: int, max_gap: int, held: int
) -> None:
    mask = np.array(bits)
    windows = list(windows_of(mask, limit, max_gap, held))
    covered = np.zeros(mask.size, int)
    for first, count in windows:
        assert 0 < count <= limit
        assert mask[first]
        assert mask[first + count - 1]
        inside = mask[first : first + count]
        if held:
            assert inside.sum() <= held
        if max_gap:
            gaps = np.diff(np.flatnonzero(inside)) - 1
            assert (gaps < max_gap).all()
        covered[first : first + count] += inside
    assert covered.tolist() == mask.astype(int).tolist()
    if not max_gap and not held:
        assert windows == list(runs_of(mask, limit))


def test_a_first_pass_window_leaves_out_zero_pages_without_copying_them() -> None:
    """Scenario: a live window of 64 pages, all with memory behind them (as a first
    pass finds memory the host gave in huge pages): pages 10 to 29 hold data, page 40
    is zero with tags, the rest are zero. With leave_out_zero the run holds just the 21
    pages with data or tags, each with its own data and tags."""
    machine = empty_machine()
    machine.memory.write(BASE, bytes(64 * 4096))  # memory behind every page, in order
    rng = np.random.default_rng(9)
    data = rng.integers(1, 256, (20, 4096), dtype=np.uint8)
    machine.memory.write(BASE + 10 * 4096, data.tobytes())
    tags = np.full(256, 3, np.uint8)
    machine.tags.write_tags(BASE + 40 * 4096, tags)
    assert machine.memory.mapped_view(BASE, 64 * 4096) is not None
    run = read_window(machine, BASE, 64, live=True, leave_out_zero=True)
    assert run.pages is not None
    assert run.pages.tolist() == [*range(10, 30), 40]
    assert run.window == 64
    assert np.array_equal(run.data[:20], data)
    assert not run.data[20].any()
    assert np.array_equal(run.tags[20], tags)
    assert not run.tags[:20].any()
    # Without it, the same window comes whole.
    assert read_window(machine, BASE, 64, live=True).count == 64
