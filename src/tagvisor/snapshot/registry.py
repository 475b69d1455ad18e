"""One registry of every kind of state a snapshot or a migration stream carries.

Each kind declares its section tag, the format minor version that introduced it (and
the last that writes it, for a kind that is only read now), its size limit, its phase,
and how it is saved, loaded and applied; as QEMU's ``VMStateDescription`` does per
device, and Firecracker's ``Persist`` per component. Snapshots and migration are loops
over this table, so a new kind of state (a device: ``register_device`` in
tagvisor.vmm.devices.persist) travels in both without touching either.

Phases, in the order a machine moves:

- ``SETUP``: the machine's shape, read before anything is built (CONF; a migration
  carries it in its HELO greeting instead).
- ``ITERATE``: guest memory, page by page (PAGE); snapshots write it once, pre-copy
  pass after pass.
- ``COMPLETE``: what a paused machine holds besides memory: VCPU registers and device
  state, saved after the pause and applied last.

Loading checks every field into a :class:`Loaded` without touching any machine; only
:meth:`Registry.apply` writes to one, after :meth:`Registry.check` found everything.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from tagvisor import wire
from tagvisor.snapshot import pages
from tagvisor.snapshot.baseline import Baseline
from tagvisor.snapshot.container import END_TAG, FormatError, Payload, Section, Version
from tagvisor.snapshot.linux_state import (
    MpStates,
    SavedGic,
    apply_mp_states,
    capture_mp_states,
    machine_gic,
)
from tagvisor.snapshot.state import (
    MachineState,
    VcpuPreread,
    VcpuState,
    apply_vcpu,
    capture_machine,
    capture_vcpu,
    preread_vcpu,
    vcpu_sections,
)
from tagvisor.vmm.devices import kinds
from tagvisor.vmm.devices.dma import DmaState
from tagvisor.vmm.devices.persist import DEVICE_KINDS, DeviceKind
from tagvisor.vmm.devices.pl011 import ConsoleState
from tagvisor.vmm.devices.ucall import UcallLog
from tagvisor.vmm.linux.gic_state import restore_gic
from tagvisor.vmm.machine import Machine, MachineConfig

#: The major version of both formats; minors count from 0 within it.
MAJOR: Final = 1


class Phase(enum.Enum):
    """When a kind of state travels as a machine is saved or restored (the phases above)."""

    SETUP = "setup"
    ITERATE = "iterate"
    COMPLETE = "complete"


@dataclass
class Loaded:
    """States read and checked from one snapshot or stream, not yet applied."""

    version: Version
    machine: MachineState | None = None
    vcpus: dict[int, VcpuState] = field(default_factory=dict)
    devices: dict[str, Any] = field(default_factory=dict)
    gic: SavedGic | None = None
    mp_states: MpStates | None = None
    #: What the machine applied to holds already (a migration destination reads it
    #: while pre-copy runs, so the apply in the downtime writes only what differs).
    baseline: Baseline | None = None


@dataclass
class Preread:
    """What was read from a running machine ahead of its pause (:meth:`Registry.prepare`),
    so that the pause reads only what can still change. Empty: everything is read then."""

    #: Per VCPU, in VCPU order: its register list and its constant registers' values.
    vcpus: list[VcpuPreread] | None = None


class StateKind(ABC):
    """One kind of state and its section."""

    tag: bytes
    phase: Phase
    limit: int
    #: The format minor version that introduced the section.
    since: int = 0
    #: The last minor version that writes it (None: still written).
    until: int | None = None

    def prepare(self, machine: Machine, preread: Preread) -> None:
        """Read into ``preread`` what this kind's :meth:`save` will not have to read
        again once ``machine`` is paused (by default nothing)."""
        return

    @abstractmethod
    def save(self, machine: Machine, preread: Preread) -> list[tuple[bytes, bytes]]:
        """(tag, payload) of its sections for ``machine``: none, one, one per VCPU."""

    @abstractmethod
    def load(self, payload: Payload, loaded: Loaded) -> None:
        """Check one section's payload into ``loaded`` (FormatError if it is bad)."""

    def check(self, loaded: Loaded, config: MachineConfig) -> None:
        """Everything this kind needs is in ``loaded`` for a machine shaped ``config``
        (by default it needs nothing)."""
        return

    def apply(self, loaded: Loaded, machine: Machine) -> None:
        """Write the loaded state into ``machine`` (by default another kind does)."""
        return


class MachineShape(StateKind):
    """CONF: the machine's layout, MTE mode, profile and MTE level."""

    tag, phase, limit = b"CONF", Phase.SETUP, 64 << 10

    def save(self, machine: Machine, preread: Preread) -> list[tuple[bytes, bytes]]:
        """The CONF section: the machine's config, kernel profile and MTE level."""
        return [(self.tag, capture_machine(machine).encode())]

    def load(self, payload: Payload, loaded: Loaded) -> None:
        """Decode CONF into ``loaded.machine``; a second CONF is refused."""
        if loaded.machine is not None:
            raise FormatError("a second CONF section: the machine's shape is given twice")
        loaded.machine = MachineState.decode(payload)


class VcpuRegisters(StateKind):
    """VCPU: each VCPU's 64-bit registers (the others travel in VREG)."""

    tag, phase, limit = b"VCPU", Phase.COMPLETE, 128 << 10

    def save(self, machine: Machine, preread: Preread) -> list[tuple[bytes, bytes]]:
        """Each VCPU's VCPU section, then its VREG section if it has wide registers:
        the registers are read once (a real VCPU has some 250) for both, but for those
        ``preread`` holds."""
        early = preread.vcpus
        # One VCPU after the other: a thread per VCPU trades the GIL at every ioctl,
        # and under nested TCG that made two VCPUs' reads 3.5 times slower (64 ms
        # against 18 ms on the testbed's 6.1, docs/linux-guests.md "Downtime").
        states = [
            capture_vcpu(index, vcpu, None if early is None else early[index])
            for index, vcpu in enumerate(machine.vcpus)
        ]
        return [section for state in states for section in vcpu_sections(state)]

    def prepare(self, machine: Machine, preread: Preread) -> None:
        """Each VCPU's register list and constant registers (``preread_vcpu``): a
        third of a real VCPU's registers, no longer read in the pause."""
        preread.vcpus = [preread_vcpu(vcpu) for vcpu in machine.vcpus]

    def load(self, payload: Payload, loaded: Loaded) -> None:
        """Decode one VCPU section into ``loaded.vcpus``; a VCPU given twice is refused."""
        state = VcpuState.decode(payload)
        if state.vcpu_id in loaded.vcpus:
            raise FormatError(f"VCPU {state.vcpu_id}'s registers are given twice")
        loaded.vcpus[state.vcpu_id] = state

    def check(self, loaded: Loaded, config: MachineConfig) -> None:
        """Registers are there for exactly the VCPUs 0 to n-1 of a machine of n VCPUs."""
        if sorted(loaded.vcpus) != list(range(config.vcpus)):
            raise FormatError(
                f"registers of VCPUs {sorted(loaded.vcpus)} for a machine of {config.vcpus}"
            )

    def apply(self, loaded: Loaded, machine: Machine) -> None:
        """Write each VCPU's registers into ``machine``, in VCPU order (``apply_vcpu``)."""
        held = loaded.baseline.registers if loaded.baseline is not None else {}
        for vcpu_id, state in sorted(loaded.vcpus.items()):
            apply_vcpu(state, machine.vcpus[vcpu_id], held.get(vcpu_id))


class WideRegisters(StateKind):
    """VREG (since 1.1): a VCPU's registers that are not 64 bits wide (a real KVM's
    FPSR, FPCR and V0-V31), after that VCPU's VCPU section."""

    tag, phase, limit, since = b"VREG", Phase.COMPLETE, 128 << 10, 1

    def save(self, machine: Machine, preread: Preread) -> list[tuple[bytes, bytes]]:
        """None: ``VcpuRegisters.save`` writes each VREG section beside its VCPU section, from the
        same reading."""
        return []  # written by VcpuRegisters.save beside each VCPU, from one reading

    def load(self, payload: Payload, loaded: Loaded) -> None:
        """Add one VREG section's registers to the state of its VCPU, whose VCPU section must come
        first."""
        if len(payload) < 4:
            raise FormatError("a VREG section is shorter than its header")
        vcpu_id = int.from_bytes(payload[:4], "little")
        if vcpu_id not in loaded.vcpus:
            raise FormatError(f"a VREG section for VCPU {vcpu_id} comes before its VCPU section")
        loaded.vcpus[vcpu_id] = loaded.vcpus[vcpu_id].with_wide(payload)


class GicRegisters(StateKind):
    """GIC3 (since 1.3): every register of a Linux guest's in-kernel GICv3, after the
    VCPUs' registers (QEMU restores the GIC after the CPUs too: its CPU interface
    registers belong to them)."""

    tag, phase, limit, since = b"GIC3", Phase.COMPLETE, 256 << 10, 3

    def save(self, machine: Machine, preread: Preread) -> list[tuple[bytes, bytes]]:
        """The GIC3 section, or none for a machine without an in-kernel GIC."""
        state = machine_gic(machine)
        return [] if state is None else [(self.tag, SavedGic.of(state).encode())]

    def load(self, payload: Payload, loaded: Loaded) -> None:
        """Decode the registers into ``loaded.gic``; a second GIC3 is refused."""
        if loaded.gic is not None:
            raise FormatError("a second GIC3 section: the GIC's state is given twice")
        loaded.gic = SavedGic.decode(payload)

    def check(self, loaded: Loaded, config: MachineConfig) -> None:
        """A GIC3 section exactly for a machine with a GIC, holding that GIC's registers."""
        _present_iff(loaded.gic is not None, config, "GIC3", "the GIC's state")
        if loaded.gic is not None:
            loaded.gic.state_for(config)

    def apply(self, loaded: Loaded, machine: Machine) -> None:
        """Write the registers into the machine's GIC, in their order."""
        if loaded.gic is not None and machine.irqchip is not None:
            held = loaded.baseline.gic if loaded.baseline is not None else None
            restore_gic(machine.irqchip, loaded.gic.state_for(machine.config), held)


class PowerStates(StateKind):
    """MPST (since 1.3): each VCPU's power state, for machines whose guest starts its
    secondaries through PSCI (Linux guests)."""

    tag, phase, limit, since = b"MPST", Phase.COMPLETE, 4 << 10, 3

    def save(self, machine: Machine, preread: Preread) -> list[tuple[bytes, bytes]]:
        """The MPST section, or none for a machine without an in-kernel GIC."""
        if machine.irqchip is None:
            return []
        return [(self.tag, capture_mp_states(machine).encode())]

    def load(self, payload: Payload, loaded: Loaded) -> None:
        """Decode the states into ``loaded.mp_states``; a second MPST is refused."""
        if loaded.mp_states is not None:
            raise FormatError("a second MPST section: the VCPUs' power states are given twice")
        loaded.mp_states = MpStates.decode(payload)

    def check(self, loaded: Loaded, config: MachineConfig) -> None:
        """An MPST section exactly for a machine with a GIC, one state per VCPU."""
        _present_iff(loaded.mp_states is not None, config, "MPST", "the VCPUs' power states")
        if loaded.mp_states is not None:
            loaded.mp_states.check(config)

    def apply(self, loaded: Loaded, machine: Machine) -> None:
        """KVM_SET_MP_STATE on every VCPU."""
        if loaded.mp_states is not None:
            apply_mp_states(loaded.mp_states, machine)


def _present_iff(present: bool, config: MachineConfig, tag: str, what: str) -> None:
    wanted = config.irqchip != "none"
    if present and not wanted:
        raise FormatError(f"a {tag} section for a machine without an in-kernel GIC")
    if wanted and not present:
        raise FormatError(f"the machine has an in-kernel GIC but {what} ({tag}) is missing")


class DeviceSection(StateKind):
    """One device's state, in the section its kind names (since 1.2)."""

    phase = Phase.COMPLETE

    def __init__(self, kind: DeviceKind[Any]) -> None:
        self.kind = kind
        self.tag, self.limit, self.since = kind.tag, kind.limit, kind.since

    def save(self, machine: Machine, preread: Preread) -> list[tuple[bytes, bytes]]:
        """The device's section, or none when ``machine`` has no device of this kind."""
        device = machine.devices.get(self.kind.name)
        return [] if device is None else [(self.tag, device.save().encode())]

    def load(self, payload: Payload, loaded: Loaded) -> None:
        """Decode the device's state into ``loaded.devices``; a state given twice is refused."""
        _keep(loaded, self.kind.name, self.kind.decode(payload))

    def check(self, loaded: Loaded, config: MachineConfig) -> None:
        """The state is there exactly when a machine shaped ``config`` has the device."""
        wanted = self.kind.name in _device_names(config)
        if wanted != (self.kind.name in loaded.devices):
            raise FormatError(
                f"the {self.kind.name} device's state is missing"
                if wanted
                else f"state for a {self.kind.name} device, which this machine does not have"
            )

    def apply(self, loaded: Loaded, machine: Machine) -> None:
        """Restore the loaded state into ``machine``'s device of this kind."""
        # check() matched the sections to the machine's devices; a kind this machine
        # does not have (an extra kind registered for other machines) has none here.
        state = loaded.devices.get(self.kind.name)
        if state is not None:
            machine.devices[self.kind.name].restore(state)


class LegacyDevices(StateKind):
    """DEVS (1.0 and 1.1, read only): the console, the ucall log and the DMA engine's
    registers in one JSON object, now each device's own section."""

    tag, phase, limit, until = b"DEVS", Phase.COMPLETE, 16 << 20, 1

    def save(self, machine: Machine, preread: Preread) -> list[tuple[bytes, bytes]]:
        """None: DEVS is only read now; each device writes its own section."""
        return []

    def load(self, payload: Payload, loaded: Loaded) -> None:
        """Split the DEVS object into the console, ucall log and DMA states, as if each had come in
        its own section."""
        raw = wire.loads(payload, "device state")
        _keep(loaded, kinds.CONSOLE.name, ConsoleState(wire.field(raw, "console", str)))
        _keep(loaded, kinds.UCALL.name, UcallLog.from_json(wire.field(raw, "ucalls", list)))
        _keep(loaded, kinds.DMA.name, DmaState.from_json(wire.field(raw, "dma", dict)))


def _keep(loaded: Loaded, name: str, state: object) -> None:
    if name in loaded.devices:
        raise FormatError(f"the {name} device's state is given twice")
    loaded.devices[name] = state


def _device_names(config: MachineConfig) -> set[str]:
    return {kinds.CONSOLE.name, kinds.UCALL.name, kinds.DMA.name} | {
        name for name, _ in config.devices
    }


@dataclass(frozen=True)
class MemorySpec:
    """PAGE: runs of guest pages with their tags (tagvisor.snapshot.pages), written
    and applied as they stream (tagvisor.snapshot.guestpages, the migration passes),
    never held whole: the registry names its section and limit."""

    tag: bytes = b"PAGE"
    phase: Phase = Phase.ITERATE
    limit: int = pages.HEAD.size + pages.MAX_BODY
    since: int = 0


MEMORY: Final = MemorySpec()


class Registry:
    """The kinds of state, in the order they are saved and applied."""

    def __init__(self, kinds_: list[StateKind]) -> None:
        self._fixed = kinds_

    def kinds(self) -> list[StateKind]:
        """The fixed kinds, then one per registered device kind (read each time, so a
        device registered later is carried too)."""
        devices: list[StateKind] = [DeviceSection(kind) for kind in DEVICE_KINDS.values()]
        return [*self._fixed, *devices]

    def limits(self, *phases: Phase) -> dict[bytes, int]:
        """Section tag to size limit for every kind in ``phases``, memory included."""
        limits = {kind.tag: kind.limit for kind in self.kinds() if kind.phase in phases}
        if MEMORY.phase in phases:
            limits[MEMORY.tag] = MEMORY.limit
        return limits

    def prepare(self, machine: Machine) -> Preread:
        """What can be read of ``machine`` while it still runs, for :meth:`save` to
        take once it is paused (a migration's source calls it before the pause)."""
        preread = Preread()
        for kind in self.kinds():
            kind.prepare(machine, preread)
        return preread

    def save(
        self, machine: Machine, phase: Phase, preread: Preread | None = None
    ) -> list[tuple[bytes, bytes]]:
        """(tag, payload) of every section of ``phase`` for ``machine`` (with
        ``preread``, from :meth:`prepare` on this machine, what it holds is not read
        again)."""
        return [
            section for sections in self.save_each(machine, phase, preread) for section in sections
        ]

    def save_each(
        self, machine: Machine, phase: Phase, preread: Preread | None = None
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        """:meth:`save`, one kind at a time, each kind's sections as soon as they are
        read (a migration's source sends each while it reads the next)."""
        early = Preread() if preread is None else preread
        for kind in self.kinds():
            if kind.phase is phase and kind.until is None:
                yield kind.save(machine, early)

    def load(self, section: Section, loaded: Loaded) -> None:
        """Check ``section`` into ``loaded``: its kind must exist in that version."""
        kind = next((k for k in self.kinds() if k.tag == section.tag), None)
        if kind is None:
            raise FormatError(f"unexpected section {section.tag!r}")
        minor = loaded.version.minor
        if minor < kind.since or (kind.until is not None and minor > kind.until):
            raise FormatError(f"a {section.tag!r} section has no place in format {loaded.version}")
        kind.load(section.payload, loaded)

    def check(self, loaded: Loaded, config: MachineConfig) -> None:
        """Every kind found all it needs (call before building anything)."""
        for kind in self.kinds():
            kind.check(loaded, config)

    def apply(self, loaded: Loaded, machine: Machine) -> None:
        """Write every kind's loaded state into ``machine``, in the registry's order (after
        :meth:`check` found it complete)."""
        for kind in self.kinds():
            kind.apply(loaded, machine)


REGISTRY: Final = Registry(
    [
        MachineShape(),
        VcpuRegisters(),
        WideRegisters(),
        LegacyDevices(),
        GicRegisters(),
        PowerStates(),
    ]
)

__all__ = [
    "END_TAG",
    "MAJOR",
    "MEMORY",
    "REGISTRY",
    "Loaded",
    "Phase",
    "Preread",
    "Registry",
    "StateKind",
]
