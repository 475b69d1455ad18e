"""A tagvisor machine running a Linux guest on a thread of its own, so that the thread
that made it can talk to the guest's console, pause it and move it
(tagvisor.testbed.linux_session, tagvisor.testbed.vm_process)."""

from __future__ import annotations

import threading
from typing import Final

from tagvisor.testbed.workload import WorkloadError
from tagvisor.vmm.linux.run import console_tail, run_linux
from tagvisor.vmm.machine import Machine, RunResult

#: How long one command may take in the nested guest (TCG runs the testbed's KVM).
COMMAND_SECONDS: Final = 120.0


class GuestThread:
    """A machine running on a thread of its own, so that this one can talk to it."""

    def __init__(self, machine: Machine, deadline: float) -> None:
        self.machine = machine
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(deadline,), daemon=True)
        self.thread.start()

    def _run(self, deadline: float) -> None:
        try:
            self.result = run_linux(self.machine, deadline)
        except BaseException as error:  # reported by pause() / join() on the caller's thread
            self.error = error

    def pause(self) -> RunResult:
        """Pause the guest and wait until its VCPUs are out of KVM_RUN."""
        while self.thread.is_alive():
            self.machine.pause()
            self.thread.join(0.05)
        return self.join(0)

    def join(self, timeout: float) -> RunResult:
        """Wait for the run to end by itself (power-off); its result, or its error."""
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise WorkloadError(
                f"the guest is still running after {timeout:g} s; its console's last lines:\n"
                f"{console_tail(self.machine)}"
            )
        return self.result
