"""The state registry: a device's state is one class and one registration away from
travelling in snapshots and migrations, and old formats stay readable."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GuestProgram
from tagvisor.snapshot import FormatError, read_snapshot, restore_snapshot, save_snapshot
from tagvisor.snapshot.container import (
    END_TAG,
    Version,
    read_header,
    read_section,
    write_header,
    write_section,
)
from tagvisor.snapshot.guestpages import memory_digest
from tagvisor.snapshot.registry import REGISTRY, Phase
from tagvisor.snapshot.snapshot import MAGIC, VERSION
from tagvisor.vmm import Machine, MachineBuilder
from tagvisor.vmm.devices.persist import DeviceKind
from tests.snapshot.resumable import resumable
from tests.support.scratch_device import (
    SCRATCH_BASE,
    ScratchState,
    scratch_registered,
    scratch_value,
)

DATA = Path(__file__).parent / "data"
#: The digest of tests/snapshot/data/resumable-1.1.snap's memory and tags, as the
#: tagvisor that wrote it (format 1.1, before the registry) reported it.
FIXTURE_DIGEST = "768c9772c7651c9a4edddb46bc0b401c2e902f7bf6ae0036673966a05c75d76d"


@pytest.fixture
def scratch_kind() -> Iterator[DeviceKind[ScratchState]]:
    with scratch_registered() as kind:
        yield kind


def with_scratch(value: int) -> Machine:
    program: GuestProgram = resumable(4)  # type: ignore[assignment]
    machine = (
        MachineBuilder(ModelKvm(96 << 20))
        .memory(16 << 20)
        .device("scratch", SCRATCH_BASE)
        .python_guest(program)
        .build()
    )
    machine.run(max_exits=2)
    machine.bus.write(SCRATCH_BASE, value.to_bytes(8, "little"))
    return machine


def test_a_registered_device_travels_in_a_snapshot(
    tmp_path: Path, scratch_kind: DeviceKind[ScratchState]
) -> None:
    """Scenario: a device kind that only this test knows, registered once, on a machine
    whose register holds 0x1234: its restored twin holds 0x1234, and the file has the
    device's own section."""
    save_snapshot(with_scratch(0x1234), tmp_path / "vm.snap")
    restored = restore_snapshot(tmp_path / "vm.snap", ModelKvm(96 << 20))
    assert scratch_value(restored) == 0x1234
    _, sections = sections_of(tmp_path / "vm.snap")
    assert b"SCRT" in [tag for tag, _ in sections]


def test_a_format_1_1_snapshot_restores_with_its_digest_and_the_guest_carries_on(
    tmp_path: Path,
) -> None:
    """Scenario: a snapshot written by tagvisor before the registry (format 1.1, the
    three devices in one DEVS section). It restores with the digest it was written
    with, its ucall log is back, and the guest's later steps find their tags."""
    path = tmp_path / "old.snap"
    shutil.copy(DATA / "resumable-1.1.snap", path)
    assert str(read_snapshot(path).version) == "1.1"
    restored = restore_snapshot(path, ModelKvm(96 << 20))
    assert memory_digest(restored) == FIXTURE_DIGEST
    assert [call.args for call in restored.ucall.calls] == [(1, 1), (2, 1)]
    program: GuestProgram = resumable(4)  # type: ignore[assignment]
    assert restored.vcpus[0].attach_program(program)
    restored.run()
    steps = [call.args for call in restored.ucall.calls if call.cmd.name == "SYNC"]
    assert steps == [(1, 1), (2, 1), (3, 1), (4, 1)]


Edit = dict[bytes, list[tuple[bytes, bytes]]]


def sections_of(path: Path) -> tuple[Version, list[tuple[bytes, bytes]]]:
    """A snapshot's version and every section, verified but not interpreted."""
    with path.open("rb") as source:
        version = read_header(source, MAGIC, VERSION.major)
        sections = []
        while True:
            section = read_section(source, lambda tag: 1 << 30)
            sections.append((section.tag, bytes(section.payload)))
            if section.tag == END_TAG:
                return version, sections


def rewrite(source: Path, target: Path, edit: Edit, version: Version | None = None) -> None:
    """Copy a snapshot section by section (under ``version`` if given); a section whose
    tag is in ``edit`` is replaced by the (tag, payload) sections listed there."""
    found, sections = sections_of(source)
    with target.open("wb") as out:
        write_header(out, MAGIC, version or found)
        for tag, payload in sections:
            for new_tag, new_payload in edit.get(tag, [(tag, payload)]):
                write_section(out, new_tag, new_payload)


def test_a_second_conf_or_a_device_given_twice_is_refused(tmp_path: Path) -> None:
    """Scenario: two snapshots edited by hand: one with its CONF twice (a reader that
    kept the last would build another machine than it verified), one with the console's
    section twice. Both are refused before anything is built."""
    good = tmp_path / "good.snap"
    program: GuestProgram = resumable(2)  # type: ignore[assignment]
    machine = MachineBuilder(ModelKvm(96 << 20)).memory(16 << 20).python_guest(program).build()
    machine.run(max_exits=2)
    save_snapshot(machine, good)
    conf = dict(REGISTRY.save(machine, Phase.SETUP))[b"CONF"]
    uart = dict(REGISTRY.save(machine, Phase.COMPLETE))[b"UART"]
    for tag, payload, message in [(b"CONF", conf, "second CONF"), (b"UART", uart, "twice")]:
        bad = tmp_path / f"{tag.decode()}.snap"
        rewrite(good, bad, {tag: [(tag, payload), (tag, payload)]})
        with pytest.raises(FormatError, match=message):
            read_snapshot(bad)


def test_sections_from_another_format_version_are_refused(tmp_path: Path) -> None:
    """Scenario: a current (1.3) snapshot carrying an old DEVS section, and a 1.1
    snapshot carrying a 1.2 device section: each has no place in its version."""
    old = DATA / "resumable-1.1.snap"
    devs = tmp_path / "devs.snap"
    rewrite(old, devs, {}, VERSION)
    with pytest.raises(FormatError, match=r"no place in format 1\.3"):
        read_snapshot(devs)
    uart = tmp_path / "uart.snap"
    devs_payload = dict(sections_of(old)[1])[b"DEVS"]
    rewrite(old, uart, {b"DEVS": [(b"DEVS", devs_payload), (b"UART", b'{"text":""}')]})
    with pytest.raises(FormatError, match=r"no place in format 1\.1"):
        read_snapshot(uart)


def test_device_state_is_checked_field_by_field() -> None:
    """Scenario: hostile device payloads (a DMA status of 7, a ucall with an unknown
    command, a console that is not text) each fail as a FormatError naming the
    problem, never another exception."""
    from tagvisor.vmm.devices.dma import DmaState
    from tagvisor.vmm.devices.pl011 import ConsoleState
    from tagvisor.vmm.devices.ucall import UcallLog

    with pytest.raises(FormatError, match="status"):
        DmaState.decode(b'{"registers": [0, 0, 0], "status": 7}')
    with pytest.raises(FormatError, match="unknown command"):
        UcallLog.decode(b'{"calls": [[99, [], ""]]}')
    with pytest.raises(FormatError, match="surrogate"):
        ConsoleState.decode(b'{"text": "\\ud800"}')
    with pytest.raises(FormatError, match="digits"):
        DmaState.decode(b'{"registers": [' + b"9" * 5000 + b', 0, 0], "status": 0}')


def test_only_the_id_space_and_the_host_groups_count_as_constant() -> None:
    """Scenario: registers a guest can and cannot write.

    MIDR, ID_AA64PFR1, CLIDR, CTR_EL0 and the firmware pseudo-registers are read ahead
    of a pause; CSSELR (the one writable register in the ID space), SCTLR and the
    core registers are not.
    """
    from tagvisor.kvm.uapi import arm64_core_reg, arm64_sys_reg
    from tagvisor.snapshot.state import constant_register

    fw_psci_version = 0x6030_0000_0014_0000
    for reg in (
        arm64_sys_reg(3, 0, 0, 0, 0),  # MIDR_EL1
        arm64_sys_reg(3, 0, 0, 4, 1),  # ID_AA64PFR1_EL1
        arm64_sys_reg(3, 1, 0, 0, 1),  # CLIDR_EL1
        arm64_sys_reg(3, 3, 0, 0, 1),  # CTR_EL0
        fw_psci_version,
    ):
        assert constant_register(reg), hex(reg)
    for reg in (
        arm64_sys_reg(3, 2, 0, 0, 0),  # CSSELR_EL1
        arm64_sys_reg(3, 0, 1, 0, 0),  # SCTLR_EL1
        arm64_sys_reg(3, 0, 2, 0, 2),  # TCR_EL1
        arm64_core_reg(0),  # X0
    ):
        assert not constant_register(reg), hex(reg)


def test_a_save_after_prepare_reads_only_what_can_change_and_writes_the_same_bytes(
    scratch_kind: DeviceKind[ScratchState],
) -> None:
    """Scenario: a migration's source prepares a machine before its pause, the guest
    runs on, then the machine is saved.

    The save reads no register the preread holds (no ID register, no reg list), and
    its sections are byte for byte those of a save that read everything.
    """
    from tagvisor.snapshot.state import constant_register

    machine = with_scratch(5)
    preread = REGISTRY.prepare(machine)
    assert preread.vcpus is not None
    assert preread.vcpus[0].constants
    machine.run(max_exits=1)
    vcpu = machine.vcpus[0]
    read: list[int] = []
    plain_get = vcpu.get_registers

    def counting(reg_ids: Sequence[int]) -> list[int]:
        read.extend(reg_ids)
        return plain_get(reg_ids)

    vcpu.get_registers = counting  # type: ignore[method-assign]
    prepared = REGISTRY.save(machine, Phase.COMPLETE, preread)
    assert read
    assert not any(constant_register(reg) for reg in read)
    assert len(read) + len(preread.vcpus[0].constants) == len(preread.vcpus[0].ids)
    assert prepared == REGISTRY.save(machine, Phase.COMPLETE)
