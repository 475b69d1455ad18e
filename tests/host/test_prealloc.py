"""Preallocated host memory: faulted in ahead, unchanged for the model, and left alone
by the destination's pre-faulting thread."""

from __future__ import annotations

import time

import numpy as np
import pytest

import tagvisor.host.populate as populating
from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.cli.main import main
from tagvisor.host.frames import FIRST_FRAME, FrameTable
from tagvisor.host.prefault import CHUNK_FRAMES, Prefaulter
from tagvisor.kvm.model import ModelKvm
from tagvisor.vmm import MachineBuilder
from tagvisor.vmm.builder import RAM_BASE
from tests.migration.churner import churner
from tests.support.resident import resident


def test_a_preallocated_host_has_its_lowest_frames_in_memory_and_still_zero() -> None:
    """Scenario: a 64 MiB model host told to preallocate 16 MiB.

    The lowest 4096 frames, data and tags, are in memory before any VM exists; the
    frames above them are not; every frame still reads as zeros with zero tags, none
    is allocated, and a guest built on the host finds its RAM zeroed beyond the boot
    block, as on any other host."""
    kvm = ModelKvm(host_memory=64 << 20, prealloc=16 << 20)
    frames = kvm.process.frames
    assert frames.backed == FIRST_FRAME + (16 << 20) // PAGE_SIZE
    assert resident(frames.data[FIRST_FRAME : frames.backed]).all()
    assert resident(frames.packed_pages[FIRST_FRAME : frames.backed]).all()
    assert not resident(frames.data[2 * frames.backed :]).any()
    assert not frames.data.any()
    assert not frames.packed_pages.any()
    assert not frames.in_use.any()

    machine = MachineBuilder(kvm).memory(8 << 20).python_guest(churner(1)).build()
    beyond_boot_block = RAM_BASE + (64 << 10)
    assert not machine.memory.view(beyond_boot_block, (8 << 20) - (64 << 10)).any()


def test_without_madvise_prealloc_touches_each_page_and_changes_no_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scenario: a kernel older than 5.14 (no MADV_POPULATE_WRITE).

    Preallocating writes each page's first byte back to itself instead: the pages
    come into memory, and a frame that already held data keeps it."""
    monkeypatch.setattr(populating, "populate_range", lambda address, length: False)
    frames = FrameTable(256)
    frames.data[3, 100] = 0x5A
    frames.prealloc(128)
    assert frames.backed == FIRST_FRAME + 128
    assert resident(frames.data[FIRST_FRAME : frames.backed]).all()
    assert int(frames.data[3, 100]) == 0x5A
    assert int(np.count_nonzero(frames.data)) == 1


def test_preallocating_again_or_beyond_the_host_is_bounded() -> None:
    """Scenario: prealloc asked twice, then for more frames than the host has: the
    mark only rises, and never past the host's last frame."""
    frames = FrameTable(64)
    frames.prealloc(16)
    frames.prealloc(8)
    assert frames.backed == FIRST_FRAME + 16
    frames.prealloc(1 << 20)
    assert frames.backed == FIRST_FRAME + 64 == frames.nframes


@pytest.mark.skipif(not populating.available(), reason="no MADV_POPULATE_WRITE here")
def test_the_prefaulter_starts_above_what_was_preallocated() -> None:
    """Scenario: a destination host with 4 chunks preallocated and a pre-faulting
    thread allowed 2 chunks ahead of the allocator.

    While the stream is far below the preallocated mark the thread faults in
    nothing; once the stream comes within 2 chunks of the mark it faults in only
    frames above it."""
    frames = FrameTable(16 * CHUNK_FRAMES)
    frames.prealloc(4 * CHUNK_FRAMES)
    prefaulter = Prefaulter(frames, limit=frames.nframes, ahead=2 * CHUNK_FRAMES).start()
    try:
        time.sleep(0.05)
        assert prefaulter.populated == 0
        frames.alloc(3 * CHUNK_FRAMES)
        deadline = time.monotonic() + 10
        while prefaulter.populated < CHUNK_FRAMES and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # it must not run further
        assert prefaulter.populated == CHUNK_FRAMES
        assert resident(frames.data[4 * CHUNK_FRAMES : 5 * CHUNK_FRAMES]).all()
        assert not resident(frames.data[6 * CHUNK_FRAMES :]).any()
    finally:
        prefaulter.stop(wait=True)


def test_incoming_refuses_to_preallocate_more_than_it_accepts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Scenario: ``tagvisor incoming --prealloc 2G --max-mem 1G``: an error that says
    which limit to change, before anything is allocated or listened on."""
    assert (
        main(["incoming", "--prealloc", "2G", "--max-mem", "1G", "--listen", "tcp:127.0.0.1:0"])
        == 1
    )
    error = capsys.readouterr().err
    assert "--prealloc" in error
    assert "--max-mem" in error
