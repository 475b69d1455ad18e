"""The state a Linux guest has beyond a bare-metal one: its in-kernel GICv3 and each
VCPU's power state, as plain States with checked encodings.

GIC3 holds every register of the GIC (tagvisor.vmm.linux.gic_state) as
``[group, attr, value]`` in the order a restore writes them; MPST holds each VCPU's
KVM_GET_MP_STATE (a secondary that Linux never started through PSCI CPU_ON stays
STOPPED, and one it did start must not come back powered off). The arch timers travel
in the VCPU sections: KVM_GET_REG_LIST names CNTV_CTL/CVAL and KVM_REG_ARM_TIMER_CNT,
and writing TIMER_CNT back sets the VM's counter offset so the guest's virtual
counter goes on from where it was saved (arch/arm64/kvm/arch_timer.c,
kvm_arm_timer_set_reg), as QEMU's kvm_arm_put_virtual_time does.

Both are read from outside (a file, a socket): every field is checked, and the GIC's
register set must be exactly the one a machine of that shape has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from tagvisor import wire
from tagvisor.kvm.uapi import MpState
from tagvisor.snapshot.container import FormatError, Payload
from tagvisor.vmm.linux.gic_state import GicState, gic_registers, icc_ctlr, save_gic
from tagvisor.vmm.linux.guest import kvm_mpidrs
from tagvisor.vmm.machine import Machine, MachineConfig

#: The payloads' own version (inside format 1.3, which introduced both sections).
STATE_VERSION: Final = 1
#: 8 VCPUs with 128 interrupts have under 1,000 registers.
MAX_GIC_REGISTERS: Final = 4096
MP_STATES: Final = frozenset(state.value for state in MpState)


@dataclass(frozen=True)
class SavedGic:
    """The GIC's registers as read: ``(group, attr, value)`` in restore order."""

    registers: tuple[tuple[int, int, int], ...]

    def encode(self) -> bytes:
        """The GIC3 payload: deterministic JSON."""
        return wire.dumps(
            {"version": STATE_VERSION, "registers": [list(entry) for entry in self.registers]}
        )

    @classmethod
    def decode(cls, payload: Payload) -> SavedGic:
        """The registers of a GIC3 payload, each a triple of unsigned integers."""
        # Every value is checked below, with builtins (see wire.loads_numbers).
        raw = wire.loads_numbers(payload, "the GIC's state")
        _version(raw, "GIC3")
        entries = wire.field(raw, "registers", list)
        if len(entries) > MAX_GIC_REGISTERS:
            raise FormatError(f"the GIC's state claims {len(entries)} registers")
        # Checked with builtins over the whole list, not entry by entry in Python: the
        # destination decodes this in a migration's downtime.
        triples = tuple(
            tuple(entry) for entry in entries if type(entry) is list and len(entry) == 3
        )
        numbers = [n for triple in triples for n in triple]
        if len(triples) != len(entries) or (
            numbers and (set(map(type, numbers)) != {int} or min(numbers) < 0 or max(numbers) >> 64)
        ):
            raise FormatError("a GIC register is not [group, attr, value]")
        return cls(triples)

    @classmethod
    def of(cls, state: GicState) -> SavedGic:
        """The plain triples of a live GIC's saved state."""
        return cls(tuple((r.group, r.attr, value) for r, value in state.values))

    def state_for(self, config: MachineConfig) -> GicState:
        """The GicState to restore into a machine shaped ``config``: the registers must be
        exactly those of its GIC, in order, and each value must fit its register."""
        values = {(group, attr): value for group, attr, value in self.registers}
        mpidrs = kvm_mpidrs(config.vcpus)

        def ctlr(mpidr: int) -> int:
            register = icc_ctlr(mpidr)
            value = values.get((register.group, register.attr))
            if value is None:
                raise FormatError(f"the GIC's state has no ICC_CTLR_EL1 for MPIDR {mpidr:#x}")
            return value

        expected = gic_registers(mpidrs, config.gic_irqs, ctlr)
        if [(r.group, r.attr) for r in expected] != [(g, a) for g, a, _ in self.registers]:
            raise FormatError(
                f"the GIC's state has {len(self.registers)} registers that are not those of "
                f"a GICv3 with {config.vcpus} VCPUs ({len(expected)} registers)"
            )
        for register, (_, attr, value) in zip(expected, self.registers, strict=True):
            if value >> 8 * register.size:
                raise FormatError(f"GIC register {attr:#x} holds {value:#x}, too wide")
        return GicState(tuple(zip(expected, (v for _, _, v in self.registers), strict=True)))


@dataclass(frozen=True)
class MpStates:
    """Each VCPU's power state (kvm.uapi.MpState), in VCPU order."""

    states: tuple[int, ...]

    def encode(self) -> bytes:
        """The MPST payload: deterministic JSON."""
        return wire.dumps({"version": STATE_VERSION, "states": list(self.states)})

    @classmethod
    def decode(cls, payload: Payload) -> MpStates:
        """The states of an MPST payload, each one arm64 KVM takes."""
        raw = wire.loads(payload, "the VCPUs' power states")
        _version(raw, "MPST")
        states = wire.field(raw, "states", list)
        if not all(type(state) is int and state in MP_STATES for state in states):
            raise FormatError(
                f"a VCPU power state is not one of {sorted(MP_STATES)} (RUNNABLE, STOPPED, "
                "SUSPENDED)"
            )
        return cls(tuple(states))

    def check(self, config: MachineConfig) -> None:
        """One state per VCPU."""
        if len(self.states) != config.vcpus:
            raise FormatError(
                f"power states for {len(self.states)} VCPUs, for a machine of {config.vcpus}"
            )


def machine_gic(machine: Machine) -> GicState | None:
    """Every register of the machine's in-kernel GIC (its VCPUs stopped), or None for a
    machine without one."""
    if machine.irqchip is None:
        return None
    config = machine.config
    return save_gic(machine.irqchip, kvm_mpidrs(config.vcpus), config.gic_irqs)


def capture_mp_states(machine: Machine) -> MpStates:
    """KVM_GET_MP_STATE of every VCPU."""
    return MpStates(tuple(vcpu.get_mp_state() for vcpu in machine.vcpus))


def apply_mp_states(states: MpStates, machine: Machine) -> None:
    """KVM_SET_MP_STATE of every VCPU (the builder starts secondaries powered off)."""
    for vcpu, state in zip(machine.vcpus, states.states, strict=True):
        vcpu.set_mp_state(state)


def _version(raw: dict[str, Any], what: str) -> None:
    if wire.integer(raw, "version", 1, 1 << 16) != STATE_VERSION:
        raise FormatError(f"{what} state version {raw['version']}; this tagvisor reads 1")
