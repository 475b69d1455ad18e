"""A Linux machine's snapshot carries its in-kernel GIC (GIC3) and each VCPU's power
state (MPST), checked field by field on the way in.

A real KVM is needed to run Linux; here the model is given a GIC that remembers what
it is told (tests.vmm.linux.test_linux_builder), so the sections' contents, their
order on restore and their checks can be tested anywhere. The testbed's oracle test
(tests/linux/test_linux_guest.py) restores a running Debian guest with them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.uapi import KVM_DEV_ARM_VGIC_GRP_DIST_REGS, MpState
from tagvisor.migration.destination import refusal
from tagvisor.snapshot import FormatError, read_snapshot, restore_snapshot, save_snapshot
from tagvisor.snapshot.snapshot import SnapshotError
from tagvisor.snapshot.state import MachineState, capture_machine
from tagvisor.vmm import Machine, MachineBuilder
from tagvisor.vmm.linux.gic_state import GICD_CTLR, GICD_ISENABLER
from tests.snapshot.test_registry import rewrite, sections_of
from tests.vmm.linux.test_linux_builder import GicKvm, files, gic_log

__all__ = ["gic_log"]  # the fixture, used by name

#: GICD_ISENABLER for SPIs 32-63 (the UART's SPI 1 is INTID 33).
SPI_ENABLE = GICD_ISENABLER + 4


def linux_machine(tmp_path: Path) -> Machine:
    """A 2-VCPU Linux machine whose guest has enabled the distributor and SPI 1 and
    started VCPU 1 through PSCI (RUNNABLE)."""
    kernel, initrd = files(tmp_path)
    machine = (
        MachineBuilder(GicKvm(host_memory=256 << 20))
        .memory(64 << 20)
        .vcpus(2)
        .linux(kernel, initrd)
        .build()
    )
    assert machine.irqchip is not None
    dist = KVM_DEV_ARM_VGIC_GRP_DIST_REGS
    machine.irqchip.set_device_attr(dist, GICD_CTLR, (0x12).to_bytes(4, "little"))
    machine.irqchip.set_device_attr(dist, SPI_ENABLE, (1 << 1).to_bytes(4, "little"))
    machine.vcpus[1].set_mp_state(MpState.RUNNABLE)
    return machine


def test_a_linux_snapshot_restores_its_gic_in_order_and_its_power_states(
    tmp_path: Path, gic_log: list[tuple[Any, ...]]
) -> None:
    """Scenario: snapshot a 2-VCPU Linux machine and restore it on a KVM with an
    irqchip. The file says irqchip gicv3 and has GIC3 and MPST; the new GIC is written
    every saved register, in the saved order, with GICD_CTLR and the SPI enable as the
    guest left them; VCPU 1 is RUNNABLE again (the builder starts it powered off)."""
    path = tmp_path / "linux.snap"
    save_snapshot(linux_machine(tmp_path), path)
    snapshot = read_snapshot(path)
    assert snapshot.machine.config.irqchip == "gicv3"
    assert snapshot.loaded.gic is not None
    assert snapshot.loaded.mp_states is not None
    saved = snapshot.loaded.gic.registers
    assert snapshot.machine.config.gic_irqs == 64
    assert len(saved) == 133  # as real KVM's GIC of 2 VCPUs and 64 INTIDs (docs)
    gic_log.clear()
    restored = restore_snapshot(path, GicKvm(host_memory=256 << 20))
    written = [(e[1], e[2], int.from_bytes(e[3], "little")) for e in gic_log if e[0] == "attr"]
    assert [entry for entry in written if entry in set(saved)][-len(saved) :] == list(saved)
    assert (KVM_DEV_ARM_VGIC_GRP_DIST_REGS, GICD_CTLR, 0x12) in saved
    assert (KVM_DEV_ARM_VGIC_GRP_DIST_REGS, SPI_ENABLE, 2) in saved
    assert [vcpu.get_mp_state() for vcpu in restored.vcpus] == [MpState.RUNNABLE] * 2


def test_a_linux_snapshot_is_refused_where_kvm_has_no_irqchip(
    tmp_path: Path, gic_log: list[tuple[Any, ...]]
) -> None:
    """Scenario: restore that snapshot on the plain model (KVM_CAP_IRQCHIP 0), and
    offer its shape to a migration destination there: both refuse, naming the missing
    in-kernel interrupt controller, before any VM exists."""
    path = tmp_path / "linux.snap"
    machine = linux_machine(tmp_path)
    save_snapshot(machine, path)
    with pytest.raises(SnapshotError, match=r"KVM_CAP_IRQCHIP is 0"):
        restore_snapshot(path, ModelKvm(256 << 20))
    reason = refusal(
        capture_machine(machine), ModelKvm(256 << 20), max_memory=1 << 30, require_mte=None
    )
    assert reason is not None
    assert "KVM_CAP_IRQCHIP" in reason


def _edited(tmp_path: Path, name: str, edit: dict[bytes, list[tuple[bytes, bytes]]]) -> Path:
    source = tmp_path / "linux.snap"
    if not source.exists():
        save_snapshot(linux_machine(tmp_path), source)
    target = tmp_path / f"{name}.snap"
    rewrite(source, target, edit)
    return target


def test_hostile_gic_and_power_state_sections_are_refused(
    tmp_path: Path, gic_log: list[tuple[Any, ...]]
) -> None:
    """Scenario: the Linux snapshot edited by hand, one fault each: a GIC register
    that is not a triple, one too wide for its 32 bits, one missing, one extra, the
    state version 2, GIC3 twice, GIC3 or MPST missing, a power state KVM does not
    have, power states for 3 VCPUs of 2; and a GIC register value that is a bool, a
    float, negative, past 64 bits, a string, a list, NaN, 5000 digits, or a section
    nested 100,000 deep (the GIC's decoder checks those itself, with builtins). Each
    fails as a FormatError that names it, before anything is built."""
    _, sections = sections_of(_edited(tmp_path, "copy", {}))
    gic = json.loads(dict(sections)[b"GIC3"])
    mpst = dict(sections)[b"MPST"]

    def gic_with(**change: Any) -> bytes:
        return json.dumps({**gic, **change}).encode()

    regs = gic["registers"]
    too_wide = [[*regs[0][:2], 1 << 32], *regs[1:]]
    cases: list[tuple[dict[bytes, list[tuple[bytes, bytes]]], str]] = [
        ({b"GIC3": [(b"GIC3", gic_with(registers=[[1, 2], *regs[1:]]))]}, "not \\[group"),
        ({b"GIC3": [(b"GIC3", gic_with(registers=too_wide))]}, "too wide"),
        ({b"GIC3": [(b"GIC3", gic_with(registers=regs[:-1]))]}, "not those of a GICv3"),
        ({b"GIC3": [(b"GIC3", gic_with(registers=[*regs, regs[-1]]))]}, "not those of"),
        ({b"GIC3": [(b"GIC3", gic_with(version=2))]}, "GIC3 state version 2"),
        ({b"GIC3": [(b"GIC3", gic_with()), (b"GIC3", gic_with())]}, "given twice"),
        ({b"GIC3": []}, "GIC3\\) is missing"),
        ({b"MPST": []}, "MPST\\) is missing"),
        ({b"MPST": [(b"MPST", b'{"version": 1, "states": [0, 7]}')]}, "power state is not"),
        ({b"MPST": [(b"MPST", b'{"version": 1, "states": [0, 0, 0]}')]}, "for 3 VCPUs"),
        # What wire.loads would refuse in Python, which the GIC's decoder checks itself.
        ({b"GIC3": [(b"GIC3", gic_with(registers=[[1, 2, True], *regs[1:]]))]}, "not \\[group"),
        ({b"GIC3": [(b"GIC3", gic_with(registers=[[1, 2, 1.5], *regs[1:]]))]}, "not \\[group"),
        ({b"GIC3": [(b"GIC3", gic_with(registers=[[1, 2, -1], *regs[1:]]))]}, "not \\[group"),
        ({b"GIC3": [(b"GIC3", gic_with(registers=[[1, 2, 10**30], *regs[1:]]))]}, "not \\[group"),
        ({b"GIC3": [(b"GIC3", gic_with(registers=[[1, 2, "7"], *regs[1:]]))]}, "not \\[group"),
        ({b"GIC3": [(b"GIC3", gic_with(registers=[[1, 2, [3]], *regs[1:]]))]}, "not \\[group"),
        ({b"GIC3": [(b"GIC3", b'{"version": 1, "registers": [[1, 2, NaN]]}')]}, "NaN"),
        ({b"GIC3": [(b"GIC3", b'{"registers": ' + b"[" * 100000 + b"]" * 100000 + b"}")]}, "JSON"),
        (
            {b"GIC3": [(b"GIC3", b'{"version": 1, "registers": [[1, 2, ' + b"9" * 5000 + b"]]}")]},
            "JSON",
        ),
    ]
    assert mpst
    for number, (edit, message) in enumerate(cases):
        with pytest.raises(FormatError, match=message):
            read_snapshot(_edited(tmp_path, f"bad{number}", edit))


def test_a_bare_metal_snapshot_has_no_gic_and_reads_as_before(tmp_path: Path) -> None:
    """Scenario: a machine without a GIC: no GIC3 or MPST section, and its CONF has no
    irqchip field (a 1.2 reader's shape); a GIC3 section added to it is refused."""
    from tagvisor.kvm.model.guest import GuestProgram
    from tests.snapshot.resumable import resumable

    program: GuestProgram = resumable(2)  # type: ignore[assignment]
    machine = MachineBuilder(ModelKvm(96 << 20)).memory(16 << 20).python_guest(program).build()
    machine.run(max_exits=2)
    path = tmp_path / "plain.snap"
    save_snapshot(machine, path)
    _, sections = sections_of(path)
    tags = [tag for tag, _ in sections]
    assert b"GIC3" not in tags
    assert b"MPST" not in tags
    conf = json.loads(dict(sections)[b"CONF"])
    assert "irqchip" not in conf["config"]
    assert "gic_irqs" not in conf["config"]
    assert MachineState.decode(dict(sections)[b"CONF"]).config.irqchip == "none"
    bad = tmp_path / "gic.snap"
    gic = b'{"version": 1, "registers": []}'
    rewrite(path, bad, {b"CONF": [(b"CONF", dict(sections)[b"CONF"]), (b"GIC3", gic)]})
    with pytest.raises(FormatError, match="without an in-kernel GIC"):
        read_snapshot(bad)


def test_a_gic_of_an_older_snapshot_has_its_128_interrupts(
    tmp_path: Path, gic_log: list[tuple[Any, ...]]
) -> None:
    """Scenario: a Linux machine's CONF from before the GIC's size was part of the
    shape has irqchip gicv3 and no gic_irqs: it reads as the 128 interrupts machines
    had then, whose GIC3 section must hold that GIC's 291 registers; sizes KVM does
    not take, or a size without a GIC, are refused."""
    path = tmp_path / "linux.snap"
    save_snapshot(linux_machine(tmp_path), path)
    _, sections = sections_of(path)
    conf = json.loads(dict(sections)[b"CONF"])
    assert conf["config"].pop("gic_irqs") == 64
    old = MachineState.decode(json.dumps(conf).encode())
    assert old.config.gic_irqs == 128
    read_conf = read_snapshot(path).machine.config
    assert read_conf.gic_irqs == 64
    for irqs, irqchip in ((100, "gicv3"), (32, "gicv3"), (2048, "gicv3"), (64, "none")):
        conf["config"].update(gic_irqs=irqs, irqchip=irqchip)
        with pytest.raises(FormatError, match="interrupts"):
            MachineState.decode(json.dumps(conf).encode())
    stale = tmp_path / "stale.snap"
    conf["config"].pop("gic_irqs")
    conf["config"]["irqchip"] = "gicv3"
    rewrite(path, stale, {b"CONF": [(b"CONF", json.dumps(conf).encode())]})
    with pytest.raises(FormatError, match="not those of a GICv3"):
        read_snapshot(stale)
