"""The builder under the seed's v2 ABI: MTE as a per-VCPU feature."""

import pytest

from tagvisor.kvm.model import ModelKvm, ModelVcpu
from tagvisor.kvm.model.workloads import touch_pages
from tagvisor.vmm import MachineBuilder
from tagvisor.vmm.builder import RAM_BASE
from tagvisor.vmm.machine import MachineError


def test_seed_v2_gives_mte_to_the_vcpus_asked_for() -> None:
    """Scenario: a 2-VCPU machine on the seed-v2 profile with MTE on VCPU 0 only:
    VCPU 0 has tag access, VCPU 1 not, and the VM's memory is MTE (sticky, VM-wide)."""
    machine = (
        MachineBuilder(ModelKvm(64 << 20, "seed-v2"))
        .memory(16 << 20)
        .mte(vcpus=[0])
        .vcpus(2)
        .python_guest(touch_pages(RAM_BASE, 1))
        .build()
    )
    first, second = machine.vcpus
    assert isinstance(first, ModelVcpu)
    assert isinstance(second, ModelVcpu)
    assert first.tag_access
    assert not second.tag_access
    assert first.vm.has_mte


def test_the_vm_cap_refuses_mte_on_some_vcpus_only() -> None:
    """Scenario: the same request on the upstream ABI: one clear error naming why."""
    builder = (
        MachineBuilder(ModelKvm(64 << 20))
        .memory(16 << 20)
        .mte(vcpus=[0])
        .vcpus(2)
        .python_guest(touch_pages(RAM_BASE, 1))
    )
    with pytest.raises(MachineError, match="every VCPU"):
        builder.build()
