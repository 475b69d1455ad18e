"""A live migration between two model hosts in this process, over loopback TCP."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import IncomingReport, Listener, MigrationReport, TcpAddress, incoming
from tagvisor.migration import migrate as migrate_to
from tagvisor.vmm.machine import Machine

#: Started with the destination's machine as soon as it exists (post-copy: while its
#: pages still arrive); returns what stops it once they all have.
Observer = Callable[[Machine], Callable[[], None]]


@dataclass
class _Destination:
    kvm: ModelKvm
    observe: Observer | None
    listener: Listener = field(default_factory=lambda: Listener(TcpAddress("127.0.0.1", 0)))
    machine: Machine | None = None
    report: IncomingReport | None = None
    error: BaseException | None = None
    stop: Callable[[], None] = field(default=lambda: None)

    def run(self) -> None:
        try:
            self.machine, self.report = incoming(self.kvm, self.listener, timeout=300)
            if self.observe is not None:
                self.stop = self.observe(self.machine)
        except BaseException as error:  # handed to the caller's thread
            self.error = error


@dataclass
class Moved:
    """What a migration did on both sides."""

    report: MigrationReport
    destination: Machine
    incoming: IncomingReport


def migrate(
    machine: Machine,
    destination: ModelKvm,
    *,
    run_guest: bool,
    observe: Observer | None = None,
    **options: Any,
) -> Moved:
    """Migrate ``machine`` to a fresh destination on ``destination``'s host (``options``
    go to tagvisor.migration.migrate); the source stays paused, the destination's guest
    is built paused and, for post-copy, complete when this returns."""
    dest = _Destination(destination, observe)
    thread = threading.Thread(target=dest.run, name="lab-destination", daemon=True)
    thread.start()
    try:
        report = migrate_to(machine, dest.listener.address, run_guest=run_guest, **options)
    finally:
        thread.join(300)
        dest.listener.close()
    if dest.error is not None:
        raise dest.error
    assert dest.machine is not None
    assert dest.report is not None
    if dest.report.postcopy is not None:
        dest.report.postcopy.join()
    dest.stop()
    return Moved(report, dest.machine, dest.report)
