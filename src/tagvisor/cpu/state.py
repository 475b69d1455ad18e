"""The architectural state the translated code works on.

``x`` holds X0-X30 and, in slot 31, the *current* stack pointer: SP_EL0 at EL0 or
with SPSel = 0, SP_EL1 otherwise. The other stack pointer waits in ``sp_banks``. With
the SP in slot 31 a translated instruction reads ``x[31]`` for "SP" without asking
which one (the Arm ARM's SP[] accessor does that choice per access). XZR never lives
in the file: the translator turns reads of it into 0 and drops writes.

PSTATE is kept as separate fields (the hot ones: lazy NZCV, EL, SPSel, TCO, DAIF) plus
``pstate_rest`` for bits tagvisor only carries around (PAN, UAO, SS, IL, SSBS, ...).
"""

from __future__ import annotations

from typing import Final

from tagvisor.arch.state import MteState
from tagvisor.cpu.alu import LITERAL, Flags, nzcv

PSTATE_NZCV_SHIFT: Final = 28
PSTATE_TCO: Final = 1 << 25
PSTATE_IL: Final = 1 << 20
PSTATE_DAIF_SHIFT: Final = 6
#: Bits carried unchanged between SPSR and PSTATE that tagvisor does not interpret.
PSTATE_REST_MASK: Final = (1 << 24) | (1 << 23) | (1 << 22) | (1 << 21) | (1 << 20) | (1 << 12)
PSTATE_REST_MASK_BTYPE: Final = 3 << 10


class CpuState:
    """Registers and PSTATE of one A64 processing element at EL0/EL1."""

    __slots__ = (
        "daif",
        "el",
        "flags",
        "gmid_trap_ec",
        "id_aa64pfr1",
        "monitor",
        "mte",
        "pc",
        "pstate_rest",
        "sp_banks",
        "spsel",
        "sysregs",
        "tag_access",
        "x",
    )

    def __init__(self, sysregs: dict[int, int], mte: MteState, tag_access: bool) -> None:
        self.x: list[int] = [0] * 32
        self.flags: Flags = (LITERAL, 0, 0, 0)
        self.pc = 0
        self.el = 1
        self.spsel = 1
        self.daif = 0xF
        self.pstate_rest = 0
        #: [SP_EL0, SP_EL1]; the entry for the SP in use is stale (x[31] is current).
        self.sp_banks = [0, 0]
        self.sysregs = sysregs
        self.mte = mte
        self.tag_access = tag_access
        #: The VCPU's ID_AA64PFR1_EL1 and GMID_EL1's trap (CoreContext): set at each run.
        self.id_aa64pfr1 = 0
        self.gmid_trap_ec: int | None = None
        #: The exclusive monitor: (physical address, size) after LDXR, else None.
        self.monitor: tuple[int, int] | None = None

    # -- stack pointer selection --------------------------------------------------------

    def sp_index(self) -> int:
        """0 when SP_EL0 is the current SP, 1 for SP_EL1."""
        return 1 if self.el == 1 and self.spsel else 0

    def set_mode(self, el: int, spsel: int) -> None:
        """Change EL / SPSel, moving the current SP into its bank and the new one out."""
        self.sp_banks[self.sp_index()] = self.x[31]
        self.el = el
        self.spsel = spsel
        self.mte.el = el
        self.x[31] = self.sp_banks[self.sp_index()]

    # -- PSTATE as a word (SPSR format) ---------------------------------------------------

    @property
    def tco(self) -> bool:
        """PSTATE.TCO: whether tag checks are suppressed."""
        return self.mte.tco

    def pstate(self) -> int:
        """PSTATE in the SPSR_ELx / kvm_regs.pstate layout."""
        return (
            nzcv(self.flags) << PSTATE_NZCV_SHIFT
            | (PSTATE_TCO if self.mte.tco else 0)
            | self.pstate_rest
            | self.daif << PSTATE_DAIF_SHIFT
            | self.el << 2
            | self.spsel
        )

    def load_pstate(self, value: int) -> None:
        """Set PSTATE from an SPSR-format word (AArch64 modes only; caller checks M)."""
        self.flags = (LITERAL, (value >> PSTATE_NZCV_SHIFT) & 0xF, 0, 0)
        self.mte.tco = bool(value & PSTATE_TCO)
        self.pstate_rest = value & (PSTATE_REST_MASK | PSTATE_REST_MASK_BTYPE)
        self.daif = (value >> PSTATE_DAIF_SHIFT) & 0xF
        self.set_mode((value >> 2) & 3, value & 1)
