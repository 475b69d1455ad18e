"""The MTE system registers and the fields tagvisor uses, with their bit positions.

Field positions follow the Arm ARM register descriptions (DDI 0487, D19/D24) and
arch/arm64/include/asm/sysreg.h. Each register is a small immutable value type built
from the raw 64-bit value: ``from_raw`` refuses bits that are RES0, so a bad value is
caught where it enters (an MSR, a KVM_SET_ONE_REG) rather than silently misbehaving.
The registers' ids (ARM64_SYS_REG of their encodings) are in :mod:`tagvisor.kvm.uapi`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from tagvisor.arch.errors import RegisterValueError


def _field(value: int, lsb: int, width: int) -> int:
    return (value >> lsb) & ((1 << width) - 1)


def _check_res0(name: str, value: int, valid_mask: int) -> None:
    if value < 0 or value >> 64:
        raise RegisterValueError(f"{name}: {value:#x} is not a 64-bit value")
    stray = value & ~valid_mask
    if stray:
        raise RegisterValueError(
            f"{name}: bits {stray:#x} are RES0; valid bits are {valid_mask:#x}"
        )


class TagCheckMode(IntEnum):
    """SCTLR_ELx.TCF / TCF0: what a tag check fault does."""

    NONE = 0
    SYNC = 1
    ASYNC = 2
    #: FEAT_MTE3: loads fault synchronously, stores are recorded asynchronously.
    ASYMM = 3


@dataclass(frozen=True)
class GcrEl1:
    """GCR_EL1: Exclude (15:0) tags IRG/ADDG/SUBG avoid; RRND (16) random IRG."""

    exclude: int = 0
    rrnd: bool = False

    VALID: ClassVar[int] = 0x1FFFF

    @classmethod
    def from_raw(cls, value: int) -> GcrEl1:
        """The fields of a raw GCR_EL1 value (RegisterValueError for RES0 bits set)."""
        _check_res0("GCR_EL1", value, cls.VALID)
        return cls(exclude=value & 0xFFFF, rrnd=bool(value >> 16 & 1))

    @property
    def raw(self) -> int:
        """The register's value."""
        return self.exclude | (int(self.rrnd) << 16)


@dataclass(frozen=True)
class RgsrEl1:
    """RGSR_EL1: TAG (3:0) last tag IRG produced; SEED (23:8) the 16-bit LFSR."""

    tag: int = 0
    seed: int = 0

    VALID: ClassVar[int] = 0xFFFF0F

    @classmethod
    def from_raw(cls, value: int) -> RgsrEl1:
        """The fields of a raw RGSR_EL1 value (RegisterValueError for RES0 bits set)."""
        _check_res0("RGSR_EL1", value, cls.VALID)
        return cls(tag=value & 0xF, seed=_field(value, 8, 16))

    @property
    def raw(self) -> int:
        """The register's value."""
        return self.tag | (self.seed << 8)


@dataclass(frozen=True)
class Tfsr:
    """TFSR_EL1 / TFSRE0_EL1: asynchronous tag check fault flags.

    TF0 (bit 0) records faults on TTBR0 addresses (bit 55 clear), TF1 (bit 1) on TTBR1
    addresses. TFSRE0_EL1 has TF0 only in practice but the model keeps both bits.
    """

    tf0: bool = False
    tf1: bool = False

    VALID: ClassVar[int] = 0x3

    @classmethod
    def from_raw(cls, value: int, name: str = "TFSR_EL1") -> Tfsr:
        """The fields of a raw TFSR value (``name`` says which, for errors)."""
        _check_res0(name, value, cls.VALID)
        return cls(tf0=bool(value & 1), tf1=bool(value & 2))

    @property
    def raw(self) -> int:
        """The register's value."""
        return int(self.tf0) | (int(self.tf1) << 1)


@dataclass(frozen=True)
class GmidEl1:
    """GMID_EL1.BS (3:0): log2 of the LDGM/STGM block size in 4-byte words."""

    bs: int = 6

    VALID: ClassVar[int] = 0xF

    @classmethod
    def from_raw(cls, value: int) -> GmidEl1:
        """The fields of a raw GMID_EL1 value (RegisterValueError for RES0 bits set)."""
        _check_res0("GMID_EL1", value, cls.VALID)
        if not 2 <= value <= 6:
            # Arm ARM: BS values below 2 (one granule) or above 6 (16 tags in a
            # 64-bit register) are reserved.
            raise RegisterValueError(f"GMID_EL1.BS = {value} is reserved (must be 2 to 6)")
        return cls(bs=value)

    @property
    def block_size(self) -> int:
        """Bytes covered by one LDGM/STGM/STZGM (4 << BS)."""
        return 4 << self.bs


@dataclass(frozen=True)
class DczidEl0:
    """DCZID_EL0.BS (3:0): log2 of the DC ZVA / DC GVA block size in words; DZP (4)."""

    bs: int = 4
    dzp: bool = False

    @classmethod
    def from_raw(cls, value: int) -> DczidEl0:
        """The fields of a raw DCZID_EL0 value (BS from 2 to 9)."""
        _check_res0("DCZID_EL0", value, 0x1F)
        bs = value & 0xF
        if not 2 <= bs <= 9:
            raise RegisterValueError(f"DCZID_EL0.BS = {bs} is outside 2 to 9")
        return cls(bs=bs, dzp=bool(value >> 4 & 1))

    @property
    def block_size(self) -> int:
        """Bytes one DC ZVA / DC GVA / DC GZVA covers (4 << BS)."""
        return 4 << self.bs


@dataclass(frozen=True)
class SctlrMte:
    """The MTE fields of SCTLR_EL1.

    TCF0 (39:38) and TCF (41:40) choose the fault mode for EL0 and EL1; ATA0 (42) and
    ATA (43) allow allocation tag access at EL0 and EL1; ITFSB (37) synchronises async
    faults into TFSR on exception entry; TCSO0 (50) / TCSO (51) make checks store-only
    (FEAT_MTE_STORE_ONLY). DZE (14) lets EL0 use DC ZVA / DC GVA / DC GZVA.
    """

    tcf0: TagCheckMode = TagCheckMode.NONE
    tcf: TagCheckMode = TagCheckMode.NONE
    ata0: bool = False
    ata: bool = False
    itfsb: bool = False
    tcso0: bool = False
    tcso: bool = False
    dze: bool = False

    @classmethod
    def from_raw(cls, value: int) -> SctlrMte:
        """The MTE fields of a raw SCTLR_EL1 value."""
        if value < 0 or value >> 64:
            raise RegisterValueError(f"SCTLR_EL1: {value:#x} is not a 64-bit value")
        return cls(
            tcf0=TagCheckMode(_field(value, 38, 2)),
            tcf=TagCheckMode(_field(value, 40, 2)),
            ata0=bool(_field(value, 42, 1)),
            ata=bool(_field(value, 43, 1)),
            itfsb=bool(_field(value, 37, 1)),
            tcso0=bool(_field(value, 50, 1)),
            tcso=bool(_field(value, 51, 1)),
            dze=bool(_field(value, 14, 1)),
        )

    def apply(self, sctlr: int) -> int:
        """``sctlr`` with these MTE fields written into it."""
        mask = (3 << 38) | (3 << 40) | (1 << 42) | (1 << 43) | (1 << 37)
        mask |= (1 << 50) | (1 << 51) | (1 << 14)
        value = sctlr & ~mask
        value |= int(self.tcf0) << 38 | int(self.tcf) << 40
        value |= int(self.ata0) << 42 | int(self.ata) << 43 | int(self.itfsb) << 37
        value |= int(self.tcso0) << 50 | int(self.tcso) << 51 | int(self.dze) << 14
        return value


@dataclass(frozen=True)
class TcrMte:
    """The TCR_EL1 fields that decide whether pointer tags matter.

    TBI0 (37) / TBI1 (38): top byte ignored for TTBR0 / TTBR1 addresses. TBID0 (51) /
    TBID1 (52): TBI for data accesses only. TCMA0 (57) / TCMA1 (58): the match-all tags
    (0b0000 with bit 55 clear, 0b1111 with bit 55 set) are unchecked.
    """

    tbi0: bool = False
    tbi1: bool = False
    tcma0: bool = False
    tcma1: bool = False

    @classmethod
    def from_raw(cls, value: int) -> TcrMte:
        """The MTE-related fields of a raw TCR_EL1 value."""
        if value < 0 or value >> 64:
            raise RegisterValueError(f"TCR_EL1: {value:#x} is not a 64-bit value")
        return cls(
            tbi0=bool(_field(value, 37, 1)),
            tbi1=bool(_field(value, 38, 1)),
            tcma0=bool(_field(value, 57, 1)),
            tcma1=bool(_field(value, 58, 1)),
        )

    def apply(self, tcr: int) -> int:
        """``tcr`` with these fields written into it."""
        mask = (1 << 37) | (1 << 38) | (1 << 57) | (1 << 58)
        value = tcr & ~mask
        value |= int(self.tbi0) << 37 | int(self.tbi1) << 38
        value |= int(self.tcma0) << 57 | int(self.tcma1) << 58
        return value
