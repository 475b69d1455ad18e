"""KVM_CAP_ARM_MTE, VCPU init and the MTE registers (arch/arm64/kvm/arm.c, sys_regs.c)."""

import errno

import pytest

from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.vcpu_regs import MTE_REGS, RESET_UNKNOWN
from tagvisor.kvm.uapi import (
    GCR_EL1,
    ID_AA64PFR1_EL1,
    TFSR_EL1,
    Cap,
    VcpuFeature,
    core_reg_x,
    kvm_vcpu_init,
)


def init(features: int = 0, target: int = 5) -> kvm_vcpu_init:
    value = kvm_vcpu_init(target=target)
    value.features[0] = features
    return value


def test_mte_capability_is_probed_and_enabled_before_vcpus() -> None:
    """Scenario: CHECK_EXTENSION(205) gives 1; ENABLE_CAP twice succeeds; after
    KVM_CREATE_VCPU it is EINVAL (kvm_vm_ioctl_enable_cap checks created_vcpus)."""
    kvm = ModelKvm(host_memory=16 << 20)
    assert kvm.check_extension(Cap.ARM_MTE) == 1
    vm = kvm.create_vm()
    vm.enable_cap(Cap.ARM_MTE)
    vm.enable_cap(Cap.ARM_MTE, args=[1, 2, 3, 4])  # args are not checked
    vm.create_vcpu(0)
    with pytest.raises(KvmError) as error:
        vm.enable_cap(Cap.ARM_MTE)
    assert error.value.errno == errno.EINVAL
    assert error.value.ioctl == "KVM_ENABLE_CAP"
    assert "before the first KVM_CREATE_VCPU" in str(error.value)


def test_enable_cap_with_flags_or_on_a_host_without_mte_is_einval() -> None:
    """Scenario: flags = 1; and a host without MTE, where the probe gives 0."""
    vm = ModelKvm(host_memory=16 << 20).create_vm()
    with pytest.raises(KvmError) as error:
        vm.enable_cap(Cap.ARM_MTE, flags=1)
    assert error.value.errno == errno.EINVAL
    plain = ModelKvm(host_memory=16 << 20, host_mte=False)
    assert plain.check_extension(Cap.ARM_MTE) == 0
    with pytest.raises(KvmError):
        plain.create_vm().enable_cap(Cap.ARM_MTE)


def test_unknown_capability_probes_as_zero() -> None:
    """Scenario: CHECK_EXTENSION of a number KVM does not know."""
    assert ModelKvm(host_memory=16 << 20).check_extension(99999) == 0


def test_aarch32_vcpus_are_refused_once_mte_is_on() -> None:
    """Scenario: a host with AArch32 EL1; EL1_32BIT works without MTE, EINVAL with it
    (kvm_vcpu_init_check_features; vcpu_allowed_register_width in 5.17-6.6)."""
    kvm = ModelKvm(host_memory=16 << 20, host_32bit_el1=True)
    plain = kvm.create_vm()
    plain.create_vcpu(0).arm_vcpu_init(init(1 << VcpuFeature.EL1_32BIT))
    tagged = kvm.create_vm()
    tagged.enable_cap(Cap.ARM_MTE)
    with pytest.raises(KvmError) as error:
        tagged.create_vcpu(0).arm_vcpu_init(init(1 << VcpuFeature.EL1_32BIT))
    assert error.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("features", "target", "expected"),
    [
        (0, 0, errno.EINVAL),
        (1 << 20, 5, errno.ENOENT),
        (1 << VcpuFeature.SVE, 5, errno.EINVAL),
    ],
    ids=["bad target", "unknown feature bit", "unsupported feature"],
)
def test_vcpu_init_errors_follow_the_kernel(features: int, target: int, expected: int) -> None:
    """Scenario: KVM_ARM_VCPU_INIT with a bad target, an unknown bit, an unsupported one."""
    vcpu = ModelKvm(host_memory=16 << 20).create_vm().create_vcpu(0)
    with pytest.raises(KvmError) as error:
        vcpu.arm_vcpu_init(init(features, target))
    assert error.value.errno == expected


def test_one_reg_before_vcpu_init_is_enoexec() -> None:
    """Scenario: GET_ONE_REG and KVM_RUN on a VCPU that was never initialised."""
    vcpu = ModelKvm(host_memory=16 << 20).create_vm().create_vcpu(0)
    for call in (lambda: vcpu.get_one_reg(core_reg_x(0)), vcpu.run):
        with pytest.raises(KvmError) as error:
            call()
        assert error.value.errno == errno.ENOEXEC


def test_mte_registers_are_hidden_without_mte() -> None:
    """Scenario: a VM without the cap: GET/SET_ONE_REG of GCR_EL1 is ENOENT, the reg
    list leaves the four MTE registers out, ID_AA64PFR1_EL1.MTE reads 0 (mte_visibility)."""
    vm = ModelKvm(host_memory=16 << 20).create_vm()
    vcpu = vm.create_vcpu(0)
    vcpu.arm_vcpu_init(init())
    for call in (lambda: vcpu.get_one_reg(GCR_EL1), lambda: vcpu.set_one_reg(GCR_EL1, 0)):
        with pytest.raises(KvmError) as error:
            call()
        assert error.value.errno == errno.ENOENT
    assert not set(MTE_REGS) & set(vcpu.get_reg_list())
    assert vcpu.get_one_reg(ID_AA64PFR1_EL1) >> 8 & 0xF == 0


def test_mte_registers_reset_unknown_and_take_any_value_with_mte() -> None:
    """Scenario: with the cap, the MTE registers read KVM's reset_unknown pattern, are
    listed, and SET_ONE_REG stores any 64-bit value unchecked (no set_user hook)."""
    vm = ModelKvm(host_memory=16 << 20).create_vm()
    vm.enable_cap(Cap.ARM_MTE)
    vcpu = vm.create_vcpu(0)
    vcpu.arm_vcpu_init(init())
    assert vcpu.get_one_reg(GCR_EL1) == RESET_UNKNOWN
    assert set(MTE_REGS) <= set(vcpu.get_reg_list())
    vcpu.set_one_reg(TFSR_EL1, 2**64 - 1)
    assert vcpu.get_one_reg(TFSR_EL1) == 2**64 - 1
    assert vcpu.get_one_reg(ID_AA64PFR1_EL1) >> 8 & 0xF == 2


def test_duplicate_or_out_of_range_vcpu_ids() -> None:
    """Scenario: KVM_CREATE_VCPU with id 0 twice (EEXIST) and id 4096 (EINVAL)."""
    vm = ModelKvm(host_memory=16 << 20).create_vm()
    vm.create_vcpu(0)
    with pytest.raises(KvmError) as error:
        vm.create_vcpu(0)
    assert error.value.errno == errno.EEXIST
    with pytest.raises(KvmError) as error:
        vm.create_vcpu(4096)
    assert error.value.errno == errno.EINVAL
