"""Taking an exception to EL1 and returning from one (ERET).

AArch64.TakeException for a synchronous exception routed to EL1: SPSR_EL1 gets PSTATE,
ELR_EL1 the preferred return address, ESR_EL1 the syndrome, FAR_EL1 the fault address
when the class has one; PSTATE becomes EL1h with D, A, I and F masked, IL, SS and BTYPE
cleared and - with FEAT_MTE - TCO set (Linux clears it again on kernel entry:
mte_disable_tco_entry). The vector is VBAR_EL1 plus 0x000 (current EL with SP_EL0),
0x200 (current EL with SP_ELx) or 0x400 (lower EL, AArch64); synchronous is offset 0.

AArch64.ExceptionReturn: PSTATE from SPSR_EL1, PC from ELR_EL1. A return to a mode
that cannot be (AArch32, EL2, EL3, EL0 with SP_EL1) is an illegal exception return:
EL and SP stay, PSTATE.IL is set, and the next instruction takes an Illegal
Execution state exception (EC 0x0E).
"""

from __future__ import annotations

from typing import Final

from tagvisor.cpu.bits import M64
from tagvisor.cpu.exceptions import GuestException
from tagvisor.cpu.state import PSTATE_IL, CpuState
from tagvisor.kvm.uapi import ELR_EL1, ESR_EL1, FAR_EL1, SPSR_EL1, VBAR_EL1

VECTOR_CURRENT_SP0: Final = 0x000
VECTOR_CURRENT_SPX: Final = 0x200
VECTOR_LOWER_A64: Final = 0x400
#: PSTATE.SS (bit 21), IL (bit 20) and BTYPE (bits 11:10) are cleared on entry.
_CLEARED_ON_ENTRY: Final = (1 << 21) | PSTATE_IL | (3 << 10)
#: Legal SPSR.M[4:0] values for a return from EL1: EL0t, EL1t, EL1h.
_LEGAL_MODES: Final = (0b00000, 0b00100, 0b00101)


def take_exception(state: CpuState, exc: GuestException, pc: int) -> int:
    """Enter EL1 for ``exc`` raised by the instruction at ``pc``; return the vector."""
    sysregs = state.sysregs
    from_el = state.el
    sysregs[SPSR_EL1] = state.pstate()
    sysregs[ELR_EL1] = (pc + exc.return_offset) & M64
    sysregs[ESR_EL1] = exc.esr_for(from_el)
    if exc.far is not None:
        sysregs[FAR_EL1] = exc.far & M64
    if from_el == 0:
        offset = VECTOR_LOWER_A64
    elif state.spsel:
        offset = VECTOR_CURRENT_SPX
    else:
        offset = VECTOR_CURRENT_SP0
    state.set_mode(1, 1)
    state.daif = 0xF
    state.mte.tco = True
    state.pstate_rest &= ~_CLEARED_ON_ENTRY
    state.monitor = None
    return ((sysregs[VBAR_EL1] & ~0x7FF) + offset) & M64


def exception_return(state: CpuState) -> int:
    """ERET at EL1: restore PSTATE from SPSR_EL1 and return ELR_EL1."""
    sysregs = state.sysregs
    spsr = sysregs[SPSR_EL1]
    if spsr & 0x1F not in _LEGAL_MODES:
        keep = state.el << 2 | state.spsel
        spsr = (spsr & ~0x1F) | keep | PSTATE_IL
    state.load_pstate(spsr)
    state.monitor = None
    return sysregs[ELR_EL1] & M64
