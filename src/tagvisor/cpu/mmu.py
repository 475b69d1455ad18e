"""Stage-1 translation for the EL1&0 regime: 4 KiB granule, TTBR0/TTBR1, a TLB.

Follows the Arm ARM's AArch64.S1Translate / AArch64.S1Walk for the parts tagvisor
guests use: T0SZ/T1SZ and EPD0/EPD1 from TCR_EL1, table, block (level 1: 1 GiB,
level 2: 2 MiB) and page descriptors, APTable/PXNTable/UXNTable, AP[2:1], PXN/UXN,
SCTLR_EL1.WXN, the access flag (no hardware update: FEAT_HAFDBS is not offered), and
MAIR_EL1 attributes. A 40-bit physical address space matches KVM's default IPA size.
Descriptors are read through stage 2 like any guest physical access, so a walk that
reaches no memslot is a synchronous external abort on the walk.

With SCTLR_EL1.M = 0 the VA is the PA and data accesses are Device-nGnRnE
(AArch64.S1DisabledOutput), so they are never tag checked.

The TLB caches whole walk results per 4 KiB VA page, permissions included, and is
flushed (by the core) on TLBI and on writes to SCTLR/TCR/TTBR0/TTBR1/MAIR.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

from tagvisor.cpu.bits import bit, field
from tagvisor.cpu.exceptions import (
    FSC_ACCESS_FLAG,
    FSC_ADDRESS_SIZE,
    FSC_EXTERNAL_WALK,
    FSC_TRANSLATION,
)
from tagvisor.kvm.uapi import MAIR_EL1, SCTLR_EL1, TCR_EL1, TTBR0_EL1, TTBR1_EL1

#: The guest's physical address space (KVM's default 40-bit IPA).
PA_BITS: Final = 40
PA_MASK: Final = (1 << PA_BITS) - 1
OA_MASK: Final = 0x0000_FFFF_FFFF_F000

# Memory types.
DEVICE: Final = 0
NORMAL: Final = 1
#: Normal Inner/Outer Write-Back with allocation tags (MAIR attribute 0xF0).
TAGGED: Final = 2
MAIR_NORMAL_TAGGED: Final = 0xF0

# Permission bits of a TLB entry.
READ_EL1: Final = 1
WRITE_EL1: Final = 2
EXEC_EL1: Final = 4
READ_EL0: Final = 8
WRITE_EL0: Final = 16
EXEC_EL0: Final = 32
ALL_PERMS: Final = 63

SCTLR_M: Final = 1 << 0
SCTLR_WXN: Final = 1 << 19


class TlbEntry(NamedTuple):
    """One translated 4 KiB page."""

    pa: int
    memtype: int
    perms: int
    #: The level of the final descriptor, reported by permission faults.
    level: int
    #: The MAIR_EL1 attribute byte (for PAR_EL1).
    attr: int


def permission_needed(*, write: bool, el: int) -> int:
    """The permission bit a data access needs: read or write, at EL0 or EL1."""
    if write:
        return WRITE_EL1 if el else WRITE_EL0
    return READ_EL1 if el else READ_EL0


class WalkFault(Exception):
    """The walk failed; ``fsc`` is the fault status code with the level folded in."""

    def __init__(self, fsc: int) -> None:
        super().__init__(f"stage-1 fault FSC {fsc:#x}")
        self.fsc = fsc


def memtype_of(attr: int) -> int:
    """MAIR attribute byte to tagvisor's memory type."""
    if attr == MAIR_NORMAL_TAGGED:
        return TAGGED
    if attr & 0xF0 == 0:
        return DEVICE
    return NORMAL


class Stage1Mmu:
    """Translation of canonical (TBI-stripped) virtual addresses, with a TLB."""

    def __init__(self, sysregs: dict[int, int], read_phys64: Callable[[int], int | None]) -> None:
        self.sysregs = sysregs
        self.read_phys64 = read_phys64
        self.tlb: dict[int, TlbEntry] = {}
        #: Walks performed (for tests and benchmarks).
        self.walks = 0

    def flush(self) -> None:
        """Empty the TLB (TLBI, or a translation register changed)."""
        self.tlb.clear()

    def mmu_enabled(self) -> bool:
        """SCTLR_EL1.M: whether stage 1 translates (else virtual addresses are physical)."""
        return bool(self.sysregs[SCTLR_EL1] & SCTLR_M)

    def translate(self, va: int) -> TlbEntry:
        """The TLB entry for the page holding canonical ``va``; raises WalkFault."""
        entry = self.tlb.get(va >> 12)
        if entry is None:
            entry = self._walk(va)
            self.tlb[va >> 12] = entry
        return entry

    # -- the walk ---------------------------------------------------------------------

    def _walk(self, va: int) -> TlbEntry:
        sysregs = self.sysregs
        if not self.mmu_enabled():
            if va >> PA_BITS:
                raise WalkFault(FSC_ADDRESS_SIZE)
            return TlbEntry(va & ~0xFFF, DEVICE, ALL_PERMS, 0, 0)
        self.walks += 1
        tcr = sysregs[TCR_EL1]
        upper = bit(va, 55)
        if upper:
            tsz, epd, ttbr = field(tcr, 16, 6), bit(tcr, 23), sysregs[TTBR1_EL1]
        else:
            tsz, epd, ttbr = field(tcr, 0, 6), bit(tcr, 7), sysregs[TTBR0_EL1]
        # Out-of-range TxSZ values behave as the nearest supported one (4 KiB granule,
        # no FEAT_LVA / FEAT_TTST).
        tsz = min(max(tsz, 16), 39)
        ia = 64 - tsz
        top = va >> ia
        if top != (((1 << tsz) - 1) if upper else 0):
            raise WalkFault(FSC_TRANSLATION + 0)
        if epd:
            raise WalkFault(FSC_TRANSLATION + 0)
        start = 4 - (ia - 12 + 8) // 9
        first_bits = ia - (12 + 9 * (3 - start))
        # BADDR is aligned to the size of the first table, and to at least 64 bytes.
        table = (ttbr & 0x0000_FFFF_FFFF_FFFE) & ~max((8 << first_bits) - 1, 0x3F)
        level = start
        ap_table = 0
        xn_table = 0
        pxn_table = 0
        while True:
            shift = 12 + 9 * (3 - level)
            bits = first_bits if level == start else 9
            index = (va >> shift) & ((1 << bits) - 1)
            desc = self.read_phys64(table + index * 8)
            if desc is None:
                raise WalkFault(FSC_EXTERNAL_WALK + level)
            kind = desc & 3
            if kind & 1 == 0:
                raise WalkFault(FSC_TRANSLATION + level)
            if kind == 3 and level < 3:
                ap_table |= field(desc, 61, 2)
                xn_table |= bit(desc, 60)
                pxn_table |= bit(desc, 59)
                table = desc & OA_MASK
                if table >> PA_BITS:
                    raise WalkFault(FSC_ADDRESS_SIZE + level)
                level += 1
                continue
            if (kind == 1 and level not in (1, 2)) or (kind == 3 and level != 3):
                raise WalkFault(FSC_TRANSLATION + level)
            break
        out = desc & OA_MASK & ~((1 << shift) - 1)
        if out >> PA_BITS:
            raise WalkFault(FSC_ADDRESS_SIZE + level)
        if not bit(desc, 10):
            raise WalkFault(FSC_ACCESS_FLAG + level)
        pa = out | (va & ((1 << shift) - 1) & ~0xFFF)
        attr = (sysregs[MAIR_EL1] >> (8 * field(desc, 2, 3))) & 0xFF
        perms = self._permissions(desc, ap_table, xn_table, pxn_table)
        return TlbEntry(pa, memtype_of(attr), perms, level, attr)

    def _permissions(self, desc: int, ap_table: int, uxn_table: int, pxn_table: int) -> int:
        """AArch64.S1DirectBasePermissions for EL1&0 without PAN."""
        read_only = bit(desc, 7) or ap_table & 2
        el0 = bit(desc, 6) and not ap_table & 1
        perms = READ_EL1
        if not read_only:
            perms |= WRITE_EL1
        if el0:
            perms |= READ_EL0
            if not read_only:
                perms |= WRITE_EL0
        wxn = bool(self.sysregs[SCTLR_EL1] & SCTLR_WXN)
        # Memory EL0 can write is never privileged-executable.
        if not (bit(desc, 53) or pxn_table or perms & WRITE_EL0 or (wxn and perms & WRITE_EL1)):
            perms |= EXEC_EL1
        if not (bit(desc, 54) or uxn_table or (wxn and perms & WRITE_EL0)):
            perms |= EXEC_EL0
        return perms
