"""VCPU state encodings: 64-bit registers in VCPU sections, the others in VREG."""

from __future__ import annotations

import struct

import pytest

from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.regdata import regfile
from tagvisor.kvm.uapi import (
    CTR_EL0,
    KVM_REG_ARM64,
    KVM_REG_SIZE_U32,
    KVM_REG_SIZE_U64,
    KVM_REG_SIZE_U128,
    SPSR_EL1,
    TPIDR_EL1,
    Cap,
    VcpuFeature,
    kvm_vcpu_init,
)
from tagvisor.snapshot.container import FormatError
from tagvisor.snapshot.state import VcpuState, VcpuStateMismatch, apply_vcpu, vcpu_sections

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


class FakeVcpu:
    """Just the register interface: the ids a backend lists, and what was written."""

    def __init__(self, listed: list[int]) -> None:
        self.listed = listed
        self.written: dict[int, int] = {}

    def get_reg_list(self) -> list[int]:
        return self.listed

    def set_one_reg(self, reg: int, value: int) -> None:
        self.written[reg] = value

    def set_registers(self, values: list[tuple[int, int]]) -> None:
        """The bulk capability apply_vcpu uses (kvm.api.Vcpu's default: one each)."""
        for reg, value in values:
            self.set_one_reg(reg, value)


SPSR_EL1_CORE = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | CORE | 0x48


def test_registers_that_carry_nothing_are_left_behind_across_backends() -> None:
    """Scenario: a real VCPU's state applied to a model VCPU that lists only X0.

    V0 is zero, TPIDR_EL1 holds KVM's never-written marker, CTR_EL0 is a host fact:
    all may stay behind; X0 is written.
    """
    state = VcpuState(
        0, tuple(sorted([(X0, 5), (V0, 0), (TPIDR_EL1, 0x1DE7EC7EDBADC0DE), (CTR_EL0, 0x8444C004)]))
    )
    vcpu = FakeVcpu([X0])
    left = apply_vcpu(state, vcpu)  # type: ignore[arg-type]
    assert vcpu.written == {X0: 5}
    assert sorted(left) == sorted([V0, TPIDR_EL1, CTR_EL0])


def test_the_models_sysreg_names_for_core_registers_need_the_same_value() -> None:
    """Scenario: the model's SPSR_EL1 (a sysreg id) into a real VCPU (core spsr[0])."""
    same = VcpuState(0, ((SPSR_EL1_CORE, 0x3C5), (SPSR_EL1, 0x3C5)))
    assert apply_vcpu(same, FakeVcpu([SPSR_EL1_CORE])) == [SPSR_EL1]  # type: ignore[arg-type]
    different = VcpuState(0, ((SPSR_EL1_CORE, 0x3C5), (SPSR_EL1, 0x5)))
    with pytest.raises(VcpuStateMismatch):
        apply_vcpu(different, FakeVcpu([SPSR_EL1_CORE]))  # type: ignore[arg-type]


def test_guest_state_the_destination_cannot_hold_refuses_the_move_and_writes_nothing() -> None:
    """Scenario: a guest that used TPIDR_EL1 and V0, moving to a VCPU without them."""
    state = VcpuState(0, ((X0, 1), (V0, 42), (TPIDR_EL1, 0x1234)))
    vcpu = FakeVcpu([X0])
    with pytest.raises(VcpuStateMismatch, match="no register"):
        apply_vcpu(state, vcpu)  # type: ignore[arg-type]
    assert vcpu.written == {}


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.12"])
def test_real_kvm_state_restores_into_the_model_with_nothing_left(profile: str) -> None:
    """Scenario: the registers real KVM of the same kernel gave on the testbed (every
    listed register at its measured value, the guest's x0 and V0 changed) restore into
    a model VCPU of that profile: no register is dropped and the values read back."""
    values = dict(regfile(profile).resets[True]) | {X0: 7, V0: 1 << 127}
    vm = ModelKvm(16 << 20, profile, host_mte_level=3).create_vm()
    vm.enable_cap(Cap.ARM_MTE)
    vcpu = vm.create_vcpu(0)
    init = kvm_vcpu_init(target=5)
    init.features[0] = 1 << VcpuFeature.PSCI_0_2
    vcpu.arm_vcpu_init(init)
    assert apply_vcpu(VcpuState(0, tuple(sorted(values.items()))), vcpu) == []
    assert (vcpu.get_one_reg(X0), vcpu.get_one_reg(V0)) == (7, 1 << 127)
