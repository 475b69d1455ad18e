"""The model's register file is Linux's as measured on the testbed (kvm/model/regdata)."""

import errno

import pytest

from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.regdata import regfile
from tagvisor.kvm.model.vcpu import ModelVcpu
from tagvisor.kvm.model.vm import ModelVm
from tagvisor.kvm.uapi import (
    ID_AA64ISAR0_EL1,
    ID_AA64PFR0_EL1,
    ID_AA64PFR1_EL1,
    ID_PFR1_EL1,
    MPIDR_EL1,
    Cap,
    VcpuFeature,
    feature_id_range_idx,
    kvm_vcpu_init,
)

CSV2 = 56  # ID_AA64PFR0_EL1.CSV2, bits 59:56
AES = 4  # ID_AA64ISAR0_EL1.AES, bits 7:4


def vcpu_of(profile: str, mte: bool = True, vcpu_id: int = 0) -> tuple[ModelVm, ModelVcpu]:
    vm = ModelKvm(16 << 20, profile, host_mte_level=3).create_vm()
    if mte:
        vm.enable_cap(Cap.ARM_MTE)
    vcpu = vm.create_vcpu(vcpu_id)
    init = kvm_vcpu_init(target=5)
    init.features[0] = 1 << VcpuFeature.PSCI_0_2
    vcpu.arm_vcpu_init(init)
    return vm, vcpu


def lowered(value: int, shift: int) -> int:
    return value - (1 << shift)


LIST_SIZES = [
    ("linux-6.1", True, 246),
    ("linux-6.1", False, 242),
    ("linux-6.12", True, 263),
    ("linux-6.12", False, 259),
    ("linux-6.13", True, 263),
    ("linux-6.4", False, 242),
]


@pytest.mark.parametrize(("profile", "mte", "count"), LIST_SIZES)
def test_reg_list_is_the_measured_kernel_list_in_order(profile: str, mte: bool, count: int) -> None:
    """Scenario: KVM_GET_REG_LIST of a PSCI_0_2 VCPU gives the kernel's list, in its
    order, with the four MTE registers only in an MTE VM (the old model had 57)."""
    _, vcpu = vcpu_of(profile, mte)
    listed = vcpu.get_reg_list()
    assert len(listed) == count
    assert listed == list(regfile(ModelKvm(1 << 20, profile).profile.regfile).lists[mte])


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.12"])
def test_every_register_reads_its_measured_reset_value(profile: str) -> None:
    """Scenario: GET_ONE_REG of every listed register after VCPU_INIT gives what the
    kernel gave on the testbed; ID_AA64PFR1_EL1 is 0x321 with MTE, 0x21 without."""
    for mte in (True, False):
        _, vcpu = vcpu_of(profile, mte)
        data = regfile(profile)
        for reg in vcpu.get_reg_list():
            if reg not in data.live:
                assert vcpu.get_one_reg(reg) == data.resets[mte][reg], hex(reg)
        assert vcpu.get_one_reg(ID_AA64PFR1_EL1) == (0x321 if mte else 0x21)


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.12"])
def test_every_register_takes_back_its_own_value(profile: str) -> None:
    """Scenario: a VMM restores each register with the value it read (FP/SIMD, timers,
    firmware registers and ID registers included); every write is accepted."""
    _, vcpu = vcpu_of(profile)
    for reg in vcpu.get_reg_list():
        vcpu.set_one_reg(reg, vcpu.get_one_reg(reg))


def test_registers_the_core_does_not_run_are_stored() -> None:
    """Scenario: SET_ONE_REG of V0 (128-bit) and FPSR (32-bit) reads back the value."""
    _, vcpu = vcpu_of("linux-6.12")
    v0, fpsr = 0x6040000000100054, 0x60200000001000D4
    vcpu.set_one_reg(v0, 2**127 + 5)
    vcpu.set_one_reg(fpsr, 0x8000_0000)
    assert (vcpu.get_one_reg(v0), vcpu.get_one_reg(fpsr)) == (2**127 + 5, 0x8000_0000)


def test_mpidr_follows_the_vcpu_id() -> None:
    """Scenario: VCPU 0x123's MPIDR_EL1 has bit 31, Aff0 3, Aff1 0x12 (reset_mpidr)."""
    _, vcpu = vcpu_of("linux-6.1", vcpu_id=0x123)
    assert vcpu.get_one_reg(MPIDR_EL1) == 0x8000_1203


def test_linux_6_1_id_registers_are_immutable_but_csv2() -> None:
    """Scenario: on 6.1 lowering ID_AA64ISAR0_EL1.AES is EINVAL; lowering
    ID_AA64PFR0_EL1.CSV2 is accepted (set_id_aa64pfr0_el1), also after a run."""
    _, vcpu = vcpu_of("linux-6.1")
    isar0 = vcpu.get_one_reg(ID_AA64ISAR0_EL1)
    with pytest.raises(KvmError) as refused:
        vcpu.set_one_reg(ID_AA64ISAR0_EL1, lowered(isar0, AES))
    assert refused.value.errno == errno.EINVAL
    vcpu.kick()
    vcpu.run()
    pfr0 = vcpu.get_one_reg(ID_AA64PFR0_EL1)
    vcpu.set_one_reg(ID_AA64PFR0_EL1, lowered(pfr0, CSV2))
    assert vcpu.get_one_reg(ID_AA64PFR0_EL1) == lowered(pfr0, CSV2)


def test_linux_6_12_lowers_writable_fields_per_vm_until_it_runs() -> None:
    """Scenario: on 6.12 ID_AA64ISAR0_EL1.AES may be lowered, and a second VCPU sees
    it (ID registers are per VM); raising it above the host's is EINVAL; after a
    KVM_RUN any change is EBUSY and the GIC fields have been cleared."""
    vm, vcpu = vcpu_of("linux-6.12")
    isar0 = vcpu.get_one_reg(ID_AA64ISAR0_EL1)
    vcpu.set_one_reg(ID_AA64ISAR0_EL1, lowered(isar0, AES))
    second = vm.create_vcpu(1)
    init = kvm_vcpu_init(target=5)
    init.features[0] = 1 << VcpuFeature.PSCI_0_2
    second.arm_vcpu_init(init)
    assert second.get_one_reg(ID_AA64ISAR0_EL1) == lowered(isar0, AES)
    with pytest.raises(KvmError) as too_high:
        vcpu.set_one_reg(ID_AA64ISAR0_EL1, isar0 + (1 << AES))
    assert too_high.value.errno == errno.EINVAL
    vcpu.set_one_reg(ID_AA64ISAR0_EL1, isar0)  # back up to the host's value
    vcpu.kick()
    vcpu.run()
    with pytest.raises(KvmError) as busy:
        vcpu.set_one_reg(ID_AA64ISAR0_EL1, lowered(isar0, AES))
    assert busy.value.errno == errno.EBUSY
    assert vcpu.get_one_reg(ID_AA64PFR0_EL1) >> 24 & 0xF == 0
    assert vcpu.get_one_reg(ID_PFR1_EL1) >> 28 == 0


def test_writable_masks_exist_from_6_7() -> None:
    """Scenario: KVM_ARM_GET_REG_WRITABLE_MASKS gives 192 masks on 6.12, with
    ID_AA64PFR0_EL1's as measured; range 1 is EINVAL; 6.1 answers EINVAL."""
    vm, _ = vcpu_of("linux-6.12")
    masks = vm.arm_get_reg_writable_masks()
    assert len(masks) == 192
    assert masks[feature_id_range_idx(0, 4, 0)] == 0xFFFF00F00F00FFFF
    with pytest.raises(KvmError) as bad_range:
        vm.arm_get_reg_writable_masks(1)
    old_vm, _ = vcpu_of("linux-6.1")
    with pytest.raises(KvmError) as no_ioctl:
        old_vm.arm_get_reg_writable_masks()
    assert bad_range.value.errno == no_ioctl.value.errno == errno.EINVAL
