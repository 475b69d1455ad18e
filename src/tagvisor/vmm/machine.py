"""A running (or paused) machine: its VM, VCPUs, memory and devices, and the run loop.

Build one with :class:`tagvisor.vmm.builder.MachineBuilder`; it comes back paused.
:meth:`Machine.run` runs the VCPUs (VCPU 0 on the calling thread, the others on their
own) and handles their exits until the guest powers off, fails, or someone pauses it.
Only the backend API is used, so the same loop drives the model and a real /dev/kvm.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from tagvisor.errors import TagvisorError
from tagvisor.kvm.api import Device, Kvm, Vcpu, VcpuExit, Vm
from tagvisor.kvm.uapi import ExitReason, SystemEvent
from tagvisor.vmm.devices.amba_pl011 import AmbaPl011, ConsoleInputError
from tagvisor.vmm.devices.bus import BusError, MmioBus
from tagvisor.vmm.devices.dma import DmaEngine
from tagvisor.vmm.devices.persist import Persistent
from tagvisor.vmm.devices.pl011 import Pl011
from tagvisor.vmm.devices.ucall import Ucall, UcallCmd, UcallDevice, UcallError
from tagvisor.vmm.memory import GuestMemory
from tagvisor.vmm.tag_access import TagAccess
from tagvisor.vmm.throttle import Throttle

#: Exits a pausing VCPU may still need before its pending access is finished.
SETTLE_LIMIT: Final = 4


class MachineError(TagvisorError):
    """The guest stopped in a way that is not a clean power-off."""


class RunState(enum.Enum):
    """Whether the machine is paused, running, or has stopped for good."""

    PAUSED = "paused"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass
class MachineConfig:
    """What a machine was built with (kept for snapshots and migration)."""

    ram_base: int
    ram_size: int
    ram_backing: str
    mte: bool
    tcf: int
    vcpus: int
    tag_access: str
    vmm_prot_mte: bool = False
    #: Devices of extra kinds (tagvisor.vmm.devices.persist): (kind, MMIO base) each.
    devices: tuple[tuple[str, int], ...] = ()
    #: The in-kernel interrupt controller: "none", or "gicv3" (Linux guests), whose
    #: state then travels too (tagvisor.snapshot.linux_state).
    irqchip: str = "none"
    #: The in-kernel GIC's interrupts, private ones included (0 without one).
    gic_irqs: int = 0


@dataclass
class RunResult:
    """How a run ended."""

    state: RunState
    exits: int
    system_event: int | None = None
    exit_status: int | None = None
    error: str | None = None
    by_reason: dict[str, int] = field(default_factory=dict)


class Machine:
    """A VM and everything the VMM keeps for it."""

    def __init__(
        self,
        kvm: Kvm,
        vm: Vm,
        vcpus: list[Vcpu],
        memory: GuestMemory,
        bus: MmioBus,
        console: Pl011,
        ucall: UcallDevice,
        dma: DmaEngine,
        tags: TagAccess,
        config: MachineConfig,
        devices: dict[str, Persistent[Any]],
    ) -> None:
        self.kvm = kvm
        self.vm = vm
        self.vcpus = vcpus
        self.memory = memory
        self.bus = bus
        self.console = console
        self.ucall = ucall
        self.dma = dma
        self.tags = tags
        self.config = config
        #: Every device with state, by kind name, in the order its state is applied.
        self.devices = devices
        #: The in-kernel interrupt controller's device fd, if the machine has one
        #: (Linux guests): kept here for as long as the VM lives.
        self.irqchip: Device | None = None
        self.state = RunState.PAUSED
        self.system_event: int | None = None
        self._pause = threading.Event()
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self.exits = 0
        self.by_reason: dict[str, int] = {}
        self._throttle = Throttle(len(vcpus), self._kick_all)

    # -- control ---------------------------------------------------------------------

    def pause(self) -> None:
        """Ask every VCPU to stop at its next exit; run() then returns PAUSED."""
        self._pause.set()
        self._kick_all()

    def _kick_all(self) -> None:
        for vcpu in self.vcpus:
            vcpu.kick()

    def throttle(self, share: float) -> None:
        """Let the VCPUs run only ``share`` (0 < share <= 1) of the time, in 10 ms
        slices (tagvisor.vmm.throttle); 1 runs them at full speed again."""
        self._throttle.set(share)

    @property
    def run_share(self) -> float:
        """The share of the time the VCPUs may run (:meth:`throttle`)."""
        return self._throttle.share

    def set_console_sink(self, sink: Callable[[bytes], None] | None) -> None:
        """Where the guest's console bytes go from now on: the polled console's and,
        on a Linux machine, the AMBA PL011's (e.g. after a restore or a migration)."""
        self.console.sink = sink
        device = self.devices.get(AmbaPl011.name)
        if isinstance(device, AmbaPl011):
            device.sink = sink

    def console_input(self, data: bytes) -> None:
        """Send ``data`` to the guest's console, as if typed on its serial line: the
        Linux guests' PL011 queues it for its receive FIFO and interrupts the guest.
        Safe from any thread while the VCPUs run. ConsoleInputError if the machine's
        console takes no input (the bare-metal guests' polled one) or its line is full."""
        device = self.devices.get(AmbaPl011.name)
        if not isinstance(device, AmbaPl011):
            raise ConsoleInputError(
                "this machine's console takes no input: only the Linux guests' PL011 "
                "(MachineBuilder.linux) has a receiver"
            )
        device.receive(bytes(data))

    def pause_on_report(self, report: int | None) -> None:
        """Pause when the guest makes UCALL_SYNC ``report`` (it stops inside that
        ucall, which KVM then finishes); None stops watching."""
        if report is None:
            self.ucall.listener = None
            return

        def on_ucall(call: Ucall) -> None:
            if call.cmd is UcallCmd.SYNC and call.args[:1] == (report,):
                self.pause()

        self.ucall.listener = on_ucall

    def run(self, max_exits: int | None = None) -> RunResult:
        """Run until power-off, an error, a pause, or ``max_exits`` exits of VCPU 0."""
        if self.state is RunState.STOPPED:
            raise MachineError("the machine has stopped; build a new one")
        self._pause.clear()
        self.state = RunState.RUNNING
        others = [
            threading.Thread(target=self._loop, args=(vcpu, None), daemon=True, name=f"vcpu{index}")
            for index, vcpu in enumerate(self.vcpus[1:], start=1)
        ]
        for thread in others:
            thread.start()
        self._loop(self.vcpus[0], max_exits)
        if self.state is RunState.RUNNING:
            # Stop the other VCPUs; VCPU 0 has returned already, and kicking it would
            # leave a pending kick that ends its next KVM_RUN before it starts.
            self._pause.set()
            for vcpu in self.vcpus[1:]:
                vcpu.kick()
        for thread in others:
            thread.join()
        if self.state is RunState.RUNNING:
            self.state = RunState.PAUSED
        return RunResult(
            state=self.state,
            exits=self.exits,
            system_event=self.system_event,
            exit_status=self.exit_status,
            error=self._errors[0] if self._errors else None,
            by_reason=dict(self.by_reason),
        )

    @property
    def exit_status(self) -> int | None:
        """The guest's status: its UCALL_DONE value, 0 for a plain power-off, else None."""
        if self._errors:
            return 255
        if self.system_event == SystemEvent.SHUTDOWN:
            status = self.ucall.exit_status
            return 0 if status is None else status
        return None

    # -- the VCPU loop ---------------------------------------------------------------

    def _loop(self, vcpu: Vcpu, max_exits: int | None) -> None:
        count = 0
        index = self.vcpus.index(vcpu)
        while self.state is RunState.RUNNING and not self._pause.is_set():
            self._step(vcpu, vcpu.run())
            count += 1
            if max_exits is not None and count >= max_exits:
                break
            self._throttle.rest(index, self._pause)
        self._settle(vcpu)

    def _step(self, vcpu: Vcpu, exit_: VcpuExit) -> None:
        with self._lock:
            self.exits += 1
            self.by_reason[exit_.reason.name] = self.by_reason.get(exit_.reason.name, 0) + 1
        try:
            self._handle(vcpu, exit_)
        except (BusError, UcallError, MachineError) as error:
            self._stop(str(error))

    def _settle(self, vcpu: Vcpu) -> None:
        """Let KVM finish the exit the VCPU stopped in, without running the guest on.

        KVM completes an MMIO access (PC past the instruction, a load's register
        written) on the next KVM_RUN, before it honours immediate_exit. Until then the
        registers a snapshot or a migration reads still point at the access, and a
        restored guest would make it twice (api.rst: "userspace should ensure that the
        operation is completed before performing a live migration").
        """
        for _ in range(SETTLE_LIMIT):
            if self.state is RunState.STOPPED:
                return
            vcpu.kick()
            exit_ = vcpu.run()
            if exit_.reason == ExitReason.INTR:
                return
            self._step(vcpu, exit_)  # finishing needed the VMM again (a pair's 2nd access)
        self._stop(f"the VCPU did not settle after {SETTLE_LIMIT} exits")

    def _handle(self, vcpu: Vcpu, exit_: VcpuExit) -> None:
        if exit_.reason == ExitReason.MMIO and exit_.mmio is not None:
            mmio = exit_.mmio
            if mmio.is_write:
                self.bus.write(mmio.phys_addr, mmio.data)
            else:
                vcpu.set_mmio_read_data(self.bus.read(mmio.phys_addr, mmio.length))
        elif exit_.reason == ExitReason.SYSTEM_EVENT:
            with self._lock:
                self.system_event = exit_.system_event
                self.state = RunState.STOPPED
            self.pause()
        elif exit_.reason == ExitReason.INTR:
            return
        else:
            raise MachineError(f"KVM_RUN returned {exit_.reason.name}: the guest cannot go on")

    def _stop(self, reason: str) -> None:
        with self._lock:
            self._errors.append(reason)
            self.state = RunState.STOPPED
        self.pause()
