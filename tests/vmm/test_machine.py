"""The machine builder, the run loop, console, ucall and the boot configuration."""

import struct

import pytest

from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GuestContext
from tagvisor.vmm import MachineBuilder, MachineError, RunState
from tagvisor.vmm.builder import BOOT_CONFIG_MAGIC, BOOT_CONFIG_OFFSET, RAM_BASE
from tagvisor.vmm.devices.ucall import UcallCmd
from tests.vmm.guests import Exits, puts, ucall


def hello(ctx: GuestContext) -> Exits:
    yield from puts("hello\n")
    config = ctx.stage2.read(RAM_BASE + BOOT_CONFIG_OFFSET, 24)
    magic, _version, tcf, flags, ram = struct.unpack("<IIIIQ", config)
    yield ucall(ctx, UcallCmd.SYNC, 1, magic, tcf, flags, ram)
    yield ucall(ctx, UcallCmd.DONE, 7)


def test_built_machine_starts_paused_and_runs_to_power_off() -> None:
    """Scenario: build a 16 MiB MTE machine with a Python guest; nothing has run yet.

    run() then carries it to power-off: the console has the guest's text, the ucall
    log its report and DONE(7), which becomes the exit status.
    """
    machine = MachineBuilder(ModelKvm(64 << 20)).memory(16 << 20).python_guest(hello).build()
    assert machine.state is RunState.PAUSED
    assert machine.exits == 0
    result = machine.run()
    assert result.state is RunState.STOPPED
    assert result.exit_status == 7
    assert machine.console.text == "hello\n"
    report = machine.ucall.calls[0]
    assert report.cmd is UcallCmd.SYNC
    assert report.args == (1, BOOT_CONFIG_MAGIC, 1, 1, 16 << 20)


def test_boot_config_says_what_the_vmm_chose() -> None:
    """Scenario: --no-mte and --tcf async are visible to the guest in the boot block."""
    machine = (
        MachineBuilder(ModelKvm(64 << 20))
        .memory(16 << 20)
        .mte(False, tcf="async")
        .python_guest(hello)
        .build()
    )
    machine.run()
    assert machine.ucall.calls[0].args[2:4] == (2, 0)


def test_pause_stops_at_the_next_exit_and_resume_continues() -> None:
    """Scenario: run for 3 exits, the machine is paused, run again to the end."""
    machine = MachineBuilder(ModelKvm(64 << 20)).memory(16 << 20).python_guest(hello).build()
    first = machine.run(max_exits=3)
    assert first.state is RunState.PAUSED
    assert machine.console.text == "hel"
    assert machine.run().exit_status == 7


def test_a_guest_touching_an_unmapped_device_stops_with_a_clear_error() -> None:
    """Scenario: the guest stores to 0x0B00_0000 where no device is."""

    def stray(ctx: GuestContext) -> Exits:
        from tagvisor.kvm.model.guest import mmio_write

        yield mmio_write(0x0B00_0000, 1)

    machine = MachineBuilder(ModelKvm(64 << 20)).memory(16 << 20).python_guest(stray).build()
    result = machine.run()
    assert result.state is RunState.STOPPED
    assert result.error is not None
    assert "0xb000000" in result.error
    assert result.exit_status == 255


def test_malformed_ucall_is_refused_not_trusted() -> None:
    """Scenario: the doorbell names an address outside RAM; the VMM stops the guest."""

    def bad(ctx: GuestContext) -> Exits:
        from tagvisor.kvm.model.guest import mmio_write

        yield mmio_write(0x0A00_0000, 0xDEAD_0000)

    machine = MachineBuilder(ModelKvm(64 << 20)).memory(16 << 20).python_guest(bad).build()
    result = machine.run()
    assert result.error is not None
    assert "not in guest RAM" in result.error


def test_memory_an_mte_vm_cannot_use_is_refused_at_build_time() -> None:
    """Scenario: hugetlbfs RAM on Linux 6.2 (not VM_MTE_ALLOWED until 6.13)."""
    builder = MachineBuilder(ModelKvm(64 << 20, profile="linux-6.2")).memory(
        16 << 20, backing="hugetlb"
    )
    with pytest.raises(MachineError, match="VM_MTE_ALLOWED"):
        builder.python_guest(hello).build()


def test_a_machine_without_a_guest_is_refused() -> None:
    """Scenario: build() with no image and no Python guest."""
    with pytest.raises(MachineError, match="no guest"):
        MachineBuilder(ModelKvm(64 << 20)).memory(16 << 20).build()
