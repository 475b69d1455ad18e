"""The names translated blocks call, bound to one core's state and memory.

Blocks are compiled against this dict as their globals, so a helper is one global
lookup away. The single-letter-ish names keep generated source short; each is listed
here with what it does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tagvisor.cpu import alu
from tagvisor.cpu.atomics import AtomicOps
from tagvisor.cpu.bits import ror
from tagvisor.cpu.exceptions import (
    EC_BRK64,
    EC_SP_ALIGN,
    EC_SVC64,
    GuestException,
    HypercallExit,
    WaitForInterrupt,
    undefined,
)
from tagvisor.cpu.mte import MteOps
from tagvisor.kvm.uapi import SCTLR_EL1

if TYPE_CHECKING:
    from tagvisor.cpu.core import A64Core

SCTLR_SA = 1 << 3
SCTLR_SA0 = 1 << 4


def build_namespace(core: A64Core) -> dict[str, Any]:
    """Globals for the blocks of ``core``."""
    state = core.state
    memory = core.memory
    sysregs = core.sysregs
    mte = MteOps(state, memory)
    atomics = AtomicOps(state, memory)

    def sp_check() -> None:
        """SP alignment check (SCTLR_EL1.SA for EL1, SA0 for EL0): EC 0x26."""
        if state.sysregs[SCTLR_EL1] & (SCTLR_SA if state.el else SCTLR_SA0):
            raise GuestException(EC_SP_ALIGN)

    def svc(imm: int) -> GuestException:
        return GuestException(EC_SVC64, imm, return_offset=4)

    def hvc(imm: int) -> Exception:
        # HVC at EL0 is UNDEFINED; at EL1 it goes to KVM (which knows only SMCCC/PSCI).
        return undefined() if state.el == 0 else HypercallExit(imm)

    def wait_for_interrupt() -> None:
        # No interrupts are modelled, so WFI completes at once (the architecture lets it
        # complete spuriously); the core may still give the host CPU back first.
        if core.wfi_sleep > 0:
            raise WaitForInterrupt

    def brk(imm: int) -> GuestException:
        return GuestException(EC_BRK64, imm)

    def read_unprivileged(va: int, size: int) -> int:
        return int.from_bytes(memory.load(va, size, el=0), "little")

    def write_unprivileged(va: int, size: int, value: int) -> None:
        memory.store(va, value.to_bytes(size, "little"), el=0)

    helpers: dict[str, Callable[..., Any]] = {
        # flags and arithmetic
        "NZCV": alu.nzcv,
        "CARRY": alu.carry_flag,
        "ADC": alu.add_with_carry,
        "SDIV": alu.sdiv,
        "ROR": ror,
        "RBIT": alu.rbit,
        "REV": alu.rev_bytes,
        "CLS": alu.cls,
        "SMULH": alu.smulh,
        # exceptions and system
        "UNDEF": undefined,
        "SVC": svc,
        "HVC": hvc,
        "BRK": brk,
        "SPCHK": sp_check,
        "WFI": wait_for_interrupt,
        "ERET": core.exception_return,
        "MRS": sysregs.mrs,
        "MSR": sysregs.msr,
        "MSRI": sysregs.msr_immediate,
        "SYS": sysregs.sys,
        # memory beyond the fast paths
        "RU": read_unprivileged,
        "WU": write_unprivileged,
        "LDA": atomics.load_ordered,
        "STL": atomics.store_ordered,
        "LDX": atomics.load_exclusive,
        "STX": atomics.store_exclusive_int,
        "LDXP": atomics.load_exclusive_pair,
        "STXP": atomics.store_exclusive_pair,
        "CLREX": atomics.clear_monitor,
        "RMW": atomics.rmw,
        "CAS": atomics.cas,
        "CASP": atomics.casp,
        # MTE
        "IRG": mte.irg,
        "GMI": mte.gmi,
        "ADDG": mte.addg,
        "SUBG": mte.subg,
        "LDG": mte.ldg,
        "STG": mte.stg,
        "STGP": mte.stgp,
        "LDGM": mte.ldgm,
        "STGM": mte.stgm,
        "STZGM": mte.stzgm,
    }
    namespace: dict[str, Any] = {"C": state, "CT": alu.COND_TABLE, "__builtins__": __builtins__}
    namespace.update(helpers)
    namespace.update(memory.fast)
    return namespace
