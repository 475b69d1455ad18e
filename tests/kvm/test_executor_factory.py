"""Whoever builds the model's KVM decides what runs its VCPUs' guest code."""

from __future__ import annotations

from collections.abc import Generator

from tagvisor.cpu import A64Core
from tagvisor.kvm.api import VcpuExit
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GeneratorGuest, GuestContext, GuestExecutor, mmio_write
from tagvisor.kvm.uapi import Cap, ExitReason

UART = 0x0900_0000


def test_vcpus_run_on_what_the_executor_factory_builds() -> None:
    """Scenario: a KVM built with a factory of Python guests; a VCPU with nothing
    attached runs, and its first KVM_RUN shows the guest's MMIO store."""
    built: list[ModelKvm] = []

    def python_guest(kvm: ModelKvm) -> GuestExecutor:
        built.append(kvm)

        def program(ctx: GuestContext) -> Generator[VcpuExit, bytes | None, None]:
            yield mmio_write(UART, 0x2A)

        return GeneratorGuest(program)

    kvm = ModelKvm(host_memory=16 << 20, executor=python_guest)
    vcpu = kvm.create_vm().create_vcpu(0)
    vcpu.arm_vcpu_init(vcpu.vm.arm_preferred_target())
    exit_ = vcpu.run()
    assert exit_.reason is ExitReason.MMIO
    assert exit_.mmio is not None
    assert exit_.mmio.data == (0x2A).to_bytes(8, "little")
    assert built == [kvm]


def test_the_default_executor_is_an_a64_core_shown_the_host_mte_level() -> None:
    """Scenario: a KVM on an MTE3 host, built without a factory, makes A64 cores, and an MTE
    VM's VCPU shows them ID_AA64PFR1_EL1.MTE 3 (the core reads the VCPU's register)."""
    kvm = ModelKvm(host_memory=16 << 20, host_mte_level=3)
    assert isinstance(kvm.new_executor(), A64Core)
    vm = kvm.create_vm()
    vm.enable_cap(Cap.ARM_MTE)
    vcpu = vm.create_vcpu(0)
    vcpu.arm_vcpu_init(vm.arm_preferred_target())
    assert vcpu.context().id_aa64pfr1 >> 8 & 0xF == 3
