"""Synchronous exceptions the core raises to the guest, and what it raises to the VMM.

:class:`GuestException` carries what AArch64.TakeException needs: the exception class
and ISS for ESR_EL1, FAR_EL1 when the class has a fault address, and how far past the
faulting instruction ELR_EL1 points (4 for SVC, whose preferred return address is the
next instruction). Aborts carry the same-EL class; :meth:`GuestException.esr_for`
turns it into the lower-EL one (0x25 -> 0x24, 0x21 -> 0x20) for a fault taken from EL0.

The encodings are the Arm ARM's ESR_ELx description (D24.2.40): EC in bits 31:26, IL
(bit 25) is 1 for every A64 instruction, ISS in bits 24:0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

EC_UNKNOWN: Final = 0x00
EC_ILLEGAL_STATE: Final = 0x0E
EC_SVC64: Final = 0x15
EC_SYSREG: Final = 0x18
EC_IABT_LOWER: Final = 0x20
EC_IABT_SAME: Final = 0x21
EC_PC_ALIGN: Final = 0x22
EC_DABT_LOWER: Final = 0x24
EC_DABT_SAME: Final = 0x25
EC_SP_ALIGN: Final = 0x26
EC_BRK64: Final = 0x3C

IL: Final = 1 << 25

# Fault status codes (DFSC / IFSC); the level-indexed ones add the level (0-3).
FSC_ADDRESS_SIZE: Final = 0x00
FSC_TRANSLATION: Final = 0x04
FSC_ACCESS_FLAG: Final = 0x08
FSC_PERMISSION: Final = 0x0C
FSC_EXTERNAL: Final = 0x10
FSC_TAG_CHECK: Final = 0x11
FSC_EXTERNAL_WALK: Final = 0x14
FSC_ALIGNMENT: Final = 0x21

# Data abort ISS bits.
ISS_WNR: Final = 1 << 6
ISS_CM: Final = 1 << 8


class GuestException(Exception):
    """A synchronous exception to take to the guest's EL1 vector."""

    def __init__(
        self, ec: int, iss: int = 0, *, far: int | None = None, return_offset: int = 0
    ) -> None:
        super().__init__(f"EC {ec:#x} ISS {iss:#x}" + (f" FAR {far:#x}" if far is not None else ""))
        self.ec = ec
        self.iss = iss
        self.far = far
        self.return_offset = return_offset
        #: Set when the raiser knows the faulting PC (instruction fetch); otherwise the
        #: core finds it from the translated block's line.
        self.pc: int | None = None

    def esr_for(self, from_el: int) -> int:
        """ESR_EL1 for this exception taken from ``from_el`` to EL1."""
        ec = self.ec
        if from_el == 0 and ec in (EC_DABT_SAME, EC_IABT_SAME):
            ec -= 1
        return ec << 26 | IL | self.iss


def undefined() -> GuestException:
    """An UNDEFINED instruction (EC 0x0)."""
    return GuestException(EC_UNKNOWN)


def data_abort(
    fsc: int, far: int, *, write: bool, cache_maintenance: bool = False
) -> GuestException:
    """A data abort; ISV is 0 (no syndrome for emulation is given at EL1)."""
    iss = fsc | (ISS_WNR if write else 0) | (ISS_CM if cache_maintenance else 0)
    return GuestException(EC_DABT_SAME, iss, far=far)


def instruction_abort(fsc: int, far: int) -> GuestException:
    """An instruction abort from the current EL (EC 0x21) with fault status ``fsc`` at ``far``."""
    return GuestException(EC_IABT_SAME, fsc, far=far)


def sysreg_trap(op0: int, op1: int, crn: int, crm: int, op2: int, rt: int, *, read: bool) -> int:
    """The ISS of EC 0x18 (trapped MSR, MRS or system instruction)."""
    return op0 << 20 | op2 << 17 | op1 << 14 | crn << 10 | rt << 5 | crm << 1 | (1 if read else 0)


@dataclass
class HypercallExit(Exception):
    """HVC (or SMC) at EL1: KVM handles it (PSCI) and resumes after the instruction."""

    imm: int


class WaitForInterrupt(Exception):
    """WFI: the core ends KVM_RUN with KVM_EXIT_INTR after idling the host briefly."""


@dataclass
class MmioRequest(Exception):
    """An access to guest physical memory that no memslot backs: KVM_EXIT_MMIO."""

    gpa: int
    size: int
    is_write: bool
    data: bytes = b""
