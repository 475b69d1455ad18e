"""Snapshots that lie: a reader refuses them before building anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GuestProgram
from tagvisor.snapshot import FormatError, SnapshotError, read_snapshot, save_snapshot
from tagvisor.snapshot import pages as page_codec
from tagvisor.snapshot.container import write_header, write_section
from tagvisor.snapshot.pages import PageRun
from tagvisor.snapshot.snapshot import MAGIC
from tagvisor.vmm import Machine, MachineBuilder
from tests.snapshot.resumable import resumable
from tests.snapshot.test_registry import rewrite, sections_of


def paused(steps: int = 4) -> Machine:
    program: GuestProgram = resumable(steps)  # type: ignore[assignment]
    machine = MachineBuilder(ModelKvm(96 << 20)).memory(16 << 20).python_guest(program).build()
    machine.run(max_exits=2)
    return machine


def test_pages_that_do_not_match_the_digest_are_refused(tmp_path: Path) -> None:
    """Scenario: one byte of one stored page is changed and that section's checksum
    recomputed, so the container alone cannot tell. The digest recomputed from the
    pages no longer matches END!'s, and read_snapshot refuses the file."""
    good = tmp_path / "good.snap"
    save_snapshot(paused(), good)
    version, sections = sections_of(good)
    first = next(index for index, (tag, _) in enumerate(sections) if tag == b"PAGE")
    run = page_codec.decode(sections[first][1])
    data = run.data.copy()
    data[0, 0] ^= 0xFF
    forged, _ = page_codec.encode_parts(PageRun(run.gpa, data, run.tags))
    sections[first] = (b"PAGE", b"".join(bytes(part) for part in forged))
    bad = tmp_path / "bad.snap"
    with bad.open("wb") as out:
        write_header(out, MAGIC, version)
        for tag, payload in sections:
            write_section(out, tag, payload)
    with pytest.raises(FormatError, match="digest"):
        read_snapshot(bad)
    assert read_snapshot(good).digest


def test_pages_out_of_order_are_refused(tmp_path: Path) -> None:
    """Scenario: the same page stored twice (a second PAGE section repeating the
    first): the reader cannot say which is the guest's, so it refuses."""
    good = tmp_path / "good.snap"
    save_snapshot(paused(), good)
    _, sections = sections_of(good)
    first = next(payload for tag, payload in sections if tag == b"PAGE")
    bad = tmp_path / "twice.snap"
    rewrite(good, bad, {b"PAGE": [(b"PAGE", first), (b"PAGE", first)]})
    with pytest.raises(FormatError, match=r"out of order|overlaps"):
        read_snapshot(bad)


def test_a_guest_that_has_stopped_is_not_snapshotted(tmp_path: Path) -> None:
    """Scenario: the guest ran to its power-off. A snapshot of it would restore a
    guest that never runs again (it used to spin), so save_snapshot refuses and
    writes nothing."""
    machine = paused(steps=1)
    machine.run()
    with pytest.raises(SnapshotError, match="stopped"):
        save_snapshot(machine, tmp_path / "off.snap")
    assert not list(tmp_path.iterdir())


def test_a_summary_that_is_not_json_text_is_a_format_error(tmp_path: Path) -> None:
    """Scenario: END! holds a lone surrogate and a 5000-digit number: FormatError."""
    good = tmp_path / "good.snap"
    save_snapshot(paused(), good)
    summary = b'{"digest": "\\ud800", "pages_stored": ' + b"1" * 5000 + b"}"
    bad = tmp_path / "bad.snap"
    rewrite(good, bad, {b"END!": [(b"END!", summary)]})
    with pytest.raises(FormatError):
        read_snapshot(bad)
    assert json.loads(dict(sections_of(good)[1])[b"END!"])["pages_stored"] > 0
