"""KVM_GET/SET_MP_STATE on the model: a VCPU's PSCI power state, as arm64 KVM has it."""

from __future__ import annotations

import errno

import pytest

from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.vcpu import ModelVcpu
from tagvisor.kvm.uapi import MpState, VcpuFeature


def two_vcpus() -> list[ModelVcpu]:
    vm = ModelKvm(host_memory=64 << 20).create_vm()
    vcpus = []
    for index in range(2):
        vcpu = vm.create_vcpu(index)
        init = vm.arm_preferred_target()
        init.features[0] = 1 << VcpuFeature.PSCI_0_2 | (1 << VcpuFeature.POWER_OFF) * index
        vcpu.arm_vcpu_init(init)
        vcpus.append(vcpu)
    return vcpus


def test_a_vcpu_started_powered_off_is_stopped_until_made_runnable() -> None:
    """Scenario: VCPU 0 plain, VCPU 1 with KVM_ARM_VCPU_POWER_OFF: RUNNABLE and
    STOPPED; SET_MP_STATE(RUNNABLE) on VCPU 1, then STOPPED on VCPU 0, swap them."""
    first, second = two_vcpus()
    assert [v.get_mp_state() for v in (first, second)] == [MpState.RUNNABLE, MpState.STOPPED]
    second.set_mp_state(MpState.RUNNABLE)
    first.set_mp_state(MpState.STOPPED)
    assert [v.get_mp_state() for v in (first, second)] == [MpState.STOPPED, MpState.RUNNABLE]


@pytest.mark.parametrize("state", [MpState.SUSPENDED, 7, 1])
def test_states_the_model_does_not_have_are_refused(state: int) -> None:
    """Scenario: SUSPENDED (no WFI suspension in the model), OPERATING (7, s390's) and
    UNINITIALIZED (1, x86's): EINVAL, as arm.c answers states it does not know."""
    vcpu = two_vcpus()[0]
    with pytest.raises(KvmError) as caught:
        vcpu.set_mp_state(state)
    assert caught.value.errno == errno.EINVAL
