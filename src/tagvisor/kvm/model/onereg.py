"""A model VCPU's KVM_GET_REG_LIST, GET_ONE_REG and SET_ONE_REG over Linux's whole list.

The list and the reset values are the kernel's, measured (``regdata``; chosen by the
profile's ``regfile``). Registers the A64 core executes live where it reads them
(``VcpuRegisters.core`` and ``.sysregs``); the rest (FP/SIMD, timers, debug, PMU,
firmware pseudo-registers, the cache-geometry demux) are stored and returned, so a
VMM can restore a state taken from real KVM. ID registers (op0=3, op1=0, CRn=0,
except MPIDR_EL1) are per VM in Linux (kvm->arch.id_regs from 6.7, pfr0_csv2/csv3 in
6.1), so a write is kept in the VM and seen by every VCPU.
"""

from __future__ import annotations

import errno
import functools
from typing import TYPE_CHECKING, Final

from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model.idregs import id_set_outcome
from tagvisor.kvm.model.regdata import RegFile, regfile
from tagvisor.kvm.model.vcpu_regs import VcpuRegisters, core_word, is_sysreg
from tagvisor.kvm.uapi import (
    CORE_REG_PSTATE,
    ID_AA64PFR0_EL1,
    ID_AA64PFR1_EL1,
    ID_AA64PFR2_EL1,
    ID_PFR1_EL1,
    KVM_REG_ARM_COPROC_MASK,
    KVM_REG_ARM_CORE,
    MPIDR_EL1,
    SP_EL0,
    reg_size,
)

if TYPE_CHECKING:
    from tagvisor.kvm.model.vcpu import ModelVcpu

#: reset_mpidr(): bit 31 (RES1) with Aff0, Aff1, Aff2 from the VCPU id.
MPIDR_RES1: Final = 1 << 31
#: Core ids the A64 core keeps (x0-x30, sp, pc, pstate, sp_el1, elr_el1, spsr[]).
_CORE_WORDS_HELD: Final = 82


def data_of(vcpu: ModelVcpu) -> RegFile:
    """The measured register file of the VCPU's profile."""
    return regfile(vcpu.vm.profile.regfile)


def reg_list(vcpu: ModelVcpu) -> list[int]:
    """KVM_GET_REG_LIST in the kernel's order; MTE registers only with tag access."""
    return list(data_of(vcpu).lists[vcpu.tag_access])


def mpidr(vcpu_id: int) -> int:
    """reset_mpidr() (sys_regs.c): Aff0 = id[3:0], Aff1 = id[11:4], Aff2 = id[19:12]."""
    return (
        MPIDR_RES1 | (vcpu_id & 0xF) | ((vcpu_id >> 4) & 0xFF) << 8 | ((vcpu_id >> 12) & 0xFF) << 16
    )


def _held_by_core(reg: int) -> bool:
    if reg & KVM_REG_ARM_COPROC_MASK == KVM_REG_ARM_CORE:
        return (reg & 0xFFFF) < _CORE_WORDS_HELD
    return False


def is_vm_id_reg(reg: int) -> bool:
    """op0=3, op1=0, CRn=0 other than MPIDR_EL1: a per-VM, sanitised ID register."""
    return is_sysreg(reg) and reg & 0xFF80 == 0xC000 and reg != MPIDR_EL1


def is_fixed(reg: int) -> bool:
    """Other host facts that take only the value they read: CTR, CLIDR, AIDR, CCSIDR.

    Invariant in 6.1 (get/set_invariant_sys_reg, and the demux's CCSIDR); 6.12's
    writable CTR_EL0 and CLIDR_EL1 fields are not modelled (docs/kvm-abi.md).
    """
    demux = reg & KVM_REG_ARM_COPROC_MASK == 0x0011 << 16
    return demux or (is_sysreg(reg) and reg & 0xC780 == 0xC000 and reg >> 11 & 7 in (1, 3))


def reset(vcpu: ModelVcpu, el1_32bit: bool) -> VcpuRegisters:
    """The registers after KVM_ARM_VCPU_INIT: every listed one at the kernel's value."""
    data = data_of(vcpu)
    regs = VcpuRegisters.reset()
    for reg, value in data.resets[vcpu.tag_access].items():
        if _held_by_core(reg):
            regs.set_core(reg & 0xFFFF, value)  # ELR_EL1 and SPSR_EL1 read 0 here, not UNKNOWN
            continue
        if is_vm_id_reg(reg) or reg in (SP_EL0, ID_AA64PFR1_EL1):
            continue
        if is_sysreg(reg) and reg_size(reg) == 8 and not is_fixed(reg):
            regs.sysregs[reg] = value  # the A64 core reads and writes these
        else:
            regs.other[reg] = value
    regs.sysregs[MPIDR_EL1] = mpidr(vcpu.vcpu_id)
    if el1_32bit:
        regs.set_core(CORE_REG_PSTATE & 0xFFFF, data.pstate_el1_32bit)
    return regs


def id_value(vcpu: ModelVcpu, reg: int) -> int:
    """The VCPU's value of the per-VM ID register ``reg`` (what GET_ONE_REG reads)."""
    return _id_value(vcpu, reg)


def _id_value(vcpu: ModelVcpu, reg: int) -> int:
    written = vcpu.vm.id_regs.get(reg)
    return _id_reset(vcpu, reg) if written is None else written


def _id_reset(vcpu: ModelVcpu, reg: int) -> int:
    value = data_of(vcpu).resets[vcpu.tag_access].get(reg, 0)
    if reg == ID_AA64PFR1_EL1:  # read_id_reg: the MTE field only with MTE, at the host's level
        level = vcpu.vm.kvm.host_mte_level if vcpu.tag_access else 0
        value = value & ~0xF00 | level << 8
    elif reg == ID_AA64PFR2_EL1 and vcpu.tag_access:  # 6.17: the host's MTEFAR, MTESTOREONLY
        value |= vcpu.vm.kvm.host_mte_pfr2 & vcpu.vm.profile.pfr2_mte_fields
    return value


@functools.cache
def _listed_set(name: str, mte: bool) -> frozenset[int]:
    """The register list as a set: membership in the tuple costs a scan of ~260 ids."""
    return frozenset(regfile(name).lists[mte])


@functools.cache
def _plain(reg: int) -> bool:
    """Whether ``reg``'s value is simply the one stored (not a core, SP_EL0, a per-VM
    ID register or a fixed host fact): decided once per id."""
    return not (_held_by_core(reg) or reg == SP_EL0 or is_vm_id_reg(reg) or is_fixed(reg))


def _listed(vcpu: ModelVcpu, reg: int, ioctl: str) -> None:
    if reg not in _listed_set(vcpu.vm.profile.regfile, vcpu.tag_access):
        core_word(reg, ioctl)  # a core id's own EINVAL/ENOENT first, as kvm_arm_get_reg
        raise KvmError(errno.ENOENT, ioctl, f"register {reg:#x} is not in this VCPU's list")


def get(vcpu: ModelVcpu, reg: int) -> int:
    """GET_ONE_REG of a listed register."""
    _listed(vcpu, reg, "KVM_GET_ONE_REG")
    return _value(vcpu, reg)


def _value(vcpu: ModelVcpu, reg: int) -> int:
    regs = vcpu.regs
    if _held_by_core(reg):
        return regs.get_core(reg & 0xFFFF)
    if reg == SP_EL0:  # the same register as core regs.sp
        return regs.core[31]
    if is_vm_id_reg(reg) or is_fixed(reg):
        return _id_value(vcpu, reg) if is_vm_id_reg(reg) else regs.other[reg]
    return regs.sysregs[reg] if reg in regs.sysregs else regs.other[reg]


def get_many(vcpu: ModelVcpu, regs: list[int]) -> list[int]:
    """GET_ONE_REG of each of ``regs`` (all listed, else the first unlisted one's
    error), the list looked up once: a snapshot or a migration's pause reads every
    register of every VCPU, some 260 each."""
    listed = _listed_set(vcpu.vm.profile.regfile, vcpu.tag_access)
    for reg in regs:
        if reg not in listed:
            _listed(vcpu, reg, "KVM_GET_ONE_REG")
    sysregs, other = vcpu.regs.sysregs, vcpu.regs.other
    return [
        (sysregs[reg] if reg in sysregs else other[reg]) if _plain(reg) else _value(vcpu, reg)
        for reg in regs
    ]


def set_(vcpu: ModelVcpu, reg: int, value: int) -> None:
    """SET_ONE_REG of a listed register: ID registers as the profile's kernel does."""
    ioctl = "KVM_SET_ONE_REG"
    _listed(vcpu, reg, ioctl)
    if not 0 <= value < 1 << (8 * reg_size(reg)):
        raise KvmError(errno.EINVAL, ioctl, f"{value:#x} does not fit register {reg:#x}")
    regs = vcpu.regs
    if _held_by_core(reg):
        regs.set_core(reg & 0xFFFF, value)
    elif reg == SP_EL0:
        regs.core[31] = value
    elif is_vm_id_reg(reg):
        _set_id(vcpu, reg, value)
    elif is_fixed(reg):
        if value != regs.other[reg]:
            raise KvmError(
                errno.EINVAL, ioctl, f"{reg:#x} describes the host: it takes only its value"
            )
    elif reg in regs.sysregs:
        regs.sysregs[reg] = value
    else:
        regs.other[reg] = value


def _set_id(vcpu: ModelVcpu, reg: int, value: int) -> None:
    current = _id_value(vcpu, reg)
    # Fields are judged against the reset value (the limit), except after a 6.7+ VM
    # has run: then the measured table is relative to the value the VM ran with.
    frozen = vcpu.vm.has_run and data_of(vcpu).busy_after_run
    limit = current if frozen else _id_reset(vcpu, reg)
    code = id_set_outcome(
        data_of(vcpu), reg, limit, current, value, vcpu.vm.has_run, _lower_safe(vcpu, reg)
    )
    if code:
        why = "the VM has run" if code == -errno.EBUSY else "the kernel refuses this field change"
        raise KvmError(-code, "KVM_SET_ONE_REG", f"ID register {reg:#x}: {why}")
    if vcpu.vm.has_run and data_of(vcpu).busy_after_run:
        return  # only a value the kernel folds back to the current one gets here
    if value != current:
        vcpu.vm.id_regs[reg] = value


def _lower_safe(vcpu: ModelVcpu, reg: int) -> frozenset[int]:
    """Shifts of fields that may go down although the testbed never probed them going down.

    The testbed's CPU has neither FEAT_MTE_TAGGED_FAR nor FEAT_MTE_STORE_ONLY, so the
    measured table has them at 0; on a host with them, 6.17's writable mask and their
    FTR_LOWER_SAFE bits let a VMM lower them (arm64_check_features).
    """
    if reg != ID_AA64PFR2_EL1 or not vcpu.tag_access:
        return frozenset()
    fields = vcpu.vm.profile.pfr2_mte_fields & vcpu.vm.kvm.host_mte_pfr2
    return frozenset(shift for shift in range(0, 64, 4) if fields >> shift & 0xF)


#: The GIC fields of ID_AA64PFR0_EL1 (27:24) and ID_PFR1_EL1 (31:28).
GIC_FIELDS: Final = ((ID_AA64PFR0_EL1, 24), (ID_PFR1_EL1, 28))


def first_run(vcpu: ModelVcpu) -> None:
    """What the VM's first KVM_RUN changes in the ID registers.

    From 6.7, kvm_arch_vcpu_run_pid_change -> kvm_finalize_sys_regs() clears the GIC
    fields when there is no in-kernel irqchip, which the model never has.
    """
    if not vcpu.vm.profile.clears_gic_id_fields_at_run:
        return
    for reg, shift in GIC_FIELDS:
        vcpu.vm.id_regs[reg] = _id_value(vcpu, reg) & ~(0xF << shift)
