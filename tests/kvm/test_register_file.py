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
    ID_AA64PFR2_EL1,
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
    ("linux-7.3", True, 261),
    ("linux-7.3", False, 257),
    ("linux-7.0", True, 263),
]


@pytest.mark.parametrize(("profile", "mte", "count"), LIST_SIZES)
def test_reg_list_is_the_measured_kernel_list_in_order(profile: str, mte: bool, count: int) -> None:
    """Scenario: KVM_GET_REG_LIST of a PSCI_0_2 VCPU gives the kernel's list, in its
    order, with the four MTE registers only in an MTE VM (the old model had 57)."""
    _, vcpu = vcpu_of(profile, mte)
    listed = vcpu.get_reg_list()
    assert len(listed) == count
    assert listed == list(regfile(ModelKvm(1 << 20, profile).profile.regfile).lists[mte])


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.12", "linux-7.3"])
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


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.12", "linux-7.3"])
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


def test_linux_7_3_lists_what_its_kernel_listed_and_not_6_12s_extras() -> None:
    """Scenario: on 7.3 TCR2_EL1, PIRE0_EL1 and PIR_EL1 are gone from the list (the
    testbed's CPU has neither FEAT_TCR2 nor FEAT_S1PIE), KVM_REG_ARM_VENDOR_HYP_BMAP_2
    is new, PSCI reads 1.3 (6.12: 1.1) and ID_AA64MMFR2_EL1.NV reads 0."""
    tcr2, pire0, pir = 0x603000000013C103, 0x603000000013C512, 0x603000000013C513
    bmap2, psci, mmfr2 = 0x6030000000160003, 0x6030000000140000, 0x603000000013C03A
    _, old = vcpu_of("linux-6.12")
    _, new = vcpu_of("linux-7.3")
    old_list, new_list = set(old.get_reg_list()), set(new.get_reg_list())
    assert {tcr2, pire0, pir} <= old_list - new_list
    assert new_list - old_list == {bmap2}
    assert (old.get_one_reg(psci), new.get_one_reg(psci)) == (0x10001, 0x10003)
    assert (old.get_one_reg(mmfr2) >> 24 & 0xF, new.get_one_reg(mmfr2) >> 24 & 0xF) == (2, 0)
    with pytest.raises(KvmError) as gone:
        new.get_one_reg(tcr2)
    assert gone.value.errno == errno.ENOENT


def test_linux_7_3_masks_let_a_vmm_lower_the_pfr2_mte_fields() -> None:
    """Scenario: ID_AA64PFR2_EL1's writable mask is FPMR only on 6.12 and FPMR, GCIE,
    MTEFAR and MTESTOREONLY (0xf0000fff0) on 7.3, as the two kernels reported."""
    old_vm, _ = vcpu_of("linux-6.12")
    new_vm, _ = vcpu_of("linux-7.3")
    index = feature_id_range_idx(0, 4, 2)
    assert old_vm.arm_get_reg_writable_masks()[index] == 0xF_0000_0000
    assert new_vm.arm_get_reg_writable_masks()[index] == 0xF_0000_FFF0


def pfr2_of(profile: str, mte: bool) -> ModelVcpu:
    """A VCPU on a host with FEAT_MTE_TAGGED_FAR and FEAT_MTE_STORE_ONLY (both 1)."""
    vm = ModelKvm(16 << 20, profile, host_mte_level=3, host_mte_pfr2=0x110).create_vm()
    if mte:
        vm.enable_cap(Cap.ARM_MTE)
    vcpu = vm.create_vcpu(0)
    vcpu.arm_vcpu_init(kvm_vcpu_init(target=5))
    return vcpu


@pytest.mark.parametrize(
    ("profile", "mte", "seen"),
    [("linux-6.13", True, 0), ("linux-6.17", True, 0x110), ("linux-6.17", False, 0)],
)
def test_pfr2_mte_fields_reach_mte_guests_from_6_17(profile: str, mte: bool, seen: int) -> None:
    """Scenario: the host has MTEFAR and MTESTOREONLY; an MTE VM sees both from 6.17
    (7502bdb43aa2, 61eae495da68), a VM without MTE never, and 6.13 keeps only FPMR."""
    assert pfr2_of(profile, mte).get_one_reg(ID_AA64PFR2_EL1) & 0xFF0 == seen


def test_a_vmm_may_lower_pfr2_mte_fields_but_not_raise_them_on_6_17() -> None:
    """Scenario: on such a host a 6.17 VMM hides MTESTOREONLY (1 -> 0) from its guest,
    but cannot raise MTEFAR above the host's value (EINVAL)."""
    vcpu = pfr2_of("linux-6.17", True)
    vcpu.set_one_reg(ID_AA64PFR2_EL1, 0x100)
    assert vcpu.get_one_reg(ID_AA64PFR2_EL1) == 0x100
    with pytest.raises(KvmError) as raised:
        vcpu.set_one_reg(ID_AA64PFR2_EL1, 0x210)
    assert raised.value.errno == errno.EINVAL
