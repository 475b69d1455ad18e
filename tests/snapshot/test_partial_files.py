"""A snapshot that cannot be finished leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

import tagvisor.snapshot.snapshot as snapshots
from tagvisor.kvm.model import ModelKvm
from tagvisor.snapshot import save_snapshot
from tagvisor.vmm import MachineBuilder
from tests.migration.churner import churner


def test_an_interrupted_snapshot_leaves_no_partial_file_and_no_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: Ctrl-C arrives while the pages are written: KeyboardInterrupt goes
    on to the caller, and neither the snapshot nor its .partial file exists."""
    machine = MachineBuilder(ModelKvm(96 << 20)).memory(8 << 20).python_guest(churner(2)).build()
    machine.run(max_exits=2)

    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(snapshots, "_write_nonzero", interrupted)
    target = tmp_path / "vm.snap"
    with pytest.raises(KeyboardInterrupt):
        save_snapshot(machine, target)
    assert list(tmp_path.iterdir()) == []
