"""The destination's pre-faulting thread: ahead of the allocator, bounded, invisible;
and the page count in HELO that bounds it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.host.frames import FIRST_FRAME, FrameTable
from tagvisor.host.prefault import CHUNK_FRAMES, Prefaulter, available
from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import protocol
from tagvisor.snapshot.container import FormatError
from tagvisor.snapshot.state import MachineState, capture_machine
from tagvisor.vmm import MachineBuilder
from tests.migration.churner import churner
from tests.support.resident import resident

needs_populate = pytest.mark.skipif(not available(), reason="no MADV_POPULATE_WRITE here")


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


@needs_populate
def test_it_stays_a_bounded_distance_ahead_of_the_allocator() -> None:
    """Scenario: a fresh frame table; the thread populates the frames the allocator
    hands out next, stops ``ahead`` frames beyond the last one handed out, and goes
    on as more are handed out; what it populated still reads as zeros."""
    frames = FrameTable(16 * CHUNK_FRAMES)
    ahead = 2 * CHUNK_FRAMES
    prefaulter = Prefaulter(frames, limit=frames.nframes, ahead=ahead).start()
    try:
        wait_for(lambda: prefaulter.populated >= ahead)
        time.sleep(0.05)  # it must not run further
        assert prefaulter.populated == ahead
        assert resident(frames.data[FIRST_FRAME : FIRST_FRAME + ahead]).all()
        assert not resident(frames.data[FIRST_FRAME + 2 * ahead :]).any()

        # The stream takes frames, beyond what the thread did: it skips to the
        # frontier and runs ahead of it again.
        taken = 3 * CHUNK_FRAMES
        frames.alloc(taken)
        wait_for(lambda: prefaulter.populated >= 2 * ahead)
        time.sleep(0.05)
        assert prefaulter.populated == 2 * ahead
        first = FIRST_FRAME + taken
        assert resident(frames.data[first : first + ahead]).all()
        assert not resident(frames.data[first + 2 * ahead :]).any()
    finally:
        prefaulter.stop(wait=True)
    assert not frames.data.any()
    assert not frames.packed_pages.any()


@needs_populate
def test_it_populates_no_more_than_its_limit_and_stops_when_told() -> None:
    """Scenario: ``limit`` frames from the first never-used one, however far ahead it
    may run; and a thread told to stop stops."""
    frames = FrameTable(16 * CHUNK_FRAMES)
    frames.alloc(10 * CHUNK_FRAMES)  # handed out already: populated from here on
    prefaulter = Prefaulter(frames, limit=CHUNK_FRAMES + 3, ahead=frames.nframes).start()
    wait_for(lambda: not prefaulter._thread.is_alive())
    assert prefaulter.populated == CHUNK_FRAMES + 3
    first = FIRST_FRAME + 10 * CHUNK_FRAMES
    assert not resident(frames.data[:first]).any()
    assert resident(frames.data[first : first + CHUNK_FRAMES + 3]).all()

    stopped = Prefaulter(FrameTable(16 * CHUNK_FRAMES), limit=1 << 20, ahead=PAGE_SIZE).start()
    stopped.stop(wait=True)
    assert not stopped._thread.is_alive()


def test_without_a_frame_table_it_does_nothing() -> None:
    prefaulter = Prefaulter(None, limit=1 << 20).start()
    assert not prefaulter._thread.is_alive()
    prefaulter.stop(wait=True)


def hello_machine() -> MachineState:
    machine = MachineBuilder(ModelKvm(64 << 20)).memory(32 << 20).python_guest(churner(1)).build()
    return capture_machine(machine)


def test_the_hello_carries_the_first_pass_page_count_as_a_hint() -> None:
    state = hello_machine()
    assert protocol.Hello.decode(protocol.Hello(state, False, 1234).encode()).pages == 1234
    assert protocol.Hello.decode(protocol.Hello(state, False).encode()).pages is None


@pytest.mark.parametrize("pages", [-1, "12", True, 1.5, [3]])
def test_a_hello_with_a_page_count_that_is_not_a_count_is_malformed(pages: object) -> None:
    raw = json.loads(protocol.Hello(hello_machine(), False).encode())
    raw["pages"] = pages
    with pytest.raises(FormatError, match="page count"):
        protocol.Hello.decode(json.dumps(raw).encode())
