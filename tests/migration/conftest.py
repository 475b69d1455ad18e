"""Two hosts in one process: a source machine and a destination listener."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GeneratorGuest
from tagvisor.migration import IncomingReport, Listener, TcpAddress, incoming
from tagvisor.vmm import Machine, MachineBuilder
from tests.migration.churner import churner

RAM = 32 << 20


def source_machine(rounds: int = 10**9, *, mte: bool = True) -> Machine:
    machine = (
        MachineBuilder(ModelKvm(160 << 20))
        .memory(RAM)
        .mte(mte)
        .python_guest(churner(rounds))
        .build()
    )
    machine.run(max_exits=3)  # the heap is set up and a few rounds done
    return machine


@dataclass
class Destination:
    """An incoming migration running on a thread, with what came of it."""

    listener: Listener
    kvm: ModelKvm
    machine: Machine | None = None
    report: IncomingReport | None = None
    error: BaseException | None = None
    thread: threading.Thread = field(init=False)
    options: dict[str, object] = field(default_factory=dict)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.machine, self.report = incoming(
                self.kvm,
                self.listener,
                timeout=20,
                **self.options,  # type: ignore[arg-type]
            )
        except BaseException as error:  # reported to the test
            self.error = error

    @property
    def address(self) -> TcpAddress:
        return self.listener.address

    def join(self) -> None:
        self.thread.join(30)

    def resume_guest(self, rounds: int = 10**9) -> Machine:
        assert self.machine is not None, self.error
        self.machine.vcpus[0].attach(GeneratorGuest(churner(rounds)))  # type: ignore[attr-defined]
        return self.machine


@pytest.fixture
def destination() -> Iterator[Destination]:
    dest = Destination(Listener(TcpAddress("127.0.0.1", 0)), ModelKvm(160 << 20))
    yield dest
    dest.listener.close()
