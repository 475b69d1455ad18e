"""MRS, MSR (register and immediate) and the SYS instructions (DC, IC, AT, TLBI).

Registers the VCPU's register file holds (``context.regs.sysregs``, keyed by the
ONE_REG id ``arm64_sys_reg(op0, op1, CRn, CRm, op2)``) are read and written there.
Others that bare-metal EL1 code touches (CPACR_EL1, TPIDR_EL1, CONTEXTIDR_EL1, ...) are
added to that dict with their reset value on first use (:data:`EXTRA_RESETS`), so they
migrate with the rest. PSTATE fields (NZCV, DAIF, CurrentEL, SPSel, TCO), SP_EL0,
the ID registers and the counter are computed. The MTE registers read and write the
core's :class:`~tagvisor.arch.MteState` (IRG advances RGSR_EL1, asynchronous faults
set TFSR_EL1); they and GMID_EL1 are UNDEFINED when the VM has no MTE, as KVM makes
them (HCR_EL2.ATA = 0 traps them; KVM injects UNDEF).

Anything else is UNDEFINED (EC 0x0), including writes to read-only registers. At EL0
only the EL0 registers are reachable; the ones SCTLR_EL1 gates (UCT, UMA, DZE, UCI)
trap with EC 0x18 when the gate is shut.
"""

from __future__ import annotations

import time
from typing import Final, Protocol

from tagvisor.arch.errors import TrappedInstruction, UndefinedInstruction
from tagvisor.arch.sysregs import GcrEl1, RgsrEl1, SctlrMte, TcrMte, Tfsr
from tagvisor.arch.tagmove import dc_gva
from tagvisor.cpu.alu import LITERAL, nzcv
from tagvisor.cpu.exceptions import EC_SYSREG, GuestException, sysreg_trap, undefined
from tagvisor.cpu.memory import GuestMemory
from tagvisor.cpu.mmu import WalkFault, permission_needed
from tagvisor.cpu.state import PSTATE_TCO, CpuState
from tagvisor.cpu.tagmem import VirtualTagMemory
from tagvisor.kvm.uapi import (
    ACTLR_EL1,
    AFSR0_EL1,
    AFSR1_EL1,
    AIDR_EL1,
    AMAIR_EL1,
    CCSIDR_EL1,
    CLIDR_EL1,
    CNTFRQ_EL0,
    CNTKCTL_EL1,
    CNTP_CTL_EL0,
    CNTP_CVAL_EL0,
    CNTPCT_EL0,
    CNTV_CTL_EL0,
    CNTV_CVAL_EL0_ENC,
    CNTV_TVAL_EL0,
    CNTVCT_EL0,
    CONTEXTIDR_EL1,
    CPACR_EL1,
    CSSELR_EL1,
    CTR_EL0,
    CURRENT_EL,
    DAIF,
    DCZID_EL0,
    GCR_EL1,
    GMID_EL1,
    ID_AA64DFR0_EL1,
    ID_AA64ISAR0_EL1,
    ID_AA64ISAR1_EL1,
    ID_AA64MMFR0_EL1,
    ID_AA64PFR0_EL1,
    ID_AA64PFR1_EL1,
    ISR_EL1,
    KVM_REG_ARM_TIMER_CVAL,
    MAIR_EL1,
    MDCCINT_EL1,
    MDSCR_EL1,
    MIDR_EL1,
    MPIDR_EL1,
    NZCV,
    OSDLR_EL1,
    OSLAR_EL1,
    OSLSR_EL1,
    PAR_EL1,
    REVIDR_EL1,
    RGSR_EL1,
    SCTLR_EL1,
    SP_EL0,
    SPSEL,
    TCO,
    TCR_EL1,
    TFSR_EL1,
    TFSRE0_EL1,
    TPIDR_EL0,
    TPIDR_EL1,
    TPIDRRO_EL0,
    TTBR0_EL1,
    TTBR1_EL1,
    arm64_sys_reg,
)

SYSREG_BASE: Final = arm64_sys_reg(0, 0, 0, 0, 0)


def encoding(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """The packed op0:op1:CRn:CRm:op2 that both MRS/MSR and ONE_REG ids use."""
    return op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2


#: The counter frequency QEMU's virt board used for years (62.5 MHz).
COUNTER_HZ: Final = 62_500_000

MIDR: Final = 0x000F_0000  # implementer 0x00: "reserved for software use"
MPIDR: Final = 0x8000_0000  # RES1 bit 31; Aff0 = 0 (the VCPU id is not known here)
#: Implemented features: EL0/EL1 AArch64 only, no FP/AdvSIMD (0xF).
ID_AA64PFR0: Final = 0x00FF_0011
#: LSE atomics (Atomic = 2).
ID_AA64ISAR0: Final = 0x0020_0000
#: LDAPR and LDAPUR/STLUR (LRCPC = 2).
ID_AA64ISAR1: Final = 0x0020_0000
#: 40-bit PA, 8-bit ASID, only the 4 KiB granule (TGran64 = 0xF, TGran16 = 0).
ID_AA64MMFR0: Final = 0x0F00_0002
ID_AA64DFR0: Final = 0x0000_0006
CTR: Final = 0x8444_C004  # 64-byte lines, PIPT I-cache
DCZID: Final = 0x4  # DC ZVA zeroes 64 bytes
GMID: Final = 0x6  # LDGM/STGM cover 256 bytes (16 tags)
CLIDR: Final = 0x0920_0003
CCSIDR: Final = 0x700F_E01A

#: Read-only registers with fixed values.
CONSTANTS: Final = {
    MIDR_EL1: MIDR,
    MPIDR_EL1: MPIDR,
    REVIDR_EL1: 0,
    ID_AA64PFR0_EL1: ID_AA64PFR0,
    ID_AA64ISAR0_EL1: ID_AA64ISAR0,
    ID_AA64ISAR1_EL1: ID_AA64ISAR1,
    ID_AA64MMFR0_EL1: ID_AA64MMFR0,
    ID_AA64DFR0_EL1: ID_AA64DFR0,
    CCSIDR_EL1: CCSIDR,
    CLIDR_EL1: CLIDR,
    AIDR_EL1: 0,
    ISR_EL1: 0,  # no interrupts are modelled
    CTR_EL0: CTR,
    DCZID_EL0: DCZID,
    CNTFRQ_EL0: COUNTER_HZ,
    OSLSR_EL1: 0,
}

#: Registers added to the VCPU's register file on first use, with their reset values.
EXTRA_RESETS: Final = {
    ACTLR_EL1: 0,
    CPACR_EL1: 0,
    AFSR0_EL1: 0,
    AFSR1_EL1: 0,
    AMAIR_EL1: 0,
    CONTEXTIDR_EL1: 0,
    TPIDR_EL1: 0,
    TPIDR_EL0: 0,
    TPIDRRO_EL0: 0,
    PAR_EL1: 0,
    MDSCR_EL1: 0,
    MDCCINT_EL1: 0,
    OSDLR_EL1: 0,
    CSSELR_EL1: 0,
    CNTKCTL_EL1: 0,
    CNTV_CTL_EL0: 0,
    KVM_REG_ARM_TIMER_CVAL: 0,
    CNTP_CTL_EL0: 0,
    CNTP_CVAL_EL0: 0,
}

#: Changing one of these changes what addresses translate to.
TRANSLATION_REGS: Final = frozenset({SCTLR_EL1, TCR_EL1, TTBR0_EL1, TTBR1_EL1, MAIR_EL1})
MTE_REGS: Final = frozenset({GCR_EL1, RGSR_EL1, TFSR_EL1, TFSRE0_EL1, GMID_EL1})
#: The bits of each writable MTE register an MSR keeps.
MTE_VALID: Final = {
    GCR_EL1: GcrEl1.VALID,
    RGSR_EL1: RgsrEl1.VALID,
    TFSR_EL1: Tfsr.VALID,
    TFSRE0_EL1: Tfsr.VALID,
}

SCTLR_DZE: Final = 1 << 14
SCTLR_UCT: Final = 1 << 15
SCTLR_UMA: Final = 1 << 9
SCTLR_UCI: Final = 1 << 26


class CoreHooks(Protocol):
    """What a system register write may need the core to forget."""

    def translation_changed(self) -> None:
        """TLB, fast paths and the PC->block cache are stale (TLBI, SCTLR, TCR...)."""
        ...

    def checks_changed(self) -> None:
        """Only tag-check decisions changed (PSTATE.TCO): the fast paths are stale."""
        ...

    def code_changed(self) -> None:
        """IC IALLU: drop every translated block."""
        ...


class SystemRegisters:
    """MRS/MSR/SYS semantics for one core."""

    def __init__(self, state: CpuState, memory: GuestMemory, hooks: CoreHooks) -> None:
        self.state = state
        self.memory = memory
        self.hooks = hooks
        self._epoch = time.perf_counter_ns()

    def counter(self) -> int:
        """CNTVCT_EL0: the virtual count since the core was created, at COUNTER_HZ."""
        return (time.perf_counter_ns() - self._epoch) * COUNTER_HZ // 1_000_000_000

    # -- MRS / MSR --------------------------------------------------------------------------

    def _trap(self, reg: int, rt: int, *, read: bool) -> GuestException:
        enc = reg - SYSREG_BASE
        iss = sysreg_trap(
            enc >> 14, (enc >> 11) & 7, (enc >> 7) & 15, (enc >> 3) & 15, enc & 7, rt, read=read
        )
        return GuestException(EC_SYSREG, iss)

    def _el0_gate(self, reg: int, rt: int, *, read: bool) -> None:
        """EL0 reaches only the EL0 registers, some of them behind SCTLR_EL1 gates."""
        sctlr = self.state.sysregs[SCTLR_EL1]
        if reg in (NZCV, TCO, TPIDR_EL0, DCZID_EL0, CNTFRQ_EL0):
            return
        if reg == TPIDRRO_EL0 and read:
            return
        if reg in (CNTVCT_EL0, CNTPCT_EL0) and read:
            kctl = self.state.sysregs.get(CNTKCTL_EL1, 0)
            if kctl & (2 if reg == CNTVCT_EL0 else 1):
                return
            raise self._trap(reg, rt, read=read)
        if reg == CTR_EL0 and read:
            if not sctlr & SCTLR_UCT:
                raise self._trap(reg, rt, read=read)
            return
        if reg == DAIF:
            if not sctlr & SCTLR_UMA:
                raise self._trap(reg, rt, read=read)
            return
        raise undefined()

    def mrs(self, reg: int, rt: int) -> int:
        """MRS Xt, <reg>: ``reg`` is the ONE_REG id of the encoding."""
        state = self.state
        if state.el == 0:
            self._el0_gate(reg, rt, read=True)
        if reg == NZCV:
            return nzcv(state.flags) << 28
        if reg == DAIF:
            return state.daif << 6
        if reg == TCO:
            return PSTATE_TCO if state.mte.tco else 0
        if reg == CURRENT_EL:
            return state.el << 2
        if reg == SPSEL:
            return state.spsel
        if reg == SP_EL0:
            if state.spsel == 0:
                raise undefined()  # SP_EL0 is the current SP: use SP
            return state.sp_banks[0]
        if reg in MTE_REGS:
            return self._mte_read(reg, rt)
        if reg == ID_AA64PFR1_EL1:
            return state.id_aa64pfr1  # the VCPU's value: the guest sees what KVM says
        if reg in (CNTVCT_EL0, CNTPCT_EL0):
            return self.counter()
        if reg == CNTV_TVAL_EL0:
            cval = state.sysregs.get(KVM_REG_ARM_TIMER_CVAL, 0)
            return (cval - self.counter()) & 0xFFFF_FFFF
        if reg == CNTV_CVAL_EL0_ENC:
            reg = KVM_REG_ARM_TIMER_CVAL
        if reg == OSLAR_EL1:
            raise undefined()  # write-only
        value = CONSTANTS.get(reg)
        if value is not None:
            return value
        op0, crn = (reg >> 14) & 3, (reg >> 7) & 15
        if op0 == 3 and (reg >> 11) & 7 == 0 and crn == 0 and 1 <= (reg >> 3) & 15 <= 7:
            return 0  # unallocated ID registers read as zero (Arm ARM D19.2)
        return self._file(reg)

    def _file(self, reg: int) -> int:
        sysregs = self.state.sysregs
        value = sysregs.get(reg)
        if value is None:
            reset = EXTRA_RESETS.get(reg)
            if reset is None:
                raise undefined()
            sysregs[reg] = value = reset
        return value

    def _mte_read(self, reg: int, rt: int) -> int:
        state = self.state
        if reg == GMID_EL1:
            return self._gmid(rt)
        if not state.tag_access:
            raise undefined()
        if reg == RGSR_EL1:
            return state.mte.rgsr.raw
        if reg == TFSR_EL1:
            return state.mte.tfsr_el1.raw
        if reg == TFSRE0_EL1:
            return state.mte.tfsre0_el1.raw
        return state.mte.gcr.raw

    def _gmid(self, rt: int) -> int:
        """GMID_EL1 is an ID register: HCR_EL2.ATA does not trap it, HCR_EL2.TID5 does
        (Arm ARM D19.2, GMID_EL1's accessibility), and KVM sets TID5 for a VM without
        MTE only from 7.0 (CoreContext.gmid_trap_ec)."""
        ec = self.state.gmid_trap_ec
        if ec is None:
            return GMID
        if ec == EC_SYSREG:
            raise self._trap(GMID_EL1, rt, read=True)
        raise undefined()

    def msr(self, reg: int, value: int, rt: int) -> None:
        """MSR <reg>, Xt."""
        state = self.state
        if state.el == 0:
            self._el0_gate(reg, rt, read=False)
        if reg == NZCV:
            state.flags = (LITERAL, (value >> 28) & 0xF, 0, 0)
        elif reg == DAIF:
            state.daif = (value >> 6) & 0xF
        elif reg == TCO:
            self._set_tco(bool(value & PSTATE_TCO))
        elif reg == SPSEL:
            state.set_mode(state.el, value & 1)
        elif reg == SP_EL0:
            if state.spsel == 0:
                raise undefined()
            state.sp_banks[0] = value
        elif reg in MTE_REGS:
            self._mte_write(reg, value)
        elif reg == CNTV_TVAL_EL0:
            tval = value & 0xFFFF_FFFF
            tval -= (tval >> 31) << 32
            state.sysregs[KVM_REG_ARM_TIMER_CVAL] = (self.counter() + tval) & (2**64 - 1)
        elif reg == OSLAR_EL1:
            pass  # the OS lock is not modelled
        else:
            if reg == CNTV_CVAL_EL0_ENC:
                reg = KVM_REG_ARM_TIMER_CVAL
            if reg in CONSTANTS or reg in (CURRENT_EL, ID_AA64PFR1_EL1, CNTVCT_EL0, CNTPCT_EL0):
                raise undefined()
            if (reg >> 14) & 3 == 3 and (reg >> 11) & 7 == 0 and (reg >> 7) & 15 == 0:
                raise undefined()  # the ID space is read-only
            self._file(reg)  # UNDEFINED unless known
            state.sysregs[reg] = value
            if reg == SCTLR_EL1:
                state.mte.sctlr = SctlrMte.from_raw(value)
            elif reg == TCR_EL1:
                state.mte.tcr = TcrMte.from_raw(value)
            if reg in TRANSLATION_REGS:
                self.hooks.translation_changed()

    def _mte_write(self, reg: int, value: int) -> None:
        state = self.state
        if not state.tag_access or reg == GMID_EL1:
            raise undefined()
        mte = state.mte
        if reg == GCR_EL1:
            mte.gcr = GcrEl1.from_raw(value & GcrEl1.VALID)
        elif reg == RGSR_EL1:
            mte.rgsr = RgsrEl1.from_raw(value & RgsrEl1.VALID)
        elif reg == TFSR_EL1:
            mte.tfsr_el1 = Tfsr.from_raw(value & Tfsr.VALID)
        else:
            mte.tfsre0_el1 = Tfsr.from_raw(value & Tfsr.VALID, "TFSRE0_EL1")
        # The register keeps its fields only (RES0 bits read 0), and so does the copy
        # KVM saves from it when the VCPU stops.
        state.sysregs[reg] = value & MTE_VALID[reg]

    def _set_tco(self, tco: bool) -> None:
        if self.state.mte.tco != tco:
            self.state.mte.tco = tco
            self.hooks.checks_changed()

    def msr_immediate(self, op1: int, op2: int, crm: int) -> None:
        """MSR <pstatefield>, #imm (Arm ARM C5.2, "MSR (immediate)")."""
        state = self.state
        field = (op1, op2)
        if field == (3, 4):  # TCO
            self._set_tco(bool(crm & 1))
            return
        if field in ((3, 6), (3, 7)):  # DAIFSet, DAIFClr
            if state.el == 0 and not state.sysregs[SCTLR_EL1] & SCTLR_UMA:
                iss = sysreg_trap(0, op1, 4, crm, op2, 31, read=False)
                raise GuestException(EC_SYSREG, iss)
            state.daif = state.daif | crm if op2 == 6 else state.daif & ~crm
            return
        if field == (0, 5) and state.el == 1:  # SPSel
            state.set_mode(1, crm & 1)
            return
        raise undefined()  # PAN, UAO, DIT, SSBS, ... are not implemented

    # -- SYS: cache maintenance, address translation, TLB maintenance ---------------------------

    def sys(self, op1: int, crn: int, crm: int, op2: int, rt: int, value: int) -> None:
        """SYS #op1, Cn, Cm, #op2, Xt."""
        state = self.state
        el = state.el
        if crn == 8:  # TLBI *: every variant flushes everything (always correct)
            if el == 0:
                raise undefined()
            self.hooks.translation_changed()
            return
        if crn == 7:
            if op1 == 3 and crm == 4 and op2 in (1, 3, 4):  # DC ZVA / GVA / GZVA
                self._dc_zero_or_tag(op2, value, rt)
                return
            if op1 == 0 and crm in (1, 5) and op2 == 0:  # IC IALLUIS / IC IALLU
                if el == 0:
                    raise undefined()
                self.hooks.code_changed()
                return
            if op1 == 0 and crm in (8, 9) and op2 <= 3:  # AT S1E1R/W, S1E0R/W (and P)
                if el == 0:
                    raise undefined()
                self._at(write=bool(op2 & 1), at_el=0 if op2 & 2 else 1, va=value)
                return
            if op1 == 3 and (crm, op2) == (5, 1):  # IC IVAU: stores are already tracked
                self._el0_cache_gate(el, op1, crn, crm, op2, rt)
                return
            if op1 == 3 and crm in (10, 11, 12, 13, 14) and op2 in (1, 3, 5):  # DC C*VA*
                self._el0_cache_gate(el, op1, crn, crm, op2, rt)
                return
            if op1 == 0 and (crm, op2) in ((6, 1), (6, 2), (6, 3), (6, 4), (6, 5), (6, 6)):
                if el == 0:
                    raise undefined()
                return  # DC IVAC / ISW / IG*: nothing to invalidate in a model
            if op1 == 0 and crm in (10, 14) and op2 in (2, 4, 6):  # DC CSW / CISW / CG*SW
                if el == 0:
                    raise undefined()
                return
        raise undefined()

    def _el0_cache_gate(self, el: int, op1: int, crn: int, crm: int, op2: int, rt: int) -> None:
        if el == 0 and not self.state.sysregs[SCTLR_EL1] & SCTLR_UCI:
            raise GuestException(EC_SYSREG, sysreg_trap(1, op1, crn, crm, op2, rt, read=False))

    def _dc_zero_or_tag(self, op2: int, value: int, rt: int) -> None:
        state = self.state
        if op2 == 1:
            if state.el == 0 and not state.sysregs[SCTLR_EL1] & SCTLR_DZE:
                raise GuestException(EC_SYSREG, sysreg_trap(1, 3, 7, 4, 1, rt, read=False))
            self.memory.zero_block(value, DCZID_BYTES)
            return
        memory = VirtualTagMemory(self.memory, write=True, el=state.el, pointer=value)
        try:
            dc_gva(state.mte, memory, value, zero_data=op2 == 4)
        except TrappedInstruction:
            raise GuestException(EC_SYSREG, sysreg_trap(1, 3, 7, 4, op2, rt, read=False)) from None
        except UndefinedInstruction:
            raise undefined() from None

    def _at(self, *, write: bool, at_el: int, va: int) -> None:
        """AT S1E{0,1}{R,W}: the translation (or the fault) into PAR_EL1."""
        memory = self.memory
        address = memory.canonical(va)
        try:
            entry = memory.mmu.translate(address)
        except WalkFault as fault:
            self.state.sysregs[PAR_EL1] = 1 << 11 | fault.fsc << 1 | 1
            return
        if not entry.perms & permission_needed(write=write, el=at_el):
            self.state.sysregs[PAR_EL1] = 1 << 11 | (0x0C + entry.level) << 1 | 1
            return
        # PAR_EL1: ATTR (63:56) the MAIR byte, PA (47:12), SH (8:7) inner shareable, bit 11 RES1.
        self.state.sysregs[PAR_EL1] = entry.attr << 56 | entry.pa | 3 << 7 | 1 << 11


DCZID_BYTES: Final = 4 << DCZID
