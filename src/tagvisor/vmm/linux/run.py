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

from tagvisor.vmm.devices.kinds import AMBA_CONSOLE
from tagvisor.vmm.machine import Machine, MachineError, RunResult, RunState

TAIL_LINES: Final = 15


class LinuxBootError(MachineError):
    """The guest did not power off within its deadline; the message has its console."""


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
    if expired.is_set() and result.state is RunState.PAUSED:
        raise LinuxBootError(
            f"the Linux guest did not power off within {deadline:g} s; "
            f"its console's last lines:\n{console_tail(machine)}"
        )
    return result
