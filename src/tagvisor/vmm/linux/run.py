"""Running a Linux guest to power-off, with a deadline.

A kernel that hangs before its init (a wrong device tree, a missing driver) prints
nothing more and never exits to the VMM for good; without a deadline the VMM would
wait for ever. :func:`run_linux` pauses the machine when the deadline passes and
raises with the console's last lines, which is where such a kernel says what it
waited for.
"""

from __future__ import annotations

import threading
from typing import Final

from tagvisor.kvm.uapi import SystemEvent
from tagvisor.vmm.devices.kinds import AMBA_CONSOLE
from tagvisor.vmm.machine import Machine, MachineError, RunResult, RunState

TAIL_LINES: Final = 15
#: What kernel/panic.c prints first (at KERN_EMERG, so ``quiet`` keeps it).
PANIC: Final = "Kernel panic - not syncing"


class LinuxBootError(MachineError):
    """The guest did not power off within its deadline, or asked for a reset; the
    message has its console's last lines."""


class LinuxPanicError(LinuxBootError):
    """The guest kernel panicked; the message has the panic and the console's end."""


def console_text(machine: Machine) -> str:
    """What the Linux guest has written to its console so far."""
    device = machine.devices.get(AMBA_CONSOLE.name)
    text = getattr(device, "text", "")
    return text if isinstance(text, str) else ""


def console_tail(machine: Machine, lines: int = TAIL_LINES) -> str:
    """The console's last ``lines`` lines, or a note that it stayed silent."""
    tail = console_text(machine).splitlines()[-lines:]
    return "\n".join(tail) if tail else "(the console stayed silent)"


def run_linux(machine: Machine, deadline: float | None) -> RunResult:
    """Run until the guest powers off or fails; past ``deadline`` seconds (None: no
    limit) the machine is paused and LinuxBootError carries the console's last lines."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        machine.pause()

    timer = None if deadline is None else threading.Timer(deadline, expire)
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        result = machine.run()
    finally:
        if timer is not None:
            timer.cancel()
    panic = _panic_line(machine)
    if expired.is_set() and result.state is RunState.PAUSED:
        if panic is not None:  # without panic=N the kernel waits for ever after it
            raise LinuxPanicError(
                f"the guest kernel panicked ({panic}) and then hung: with no panic=-1 on "
                f"its command line it did not reset, and was stopped at its deadline "
                f"({deadline:g} s); its console's last lines:\n{console_tail(machine)}"
            )
        raise LinuxBootError(
            f"the Linux guest did not power off within {deadline:g} s; "
            f"its console's last lines:\n{console_tail(machine)}"
        )
    if result.system_event == SystemEvent.RESET:
        _refuse_reset(machine, panic)
    return result


def _panic_line(machine: Machine) -> str | None:
    lines = [line for line in console_text(machine).splitlines() if PANIC in line]
    return lines[-1].strip() if lines else None


def _refuse_reset(machine: Machine, panic: str | None) -> None:
    """A reset (KVM_SYSTEM_EVENT_RESET) ends the run: tagvisor does not reboot guests.
    After a panic, panic=-1 makes Linux reset at once (kernel/panic.c's
    emergency_restart, PSCI SYSTEM_RESET), so the panic is what to report."""
    if panic is not None:
        raise LinuxPanicError(
            f"the guest kernel panicked: {panic}; it then asked to reset "
            f"(KVM_SYSTEM_EVENT_RESET); its console's last lines:\n{console_tail(machine)}"
        )
    raise LinuxBootError(
        "the guest asked to reset (PSCI SYSTEM_RESET, KVM_SYSTEM_EVENT_RESET: a reboot), "
        "which tagvisor does not do: power the guest off instead (poweroff -f); its "
        f"console's last lines:\n{console_tail(machine)}"
    )
