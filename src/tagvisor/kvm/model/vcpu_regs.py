"""A model VCPU's register file as KVM_GET/SET_ONE_REG and KVM_GET_REG_LIST see it.

arch/arm64/kvm/guest.c (core registers) and sys_regs.c (system registers). The MTE
registers GCR_EL1, RGSR_EL1, TFSR_EL1 and TFSRE0_EL1 are MTE_REG entries: reset to
KVM's "unknown" pattern, stored as given without validation, and hidden - ENOENT from
ONE_REG, absent from the reg list - unless the VM has MTE (mte_visibility).
ID_AA64PFR1_EL1.MTE reads 0 unless MTE is enabled.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Final

from tagvisor.cpu.bus import CORE_SP_EL1
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.uapi import (
    ELR_EL1,
    ESR_EL1,
    FAR_EL1,
    GCR_EL1,
    KVM_REG_ARM64,
    KVM_REG_ARM64_SYSREG,
    KVM_REG_ARM_COPROC_MASK,
    KVM_REG_ARM_CORE,
    KVM_REG_SIZE_MASK,
    KVM_REG_SIZE_U64,
    MAIR_EL1,
    RGSR_EL1,
    SCTLR_EL1,
    SPSR_EL1,
    TCR_EL1,
    TFSR_EL1,
    TFSRE0_EL1,
    TTBR0_EL1,
    TTBR1_EL1,
    VBAR_EL1,
    arm64_core_reg,
)

#: sys_regs.c reset_unknown fills registers with this pattern.
RESET_UNKNOWN: Final = 0x1DE7EC7EDBADC0DE

MTE_REGS: Final = (GCR_EL1, RGSR_EL1, TFSR_EL1, TFSRE0_EL1)

#: KVM's reset SCTLR_EL1 (RES1 bits, MMU and caches off).
SCTLR_EL1_RESET: Final = 0x00C5_0078
#: PSTATE after KVM_ARM_VCPU_INIT: EL1h with D, A, I, F masked.
PSTATE_RESET: Final = 0x3C5

# struct kvm_regs, in 32-bit words: user_pt_regs {regs[31], sp (SP_EL0), pc, pstate}
# at 0..67, then sp_el1 at 68, elr_el1 at 70, spsr[5] at 72..81 (fp_regs not modelled).
SP_EL1_WORD: Final = 68
ELR_EL1_WORD: Final = 70
SPSR_WORD: Final = 72
_CORE_WORDS: Final = SPSR_WORD + 2 * 5
CORE_IDS: Final = tuple(arm64_core_reg(word) for word in range(0, _CORE_WORDS, 2))
# ``VcpuRegisters.core`` is laid out as the A64 core reads it (tagvisor.cpu.bus, with
# SP_EL1 at CORE_SP_EL1, spsr[1..4] after it); elr_el1 and spsr[0] (SPSR_EL1) are the
# same storage as the ELR_EL1 / SPSR_EL1 sysregs.


def _sysreg_resets() -> dict[int, int]:
    values = dict.fromkeys(
        (MAIR_EL1, TTBR0_EL1, TTBR1_EL1, VBAR_EL1, ESR_EL1, FAR_EL1, ELR_EL1, SPSR_EL1),
        RESET_UNKNOWN,
    )
    values.update({TCR_EL1: 0, SCTLR_EL1: SCTLR_EL1_RESET})
    values.update(dict.fromkeys(MTE_REGS, RESET_UNKNOWN))
    return values


@dataclass
class VcpuRegisters:
    """x0-x30, sp, pc, pstate and the EL1 system registers a guest kernel uses.

    ``other`` holds the listed registers the A64 core does not execute (FP/SIMD,
    firmware pseudo-registers, the cache-geometry demux, host facts), kept for ONE_REG.
    """

    core: list[int]
    sysregs: dict[int, int]
    other: dict[int, int] = field(default_factory=dict)

    @classmethod
    def reset(cls) -> VcpuRegisters:
        """The register file after KVM_ARM_VCPU_INIT: KVM's reset values."""
        core = [0] * (CORE_SP_EL1 + 1 + 4)  # x0-x30, sp, pc, pstate, sp_el1, spsr[1..4]
        core[33] = PSTATE_RESET
        return cls(core=core, sysregs=_sysreg_resets())

    def get_core(self, word: int) -> int:
        """A core register by its KVM_REG_ARM_CORE word offset (checked by core_word)."""
        if word == ELR_EL1_WORD:
            return self.sysregs[ELR_EL1]
        if word == SPSR_WORD:
            return self.sysregs[SPSR_EL1]
        return self.core[_core_slot(word)]

    def set_core(self, word: int, value: int) -> None:
        """Write a core register by its word offset in struct kvm_regs."""
        if word == ELR_EL1_WORD:
            self.sysregs[ELR_EL1] = value
        elif word == SPSR_WORD:
            self.sysregs[SPSR_EL1] = value
        else:
            self.core[_core_slot(word)] = value

    @property
    def pc(self) -> int:
        """The program counter."""
        return self.core[32]

    @pc.setter
    def pc(self, value: int) -> None:
        """The program counter."""
        self.core[32] = value & (2**64 - 1)

    def x(self, n: int) -> int:
        """General-purpose register Xn."""
        return self.core[n]


def check_reg_id(reg_id: int, ioctl: str) -> None:
    """The common id check of kvm_arm_get/set_reg: an arm64 id with a size."""
    if (reg_id & ~KVM_REG_SIZE_MASK) >> 32 != KVM_REG_ARM64 >> 32:
        raise KvmError(errno.EINVAL, ioctl, f"{reg_id:#x} is not an arm64 register id")


def _core_slot(word: int) -> int:
    if word < SP_EL1_WORD:
        return word // 2
    if word == SP_EL1_WORD:
        return CORE_SP_EL1
    return CORE_SP_EL1 + (word - SPSR_WORD) // 2  # spsr[1..4]


def core_word(reg_id: int, ioctl: str) -> int | None:
    """The word offset of a core register id (validated), None if not a core id."""
    if reg_id & KVM_REG_ARM_COPROC_MASK != KVM_REG_ARM_CORE:
        return None
    offset = reg_id & 0xFFFF
    if offset >= _CORE_WORDS:
        # fp_regs (V0-V31, FPSR, FPCR) are not modelled.
        raise KvmError(errno.ENOENT, ioctl, f"core register offset {offset} is not modelled")
    if reg_id & KVM_REG_SIZE_MASK != KVM_REG_SIZE_U64 or offset % 2:
        raise KvmError(errno.EINVAL, ioctl, "core registers are 64-bit and 64-bit aligned")
    return offset


def is_sysreg(reg_id: int) -> bool:
    """Whether a ONE_REG id names a system register (ARM64_SYS_REG)."""
    return reg_id & KVM_REG_ARM_COPROC_MASK == KVM_REG_ARM64_SYSREG
