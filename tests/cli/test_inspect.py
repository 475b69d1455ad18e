"""`tagvisor inspect`: what a snapshot or a captured migration stream holds."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.cli.errors import Exit
from tagvisor.cli.inspect import MAP_WIDTH, PALETTE, SCALE
from tagvisor.cli.main import main
from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import protocol
from tagvisor.snapshot import pages, save_snapshot
from tagvisor.snapshot.container import END_TAG, write_header, write_section
from tagvisor.snapshot.pages import PageRun
from tagvisor.vmm import MachineBuilder
from tests.migration.churner import churner

RAM_BASE = 0x4000_0000


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A snapshot of a guest that tagged memory; (path, pages stored)."""
    machine = MachineBuilder(ModelKvm(96 << 20)).memory(8 << 20).python_guest(churner(3)).build()
    machine.run(max_exits=3)
    path = tmp_path_factory.mktemp("inspect") / "vm.snap"
    report = save_snapshot(machine, path)
    return path, report.stats.pages - report.stats.zero_pages


def _pixels(png: bytes) -> np.ndarray:
    """The RGB pixels of a PNG written by tagvisor.cli.png (no filters, one IDAT)."""
    width, height = struct.unpack(">II", png[16:24])
    start = png.index(b"IDAT") + 4
    length = struct.unpack(">I", png[start - 8 : start - 4])[0]
    rows = np.frombuffer(zlib.decompress(png[start : start + length]), np.uint8)
    return rows.reshape(height, 1 + width * 3)[:, 1:].reshape(height, width, 3)


def test_a_snapshot_is_counted_section_by_section_with_a_tag_histogram(
    snapshot: tuple[Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: `inspect vm.snap --json`: the pages stored are the snapshot's own,
    the histogram counts each of their 256 granules once, and the sections include
    CONF, VCPU, PAGE and END!."""
    path, stored = snapshot
    assert main(["inspect", str(path), "--json"]) == 0
    value = json.loads(capsys.readouterr().out)
    assert value["kind"] == "snapshot"
    assert value["pages_stored"] == stored
    assert sum(value["tag_histogram"]) == stored * (PAGE_SIZE // 16)
    assert sum(value["tag_histogram"][1:]) > 0  # the guest tagged memory
    assert {"CONF", "VCPU", "PAGE", "END!"} <= value["sections"].keys()


def test_plot_writes_a_png_with_a_pixel_block_per_page_in_its_tag_colour(
    snapshot: tuple[Path, int], tmp_path: Path
) -> None:
    """Scenario: `inspect vm.snap --plot tags.png`: a PNG MAP_WIDTH pages wide and as
    many rows as the RAM needs; the first stored page is drawn in its tag's colour,
    the last page (never touched, not stored) in black."""
    path, _ = snapshot
    plot = tmp_path / "tags.png"
    assert main(["inspect", str(path), "--plot", str(plot)]) == 0
    pixels = _pixels(plot.read_bytes())
    pages_in_ram = (8 << 20) // PAGE_SIZE
    assert pixels.shape == (pages_in_ram // MAP_WIDTH * SCALE, MAP_WIDTH * SCALE, 3)
    assert (pixels[-1, -1] == 0).all()
    assert (pixels != 0).any()
    colours = {tuple(colour) for colour in PALETTE}
    assert {tuple(p) for p in pixels.reshape(-1, 3)} <= colours | {(0, 0, 0)}


def _stream(path: Path, *, end: bool) -> None:
    """A source's stream as captured: HEADER, HELO, the same page in two passes (tag 3
    then tag 9), then END! (unless the capture was cut)."""
    with path.open("wb") as sink:
        write_header(sink, protocol.MAGIC, protocol.VERSION)
        write_section(sink, b"HELO", b"{}")
        for tag in (3, 9):
            data = np.full((1, PAGE_SIZE), 0x5A, np.uint8)
            tags = np.full((1, PAGE_SIZE // 16), tag, np.uint8)
            payload, _ = pages.encode(PageRun(RAM_BASE, data, tags))
            write_section(sink, b"PAGE", payload)
        if end:
            write_section(sink, END_TAG, b"{}")


def test_a_captured_stream_counts_a_resent_page_once_with_its_last_tags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: a stream that sent one page twice: one page stored, all 256 of its
    granules tag 9, two PAGE sections, and the stream is complete."""
    path = tmp_path / "stream.bin"
    _stream(path, end=True)
    assert main(["inspect", str(path), "--json"]) == 0
    value = json.loads(capsys.readouterr().out)
    assert value["kind"] == "migration stream"
    assert value["complete"]
    assert value["sections"]["PAGE"] == 2
    assert value["pages_stored"] == 1
    assert value["tag_histogram"][9] == PAGE_SIZE // 16


def test_a_cut_capture_is_read_as_far_as_it_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: the capture ends before END!: what it holds is counted, and the
    census says the stream stops early."""
    path = tmp_path / "cut.bin"
    _stream(path, end=False)
    assert main(["inspect", str(path), "--json"]) == 0
    value = json.loads(capsys.readouterr().out)
    assert not value["complete"]
    assert value["pages_stored"] == 1
    assert "stops early" in value["notes"][0]


def test_a_foreign_file_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: `inspect notes.txt`: exit 1, 'neither a tagvisor snapshot nor a
    migration stream', no traceback."""
    path = tmp_path / "notes.txt"
    path.write_text("hello, world")
    assert main(["inspect", str(path)]) == Exit.FAILED
    err = capsys.readouterr().err
    assert "neither a tagvisor snapshot nor a migration stream" in err
    assert "Traceback" not in err
