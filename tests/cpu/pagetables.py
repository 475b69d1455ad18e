"""Stage-1 tables for tests: a 39-bit VA space (T0SZ 25, level-1 start), 4 KiB granule.

MAIR_EL1 attribute indices: 0 Device-nGnRnE (0x00), 1 Normal Tagged (0xF0),
2 Normal write-back, untagged (0xFF).
"""

from __future__ import annotations

from typing import Final

from tagvisor.kvm.uapi import MAIR_EL1, SCTLR_EL1, TCR_EL1, TTBR0_EL1
from tests.cpu.conftest import CpuMachine

DEVICE, TAGGED, NORMAL = 0, 1, 2
MAIR: Final = 0x00 | 0xF0 << 8 | 0xFF << 16
#: T0SZ 25, inner/outer write-back, inner shareable, EPD1, 40-bit IPS.
TCR: Final = 25 | 0x3500 | 1 << 23 | 2 << 32
TCR_TBI0: Final = 1 << 37
SCTLR_M: Final = 1
SCTLR_A: Final = 1 << 1
SCTLR_SA: Final = 1 << 3
SCTLR_TCF_SYNC: Final = 1 << 40
SCTLR_TCF_ASYNC: Final = 2 << 40
SCTLR_TCF_ASYMM: Final = 3 << 40
SCTLR_ATA: Final = 1 << 43
# Descriptor bits.
AF: Final = 1 << 10
INNER_SHAREABLE: Final = 3 << 8
AP_EL0: Final = 1 << 6
AP_RO: Final = 1 << 7
PXN: Final = 1 << 53
UXN: Final = 1 << 54
TABLE_POOL: Final = 0x4001_0000
SIZES: Final = {1: 1 << 30, 2: 1 << 21, 3: 1 << 12}


class PageTables:
    """Tables written straight into guest RAM, starting with the level-1 table."""

    def __init__(self, cpu: CpuMachine, pool: int = TABLE_POOL) -> None:
        self.cpu = cpu
        self.next = pool
        self.root = self._new_table()

    def _new_table(self) -> int:
        table = self.next
        self.next += 0x1000
        self.cpu.write(table, bytes(4096))
        return table

    def _table_for(self, va: int, level: int) -> int:
        table = self.root
        for current in range(1, level):
            shift = 12 + 9 * (3 - current)
            slot = table + ((va >> shift) & 0x1FF) * 8
            desc = self.cpu.read64(slot)
            if desc & 3 != 3:
                child = self._new_table()
                self.cpu.write64(slot, child | 3)
                desc = child | 3
            table = desc & 0x0000_FFFF_FFFF_F000
        return table

    def map(
        self,
        va: int,
        pa: int,
        size: int,
        *,
        attr: int = TAGGED,
        level: int = 3,
        extra: int = AF,
    ) -> None:
        """Map [va, va + size) to pa with ``level`` descriptors (1 GiB, 2 MiB or 4 KiB)."""
        step = SIZES[level]
        for offset in range(0, size, step):
            table = self._table_for(va + offset, level)
            shift = 12 + 9 * (3 - level)
            kind = 3 if level == 3 else 1
            desc = (pa + offset) | attr << 2 | INNER_SHAREABLE | extra | kind
            self.cpu.write64(table + (((va + offset) >> shift) & 0x1FF) * 8, desc)

    def set_raw(self, va: int, level: int, desc: int) -> None:
        """Write one raw descriptor for ``va`` at ``level``."""
        table = self._table_for(va, level)
        shift = 12 + 9 * (3 - level)
        self.cpu.write64(table + ((va >> shift) & 0x1FF) * 8, desc)

    def enable(self, *, tcr: int = TCR, sctlr: int = 0) -> None:
        """Point TTBR0 at the tables and turn the MMU on (plus ``sctlr`` bits)."""
        cpu = self.cpu
        cpu.set_sysreg(MAIR_EL1, MAIR)
        cpu.set_sysreg(TCR_EL1, tcr)
        cpu.set_sysreg(TTBR0_EL1, self.root)
        cpu.set_sysreg(SCTLR_EL1, cpu.sysreg(SCTLR_EL1) | SCTLR_M | sctlr)


def identity_ram(
    cpu: CpuMachine, *, attr: int = TAGGED, sctlr: int = 0, tcr: int = TCR
) -> PageTables:
    """RAM identity-mapped with one 1 GiB block, 0x0-0x3FFF_FFFF Device; MMU on."""
    tables = PageTables(cpu)
    tables.map(0, 0, 1 << 30, attr=DEVICE, level=1)
    tables.map(0x4000_0000, 0x4000_0000, 1 << 30, attr=attr, level=1)
    tables.enable(tcr=tcr, sctlr=sctlr)
    return tables
