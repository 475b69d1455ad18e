"""A Linux guest that never powers off is stopped at its deadline, console in the error;
one that panics or asks to reset is reported as such."""

from __future__ import annotations

import pytest

from tagvisor.kvm.api import GuestProgram, VcpuExit
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GuestContext, mmio_write
from tagvisor.kvm.uapi import ExitReason, SystemEvent
from tagvisor.vmm import Machine, MachineBuilder
from tagvisor.vmm.linux.platform import UART_BASE
from tagvisor.vmm.linux.run import LinuxBootError, LinuxPanicError, run_linux
from tests.vmm.guests import Exits


def hangs_after_a_line(ctx: GuestContext) -> Exits:
    """Prints a kernel-like line on the AMBA UART, then waits for ever (as a kernel
    that found no root does), one MMIO exit at a time."""
    for byte in b"[    0.000000] Booting Linux\nWaiting for root device\n":
        yield mmio_write(UART_BASE, byte)
    while True:
        yield mmio_write(UART_BASE + 0x038, 0)  # UARTIMSC: nothing to raise


def powers_off(ctx: GuestContext) -> Exits:
    for byte in b"init: bye\n":
        yield mmio_write(UART_BASE, byte)


def machine(program: GuestProgram) -> Machine:
    return (
        MachineBuilder(ModelKvm(64 << 20))
        .memory(16 << 20)
        .device("pl011-amba", UART_BASE)
        .python_guest(program)
        .build()
    )


def test_a_guest_past_its_deadline_fails_with_its_last_console_lines() -> None:
    """Scenario: a guest that prints two lines and never powers off, deadline 0.3 s:
    LinuxBootError names the deadline and carries both lines."""
    with pytest.raises(LinuxBootError, match=r"did not power off within 0\.3 s") as caught:
        run_linux(machine(hangs_after_a_line), 0.3)
    assert "Waiting for root device" in str(caught.value)
    assert "Booting Linux" in str(caught.value)


def test_a_guest_that_powers_off_in_time_returns_its_result() -> None:
    """Scenario: a guest that prints a line and ends (PSCI SYSTEM_OFF): status 0."""
    result = run_linux(machine(powers_off), 60)
    assert result.exit_status == 0


PANIC_TEXT = (
    b"Run /init as init process\n"
    b"Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000300\n"
    b"SMP: stopping secondary CPUs\n"
)


def panics_then_resets(ctx: GuestContext) -> Exits:
    """As Linux with panic=-1 after its init exited: the panic, then PSCI SYSTEM_RESET."""
    for byte in PANIC_TEXT:
        yield mmio_write(UART_BASE, byte)
    yield VcpuExit(ExitReason.SYSTEM_EVENT, system_event=SystemEvent.RESET)


def panics_and_hangs(ctx: GuestContext) -> Exits:
    """As Linux without panic=: the panic, then nothing for ever."""
    for byte in PANIC_TEXT:
        yield mmio_write(UART_BASE, byte)
    while True:
        yield mmio_write(UART_BASE + 0x038, 0)


def resets(ctx: GuestContext) -> Exits:
    """A guest that reboots (busybox reboot -f): SYSTEM_RESET without a panic."""
    for byte in b"reboot: Restarting system\n":
        yield mmio_write(UART_BASE, byte)
    yield VcpuExit(ExitReason.SYSTEM_EVENT, system_event=SystemEvent.RESET)


def test_a_kernel_panic_with_panic_minus_1_is_reported_as_a_panic() -> None:
    """Scenario: the guest prints the panic and resets (KVM_SYSTEM_EVENT_RESET):
    LinuxPanicError says the kernel panicked, quotes the panic line and has the
    console's last lines."""
    with pytest.raises(LinuxPanicError, match="the guest kernel panicked: Kernel panic") as caught:
        run_linux(machine(panics_then_resets), 60)
    assert "Attempted to kill init!" in str(caught.value)
    assert "SMP: stopping secondary CPUs" in str(caught.value)


def test_a_kernel_panic_without_a_reset_is_a_panic_at_the_deadline() -> None:
    """Scenario: the guest panics and hangs (no panic=-1), deadline 0.3 s: a
    LinuxPanicError, not a plain missed deadline, saying why it did not reset."""
    with pytest.raises(LinuxPanicError, match=r"panicked .* then hung: with no panic=-1"):
        run_linux(machine(panics_and_hangs), 0.3)


def test_a_reset_without_a_panic_is_refused_by_name() -> None:
    """Scenario: a guest that asks to reboot: LinuxBootError (not a panic) names the
    reset and says to power off instead."""
    with pytest.raises(LinuxBootError, match="asked to reset") as caught:
        run_linux(machine(resets), 60)
    assert not isinstance(caught.value, LinuxPanicError)
    assert "Restarting system" in str(caught.value)
