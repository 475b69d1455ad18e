"""VCPU state encodings: 64-bit registers in VCPU sections, the others in VREG."""

from __future__ import annotations

import struct

import pytest

from tagvisor.kvm.uapi import KVM_REG_ARM64, KVM_REG_SIZE_U32, KVM_REG_SIZE_U64, KVM_REG_SIZE_U128
from tagvisor.snapshot.container import FormatError
from tagvisor.snapshot.state import VcpuState, vcpu_sections

CORE = 0x0010_0000
X0 = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | CORE
V0 = KVM_REG_ARM64 | KVM_REG_SIZE_U128 | CORE | 0x54  # fp_regs.vregs[0]
FPSR = KVM_REG_ARM64 | KVM_REG_SIZE_U32 | CORE | 0xD4


def real_like_state() -> VcpuState:
    return VcpuState(0, tuple(sorted([(X0, 7), (V0, (1 << 127) | 0xABCD), (FPSR, 0x800_0000)])))


def test_registers_wider_or_narrower_than_64_bits_travel_in_a_vreg_section() -> None:
    """Scenario: a real KVM VCPU has 128-bit V registers and a 32-bit FPSR.

    The VCPU section keeps the 1.0 layout (64-bit pairs only); VREG carries the rest at
    their own sizes, and decoding both gives back the same state.
    """
    state = real_like_state()
    sections = vcpu_sections(state)
    assert [tag for tag, _ in sections] == [b"VCPU", b"VREG"]
    narrow = VcpuState.decode(sections[0][1])
    assert narrow.registers == ((X0, 7),)
    assert narrow.with_wide(sections[1][1]) == state


def test_a_model_vcpu_writes_no_vreg_section() -> None:
    """Scenario: only 64-bit registers (the model's VCPUs): the 1.0 sections, unchanged."""
    state = VcpuState(1, ((X0, 1),))
    assert [tag for tag, _ in vcpu_sections(state)] == [b"VCPU"]
    assert state.encode() == struct.pack("<IIQQ", 1, 1, X0, 1)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\0", "shorter than its header"),
        (struct.pack("<II", 9, 0), "for VCPU 9"),
        (struct.pack("<II", 0, 1) + struct.pack("<Q", V0) + b"\0" * 15, "ends inside register"),
        (struct.pack("<II", 0, 1) + struct.pack("<Q", X0) + b"\0" * 8, "does not belong"),
        (struct.pack("<II", 0, 0) + b"x", "bytes after"),
        (struct.pack("<II", 0, 1) + b"\0" * 4, "inside a register id"),
        (struct.pack("<II", 0, 10_000), "claims"),
    ],
)
def test_hostile_vreg_sections_are_refused(payload: bytes, message: str) -> None:
    """Scenario: truncated, misplaced, mis-sized or padded VREG payloads."""
    with pytest.raises(FormatError, match=message):
        VcpuState(0, ((X0, 0),)).with_wide(payload)


def test_a_register_in_both_sections_is_refused() -> None:
    """Scenario: VREG repeats a register the state already has."""
    wide = real_like_state().encode_wide()
    assert wide is not None
    with pytest.raises(FormatError, match="twice"):
        real_like_state().with_wide(wide)


def test_a_vcpu_section_with_a_wide_register_id_is_refused() -> None:
    """Scenario: a VCPU section (64-bit pairs) naming a 128-bit register."""
    with pytest.raises(FormatError, match="not 64 bits"):
        VcpuState.decode(struct.pack("<IIQQ", 0, 1, V0, 0))
