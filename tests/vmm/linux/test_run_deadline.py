"""A Linux guest that never powers off is stopped at its deadline, console in the error."""

from __future__ import annotations

import pytest

from tagvisor.kvm.api import GuestProgram
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GuestContext, mmio_write
from tagvisor.vmm import Machine, MachineBuilder
from tagvisor.vmm.linux.platform import UART_BASE
from tagvisor.vmm.linux.run import LinuxBootError, run_linux
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
