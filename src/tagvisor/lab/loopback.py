"""A live migration between two model hosts in this process, over loopback TCP."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import IncomingReport, Listener, MigrationReport, TcpAddress, incoming
from tagvisor.migration import migrate as migrate_to
from tagvisor.vmm.machine import Machine


@dataclass
class _Destination:
    kvm: ModelKvm
    listener: Listener = field(default_factory=lambda: Listener(TcpAddress("127.0.0.1", 0)))
    machine: Machine | None = None
    report: IncomingReport | None = None
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self.machine, self.report = incoming(self.kvm, self.listener, timeout=300)
        except BaseException as error:  # handed to the caller's thread
            self.error = error


@dataclass
class Moved:
    """What a migration did on both sides."""

    report: MigrationReport
    destination: Machine
    incoming: IncomingReport


def migrate(
    machine: Machine, destination: ModelKvm, *, run_guest: bool, postcopy: bool = False
) -> Moved:
    """Migrate ``machine`` to a fresh destination on ``destination``'s host; the source
    stays paused, the destination's guest is built paused."""
    dest = _Destination(destination)
    thread = threading.Thread(target=dest.run, name="lab-destination", daemon=True)
    thread.start()
    try:
        report = migrate_to(machine, dest.listener.address, run_guest=run_guest, postcopy=postcopy)
    finally:
        thread.join(300)
        dest.listener.close()
    if dest.error is not None:
        raise dest.error
    assert dest.machine is not None
    assert dest.report is not None
    if dest.report.postcopy is not None:
        dest.report.postcopy.join()
    return Moved(report, dest.machine, dest.report)
