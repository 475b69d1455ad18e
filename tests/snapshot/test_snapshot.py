"""Snapshots keep every tag; restore writes them before the guest runs."""

import struct
from pathlib import Path

import numpy as np
import pytest

from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GuestProgram
from tagvisor.snapshot import FormatError, read_snapshot, restore_snapshot, save_snapshot
from tagvisor.snapshot.guestpages import memory_digest
from tagvisor.vmm import Machine, MachineBuilder
from tests.snapshot.resumable import FAULTED, resumable

RAM = 16 << 20
PAGE_SIZE = 4096


def booted(steps: int = 4, *, mte: bool = True, run_exits: int = 2) -> Machine:
    program: GuestProgram = resumable(steps)  # type: ignore[assignment]
    machine = MachineBuilder(ModelKvm(96 << 20)).memory(RAM).mte(mte).python_guest(program).build()
    machine.run(max_exits=run_exits)
    return machine


def resume(machine: Machine, steps: int = 4) -> list[tuple[int, ...]]:
    """Attach the same guest code and run to the end; return the SYNC reports."""
    program: GuestProgram = resumable(steps)  # type: ignore[assignment]
    from tagvisor.kvm.model.guest import GeneratorGuest

    machine.vcpus[0].attach(GeneratorGuest(program))  # type: ignore[attr-defined]
    machine.run()
    return [c.args for c in machine.ucall.calls if c.cmd.name == "SYNC"]


def test_restore_gives_identical_memory_and_tags_and_the_guest_carries_on(tmp_path: Path) -> None:
    """Scenario: a guest tags a heap and runs two steps; snapshot; restore on a new host.

    The restored machine's memory and tags digest equal the original's at the moment
    it stopped, and the guest's later steps still find its tags (no fault).
    """
    machine = booted()
    before = memory_digest(machine)
    report = save_snapshot(machine, tmp_path / "vm.snap")
    assert report.digest == before
    restored = restore_snapshot(tmp_path / "vm.snap", ModelKvm(96 << 20))
    assert memory_digest(restored) == before
    reports = resume(restored)
    assert reports == [(1, 1), (2, 1), (3, 1), (4, 1)]


def test_restore_gives_memory_only_to_the_pages_that_hold_something(tmp_path: Path) -> None:
    """Scenario: a guest whose RAM is mostly zero, with a few pages zeroed after they
    had data (populated, zero) and one zero page with tags. After the restore the
    zero pages have no memory behind them, no zero tag was written, and the digest of
    memory and tags is the original's."""
    machine = booted()
    base = machine.config.ram_base + (8 << 20)
    machine.memory.write(base, b"\0" * 4 * PAGE_SIZE)  # populated, zero
    machine.tags.write_tags(base + 5 * PAGE_SIZE, np.full(256, 7, np.uint8))  # zero data, tags
    populated = int(machine.memory.populated(machine.config.ram_base, RAM // PAGE_SIZE).sum())
    before = memory_digest(machine)
    save_snapshot(machine, tmp_path / "vm.snap")
    restored = restore_snapshot(tmp_path / "vm.snap", ModelKvm(96 << 20))
    after = restored.memory.populated(restored.config.ram_base, RAM // PAGE_SIZE)
    assert memory_digest(restored) == before
    assert int(after.sum()) <= populated - 4
    window = after[(8 << 20) // PAGE_SIZE : (8 << 20) // PAGE_SIZE + 6]
    assert window.tolist() == [False] * 5 + [True]


def test_restore_without_writing_tags_makes_the_guest_fault_on_its_own_pointers(
    tmp_path: Path,
) -> None:
    """Scenario: the same snapshot restored with data only (what a VMM that ignores MTE
    does, e.g. crosvm's snapshots). The guest's first touch clears every tag, so its own
    valid pointer now faults: the step after restore reports FAULTED."""
    save_snapshot(booted(), tmp_path / "vm.snap")
    broken = restore_snapshot(tmp_path / "vm.snap", ModelKvm(96 << 20), with_tags=False)
    reports = resume(broken)
    assert reports[-1] == (4, FAULTED)
    assert (3, FAULTED) in reports


def test_save_load_save_gives_the_same_bytes(tmp_path: Path) -> None:
    """Scenario: snapshot, restore, snapshot again without running: identical files."""
    save_snapshot(booted(), tmp_path / "a.snap")
    restored = restore_snapshot(tmp_path / "a.snap", ModelKvm(96 << 20))
    save_snapshot(restored, tmp_path / "b.snap")
    assert (tmp_path / "a.snap").read_bytes() == (tmp_path / "b.snap").read_bytes()


def test_sparse_storage_and_tag_cost(tmp_path: Path) -> None:
    """Scenario: 16 MiB guest with a 512 KiB tagged heap: only non-zero pages are stored
    (fewer than 200 of 4096) and tags cost at most 1/32 of the stored page bytes."""
    report = save_snapshot(booted(), tmp_path / "vm.snap")
    snapshot = read_snapshot(tmp_path / "vm.snap")
    assert snapshot.pages_stored < 200
    assert report.stats.tag_bytes <= report.stats.data_bytes / 32
    assert report.file_bytes < 1 << 20


def test_vcpu_state_keeps_the_mte_registers(tmp_path: Path) -> None:
    """Scenario: the guest set GCR/RGSR/TFSR; the snapshot's VCPU section has them."""
    from tagvisor.kvm.uapi import GCR_EL1, RGSR_EL1, TFSR_EL1, TFSRE0_EL1

    machine = booted()
    save_snapshot(machine, tmp_path / "vm.snap")
    registers = dict(read_snapshot(tmp_path / "vm.snap").vcpus[0].registers)
    for reg in (GCR_EL1, RGSR_EL1, TFSR_EL1, TFSRE0_EL1):
        assert registers[reg] == machine.vcpus[0].get_one_reg(reg)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-5], "ends inside"),
        (lambda b: b[:40] + bytes([b[40] ^ 0x40]) + b[41:], "checksum"),
        (lambda b: b[:30] + bytes([b[30] ^ 0x40]) + b[31:], "more than the 65536 allowed"),
        (lambda b: b"NOTASNAP" + b[8:], "not a tagvisor"),
        (lambda b: b[:8] + struct.pack("<H", 9) + b[10:], r"checksum|version 9"),
    ],
    ids=["truncated", "flipped bit", "huge length", "foreign", "future version"],
)
def test_damaged_snapshots_are_refused_before_anything_is_built(
    tmp_path: Path, damage: object, message: str
) -> None:
    """Scenario: a snapshot truncated, corrupted, foreign or from a future version.

    read_snapshot and restore_snapshot stop with a FormatError naming the problem, and
    the host gets no new VM (no frames were allocated)."""
    assert callable(damage)
    save_snapshot(booted(), tmp_path / "vm.snap")
    bad = tmp_path / "bad.snap"
    bad.write_bytes(damage((tmp_path / "vm.snap").read_bytes()))
    kvm = ModelKvm(96 << 20)
    with pytest.raises(FormatError, match=message):
        restore_snapshot(bad, kvm)
    assert not kvm.frames.in_use.any()


def test_snapshot_of_a_running_machine_is_refused(tmp_path: Path) -> None:
    """Scenario: save_snapshot while the machine's state is RUNNING."""
    from tagvisor.snapshot import SnapshotError
    from tagvisor.vmm import RunState

    machine = booted()
    machine.state = RunState.RUNNING
    with pytest.raises(SnapshotError, match="pause"):
        save_snapshot(machine, tmp_path / "vm.snap")
