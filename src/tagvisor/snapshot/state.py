"""Plain State objects for each component, separate from the live objects (Firecracker's
persist pattern), and their exact, deterministic encodings.

``capture_*`` reads a live component into a State; ``apply_*`` writes a State into a
live component. States encode to bytes deterministically (sorted keys, no timestamps),
so save -> load -> save gives the same bytes. Decoders validate every field.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

import numpy as np

from tagvisor import wire
from tagvisor.kvm.api import Vcpu
from tagvisor.kvm.uapi import (
    CNTP_CTL_EL0,
    CNTPCT_EL0,
    CNTV_CTL_EL0,
    ELR_EL1,
    FPEXC32_EL2,
    ID_AA64PFR1_EL1,
    KVM_REG_ARM64_SYSREG,
    KVM_REG_ARM_COPROC_MASK,
    KVM_REG_ARM_TIMER_CNT,
    KVM_REG_SIZE_MASK,
    KVM_REG_SIZE_U64,
    OSLSR_EL1,
    SP_EL0,
    SPSR_EL1,
    arm64_core_reg,
    reg_size,
)
from tagvisor.snapshot.container import FormatError, Payload
from tagvisor.vmm.builder import config_problem
from tagvisor.vmm.linux.platform import LEGACY_GIC_IRQS
from tagvisor.vmm.machine import Machine, MachineConfig

VCPU_HEAD: Final = struct.Struct("<II")
REG: Final = struct.Struct("<QQ")
REG_ID: Final = struct.Struct("<Q")
MAX_REGS: Final = 4096
#: The widest register KVM has: an SVE Z register (KVM_REG_SIZE_U2048).
MAX_REG_BYTES: Final = 256
#: Registers the VMM must not write back (read-only ID registers).
READ_ONLY: Final = frozenset({ID_AA64PFR1_EL1})

#: System register ids the model also lists for state KVM keeps in core registers
#: (struct kvm_regs: sp is SP_EL0, then sp_el1, elr_el1, spsr[0] = SPSR_EL1).
CORE_ALIASES: Final = {
    SPSR_EL1: arm64_core_reg(0x48),
    ELR_EL1: arm64_core_reg(0x46),
    SP_EL0: arm64_core_reg(0x3E),
}
#: ONE_REG groups that describe the host rather than the guest: the cache geometry
#: (KVM_REG_ARM_DEMUX, CCSIDR_EL1 per cache level) and KVM's firmware
#: pseudo-registers (KVM_REG_ARM_FW, KVM_REG_ARM_FW_FEAT_BMAP).
HOST_GROUPS: Final = frozenset({0x0011 << 16, 0x0014 << 16, 0x0016 << 16})
#: The counters, host time that KVM offsets per VM anyway: KVM_REG_ARM_TIMER_CNT
#: (virtual; its id swaps CRm and op2 with CVAL's, a historical quirk) and
#: KVM_REG_ARM_PTIMER_CNT (CNTPCT_EL0; 6.12 lists it, 6.1 does not).
COUNTERS: Final = frozenset({KVM_REG_ARM_TIMER_CNT, CNTPCT_EL0})
#: Registers at KVM's reset value, which a destination without them loses nothing by
#: not having (arch/arm64/kvm/sys_regs.c): OSLSR_EL1 says the OS lock is implemented,
#: FPEXC32_EL2 is AArch32 state.
RESET_VALUES: Final = {
    OSLSR_EL1: 0x8,
    FPEXC32_EL2: 0x700,
}
#: CNTV_CTL_EL0 and CNTP_CTL_EL0: with ENABLE (bit 0) clear the timer is off,
#: whatever else the register says.
TIMER_CTLS: Final = frozenset({CNTV_CTL_EL0, CNTP_CTL_EL0})
#: What KVM gives registers whose reset value is UNKNOWN (reset_unknown(),
#: arch/arm64/kvm/sys_regs.c): still there, the guest never wrote the register.
KVM_UNKNOWN_RESET: Final = 0x1DE7EC7EDBADC0DE


class VcpuStateMismatch(FormatError):
    """The state holds registers this VCPU does not have, with values that matter."""


def droppable(reg: int, value: int, state: dict[int, int], listed: set[int]) -> bool:
    """Whether a register the destination VCPU lacks can be left behind.

    Yes for: a zero value, KVM's marker for a register never written, or a known
    reset value; a disabled timer; the host's own facts (identification and cache-ID
    registers, op0=3 CRn=0, and CCSIDR; firmware pseudo-registers; the counters); and
    the model's system-register names for core registers, when the core register
    carries the same value. Anything else is guest state the destination would lose.
    Since the model lists the kernel's whole register file, a state moving between
    the model and real KVM of the same kernel leaves nothing behind; these rules
    matter across kernels (6.12's physical timer into 6.1) and for older snapshots.
    """
    if value in (0, KVM_UNKNOWN_RESET) or reg in COUNTERS or RESET_VALUES.get(reg) == value:
        return True
    if reg in TIMER_CTLS and not value & 1:
        return True
    if reg & KVM_REG_ARM_COPROC_MASK in HOST_GROUPS:
        return True
    if reg & KVM_REG_ARM_COPROC_MASK == KVM_REG_ARM64_SYSREG and reg & 0xC780 == 0xC000:
        return True  # op0 = 3, CRn = 0: ID_*, MIDR/MPIDR, CTR/CLIDR/CCSIDR and CSSELR
    alias = CORE_ALIASES.get(reg)
    return alias is not None and alias in listed and state.get(alias) == value


@dataclass(frozen=True)
class MachineState:
    """Configuration that must match for a guest to continue: layout, MTE, profile."""

    config: MachineConfig
    profile: str
    mte_level: int

    def encode(self) -> bytes:
        """The CONF payload as deterministic JSON; a config without extra devices leaves ``devices``
        out, so it reads as before 1.2."""
        config = asdict(self.config)
        if not config["devices"]:
            del config["devices"]  # a machine without extra devices reads as before 1.2
        if config["irqchip"] == "none":
            del config["irqchip"]  # a machine without a GIC reads as before 1.3
            del config["gic_irqs"]
        return wire.dumps({"config": config, "profile": self.profile, "mte_level": self.mte_level})

    @classmethod
    def decode(cls, payload: Payload) -> MachineState:
        """The state from a CONF payload, every field checked (FormatError if one is wrong)."""
        return cls.from_json(wire.loads(payload, "machine state"))

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> MachineState:
        """The state from its JSON object, every field's type and range checked."""
        config = dict(wire.field(raw, "config", dict))
        devices = _devices(config.pop("devices", []))
        config.setdefault("irqchip", "none")  # absent before 1.3
        # Absent before the GIC's size was part of the shape: it then had 128.
        config.setdefault("gic_irqs", LEGACY_GIC_IRQS if config["irqchip"] == "gicv3" else 0)
        names = {f.name: f.type for f in fields(MachineConfig) if f.name != "devices"}
        if set(config) != set(names):
            raise FormatError(
                f"machine config has fields {sorted(config)}, expected {sorted(names)}"
            )
        for name, value in config.items():
            expected = (
                bool
                if names[name] in ("bool", bool)
                else (str if names[name] in ("str", str) else int)
            )
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise FormatError(f"machine config field {name!r} has the wrong type")
        shape = MachineConfig(**config, devices=devices)
        problem = config_problem(shape)
        if problem is not None:
            raise FormatError(f"the machine's shape is impossible: {problem}")
        profile = wire.field(raw, "profile", str)
        if len(profile) > 64:
            raise FormatError("the machine's kernel profile name is longer than 64 characters")
        return cls(shape, profile, wire.integer(raw, "mte_level", 0, 15))


def _devices(raw: object) -> tuple[tuple[str, int], ...]:
    """The extra devices of a machine config: [[kind, base], ...] (absent before 1.2)."""
    if not isinstance(raw, list) or not all(
        isinstance(entry, list)
        and len(entry) == 2
        and isinstance(entry[0], str)
        and type(entry[1]) is int
        and 0 <= entry[1] < 1 << 64
        for entry in raw
    ):
        raise FormatError("the machine config's devices are not [[kind, base], ...]")
    return tuple((name, base) for name, base in raw)


@dataclass(frozen=True)
class VcpuState:
    """Every register KVM_GET_REG_LIST names, with its value.

    64-bit registers encode as the VCPU section (id, value pairs). Others (a real
    KVM's 32-bit FPSR/FPCR and 128-bit V registers) encode separately, as a VREG
    section that follows their VCPU section and is written only when there are any:
    a reader from before them stops at the unknown mandatory section instead of
    misreading the VCPU one.
    """

    vcpu_id: int
    registers: tuple[tuple[int, int], ...]

    def _narrow(self) -> list[tuple[int, int]]:
        return [(reg, value) for reg, value in self.registers if reg_size(reg) == 8]

    def encode(self) -> bytes:
        """The VCPU payload: VCPU id and count, then (id, value) for each 64-bit register."""
        narrow = self._narrow()
        head = VCPU_HEAD.pack(self.vcpu_id, len(narrow))
        return head + b"".join(REG.pack(reg, value) for reg, value in narrow)

    def encode_wide(self) -> bytes | None:
        """The VREG payload: (id, value in the id's size) for each non-64-bit register."""
        wide = [(reg, value) for reg, value in self.registers if reg_size(reg) != 8]
        if not wide:
            return None
        body = b"".join(
            REG_ID.pack(reg) + value.to_bytes(reg_size(reg), "little") for reg, value in wide
        )
        return VCPU_HEAD.pack(self.vcpu_id, len(wide)) + body

    def with_wide(self, payload: Payload) -> VcpuState:
        """This state plus the registers of a VREG payload for the same VCPU."""
        if len(payload) < VCPU_HEAD.size:
            raise FormatError("a VREG section is shorter than its header")
        vcpu_id, count = VCPU_HEAD.unpack_from(payload)
        if vcpu_id != self.vcpu_id:
            raise FormatError(f"a VREG section for VCPU {vcpu_id} follows VCPU {self.vcpu_id}")
        if count > MAX_REGS:
            raise FormatError(f"a VREG section claims {count} registers")
        offset, wide = VCPU_HEAD.size, []
        for _ in range(count):
            if offset + REG_ID.size > len(payload):
                raise FormatError("a VREG section ends inside a register id")
            (reg,) = REG_ID.unpack_from(payload, offset)
            size = reg_size(reg)
            if size == 8 or size > MAX_REG_BYTES:
                raise FormatError(f"register {reg:#x} of {size} bytes does not belong in VREG")
            offset += REG_ID.size
            if offset + size > len(payload):
                raise FormatError(f"a VREG section ends inside register {reg:#x}")
            wide.append((reg, int.from_bytes(payload[offset : offset + size], "little")))
            offset += size
        if offset != len(payload):
            raise FormatError("a VREG section has bytes after its last register")
        registers = dict(self.registers)
        if len({reg for reg, _ in wide} | registers.keys()) != len(wide) + len(registers):
            raise FormatError("a register appears twice in a VCPU's state")
        return VcpuState(self.vcpu_id, tuple(sorted([*self.registers, *wide])))

    @classmethod
    def decode(cls, payload: Payload) -> VcpuState:
        """The state from a VCPU payload, its length and register widths checked (FormatError if
        wrong); a VREG section adds the wide registers later (:meth:`with_wide`)."""
        if len(payload) < VCPU_HEAD.size:
            raise FormatError("a VCPU section is shorter than its header")
        vcpu_id, count = VCPU_HEAD.unpack_from(payload)
        if count > MAX_REGS or len(payload) != VCPU_HEAD.size + count * REG.size:
            raise FormatError(f"a VCPU section claims {count} registers in {len(payload)} bytes")
        registers = tuple(REG.iter_unpack(payload[VCPU_HEAD.size :]))
        ids = np.frombuffer(payload, "<u8", 2 * count, VCPU_HEAD.size)[::2]
        if np.any(ids & KVM_REG_SIZE_MASK != KVM_REG_SIZE_U64):
            raise FormatError("a VCPU section holds a register that is not 64 bits wide")
        return cls(vcpu_id, registers)


# -- capture and apply ----------------------------------------------------------------


def capture_machine(machine: Machine) -> MachineState:
    """The shape of ``machine`` as CONF carries it: its config, the backend's ABI profile and the
    MTE level in VCPU 0's ID_AA64PFR1_EL1."""
    profile = machine.kvm.abi_profile()
    level = machine.vcpus[0].get_one_reg(ID_AA64PFR1_EL1) >> 8 & 0xF
    return MachineState(machine.config, profile, level)


def vcpu_sections(state: VcpuState) -> list[tuple[bytes, bytes]]:
    """(tag, payload) of the sections that carry ``state``: VCPU, then VREG if needed."""
    sections = [(b"VCPU", state.encode())]
    wide = state.encode_wide()
    if wide is not None:
        sections.append((b"VREG", wide))
    return sections


def constant_register(reg_id: int) -> bool:
    """Whether a register keeps its value while the guest runs, so that it can be read
    before a migration's pause (:func:`preread_vcpu`).

    Yes for the ID space (op0 3, CRn 0, op1 0, 1 or 3: MIDR to the ID_AA64 registers,
    CLIDR, AIDR, CTR_EL0), which the guest can only read (an MSR to it is UNDEFINED,
    Arm ARM D19.2; CSSELR, op1 2, is the one writable register there), and for the
    groups that describe the host (:data:`HOST_GROUPS`), which only the VMM writes.
    """
    if reg_id & KVM_REG_ARM_COPROC_MASK in HOST_GROUPS:
        return True
    if reg_id & KVM_REG_ARM_COPROC_MASK != KVM_REG_ARM64_SYSREG:
        return False
    op0, op1, crn = reg_id >> 14 & 3, reg_id >> 11 & 7, reg_id >> 7 & 0xF
    return op0 == 3 and crn == 0 and op1 in (0, 1, 3)


@dataclass(frozen=True)
class VcpuPreread:
    """A running VCPU's register list and the values of its constant registers."""

    ids: tuple[int, ...]
    constants: dict[int, int]


def preread_vcpu(vcpu: Vcpu) -> VcpuPreread:
    """What :func:`capture_vcpu` need not read again after a pause: KVM_GET_REG_LIST
    (fixed once the VCPU is initialised) and each :func:`constant_register`'s value."""
    ids = tuple(vcpu.get_reg_list())
    constant = [reg for reg in ids if constant_register(reg)]
    return VcpuPreread(ids, dict(zip(constant, vcpu.get_registers(constant), strict=True)))


def capture_vcpu(vcpu_id: int, vcpu: Vcpu, preread: VcpuPreread | None = None) -> VcpuState:
    """Every register KVM_GET_REG_LIST names for ``vcpu``, with its value, sorted by id
    (read in one call where the backend can: ``Vcpu.get_registers``). With ``preread``
    (taken from this VCPU while it ran) only the registers that can change are read."""
    if preread is None:
        ids = vcpu.get_reg_list()
        registers = tuple(sorted(zip(ids, vcpu.get_registers(ids), strict=True)))
        return VcpuState(vcpu_id, registers)
    changing = [reg for reg in preread.ids if reg not in preread.constants]
    values = dict(zip(changing, vcpu.get_registers(changing), strict=True))
    values.update(preread.constants)
    return VcpuState(vcpu_id, tuple(sorted(values.items())))


def apply_vcpu(state: VcpuState, vcpu: Vcpu, holds: dict[int, int] | None = None) -> list[int]:
    """Write ``state`` into ``vcpu``; return the ids left behind (see :func:`droppable`).

    A state from the other kind of backend (the model's VCPU into a real one, or the
    reverse) names registers this VCPU lacks; nothing is written unless every one of
    them may be dropped. ``holds``: every register of the VCPU's KVM_GET_REG_LIST with
    the value it holds now (a tagvisor.snapshot.baseline), whose equal values are not
    written again, and which stands for the list.
    """
    listed = set(holds) if holds else set(vcpu.get_reg_list())
    values = dict(state.registers)
    left = [reg for reg, _ in state.registers if reg not in listed and reg not in READ_ONLY]
    kept = [reg for reg in left if not droppable(reg, values[reg], values, listed)]
    if kept:
        names = ", ".join(f"{reg:#x}={values[reg]:#x}" for reg in kept[:16])
        raise VcpuStateMismatch(
            f"VCPU {state.vcpu_id}: this VCPU has no register {names}"
            + (f" (and {len(kept) - 16} more)" if len(kept) > 16 else "")
            + "; the guest's state would be lost here"
        )
    known = holds or {}
    vcpu.set_registers(
        [
            (reg, value)
            for reg, value in state.registers
            if reg in listed and reg not in READ_ONLY and known.get(reg) != value
        ]
    )
    return left
