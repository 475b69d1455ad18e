"""MTE system register fields and tagged pointers."""

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tagvisor.arch import RegisterValueError, TagValueError, strip_top_byte, with_tag
from tagvisor.arch.pointer import allocation_tag_from_address, canonical_untagged
from tagvisor.arch.sysregs import (
    GcrEl1,
    GmidEl1,
    RgsrEl1,
    SctlrMte,
    TagCheckMode,
    TcrMte,
    Tfsr,
)

u64 = st.integers(0, 2**64 - 1)


@pytest.mark.parametrize(
    ("reg", "raw"),
    [(GcrEl1.from_raw, 0x1_FFFF), (RgsrEl1.from_raw, 0xABCD05), (Tfsr.from_raw, 0x3)],
)
def test_register_raw_value_round_trips(reg: Callable[[int], Any], raw: int) -> None:
    """Scenario: a valid raw value survives from_raw then raw."""
    assert reg(raw).raw == raw


@pytest.mark.parametrize(
    ("reg", "raw", "message"),
    [
        (GcrEl1.from_raw, 1 << 17, "GCR_EL1: bits 0x20000 are RES0"),
        (RgsrEl1.from_raw, 0xF0, "RGSR_EL1: bits 0xf0 are RES0"),
        (Tfsr.from_raw, 0x4, "TFSR_EL1: bits 0x4 are RES0"),
        (GmidEl1.from_raw, 7, "reserved"),
        (GcrEl1.from_raw, 1 << 64, "not a 64-bit value"),
    ],
)
def test_reserved_register_bits_are_refused_with_their_name(
    reg: Callable[[int], Any], raw: int, message: str
) -> None:
    """Scenario: a KVM_SET_ONE_REG or MSR with RES0 bits set."""
    with pytest.raises(RegisterValueError, match=message):
        reg(raw)


@given(u64)
def test_sctlr_and_tcr_fields_write_back_without_touching_other_bits(value: int) -> None:
    """Scenario: decode the MTE fields of any SCTLR/TCR value and apply them back."""
    assert SctlrMte.from_raw(value).apply(value) == value
    assert TcrMte.from_raw(value).apply(value) == value


def test_sctlr_fields_sit_at_their_architected_bits() -> None:
    """Scenario: TCF (41:40) = async, TCF0 (39:38) = sync, ATA (43), ATA0 (42)."""
    raw = (2 << 40) | (1 << 38) | (1 << 43) | (1 << 42)
    fields = SctlrMte.from_raw(raw)
    assert (fields.tcf, fields.tcf0) == (TagCheckMode.ASYNC, TagCheckMode.SYNC)
    assert fields.ata
    assert fields.ata0


@given(u64, st.integers(0, 15))
def test_with_tag_changes_only_bits_59_to_56(ptr: int, tag: int) -> None:
    """Scenario: any pointer retagged with any tag."""
    tagged = with_tag(ptr, tag)
    assert allocation_tag_from_address(tagged) == tag
    assert tagged & ~(0xF << 56) == ptr & ~(0xF << 56)


def test_strip_top_byte_follows_bit_55() -> None:
    """Scenario: TBI strips the tag of a low address and sign-extends a high one."""
    assert strip_top_byte(0x0A00_0000_4000_1000) == 0x4000_1000
    assert strip_top_byte(0x0AFF_8000_0000_1000) == 0xFFFF_8000_0000_1000
    assert canonical_untagged(0x0A00_0000_4000_1000, tbi=False) == 0x0A00_0000_4000_1000


def test_tag_wider_than_four_bits_is_refused() -> None:
    """Scenario: with_tag(ptr, 16)."""
    with pytest.raises(TagValueError):
        with_tag(0, 16)
