"""KVM_CREATE_DEVICE and KVM_IRQ_LINE on the model: refused with the kernel's errnos."""

from __future__ import annotations

import errno

import pytest

from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.uapi import KVM_DEV_TYPE_ARM_VGIC_V3, Cap, arm_spi_irq


def test_the_model_has_no_in_kernel_gic_to_create() -> None:
    """Scenario: KVM_CREATE_DEVICE(VGIC_V3), also as a TEST, on a model VM: ENODEV (a
    type without ops, kvm_main.c); KVM_CAP_IRQCHIP and DEVICE_CTRL read 0."""
    kvm = ModelKvm(host_memory=64 << 20)
    vm = kvm.create_vm()
    for test in (False, True):
        with pytest.raises(KvmError) as caught:
            vm.create_device(KVM_DEV_TYPE_ARM_VGIC_V3, test=test)
        assert caught.value.errno == errno.ENODEV
    assert vm.check_extension(Cap.IRQCHIP) == 0
    assert vm.check_extension(Cap.DEVICE_CTRL) == 0


def test_an_spi_without_an_irqchip_is_refused_with_enxio() -> None:
    """Scenario: KVM_IRQ_LINE of SPI 1 on a model VM (arm.c: no irqchip, ENXIO)."""
    vm = ModelKvm(host_memory=64 << 20).create_vm()
    with pytest.raises(KvmError) as caught:
        vm.irq_line(arm_spi_irq(1), 1)
    assert caught.value.errno == errno.ENXIO


def test_an_spis_irq_field_carries_its_type_and_intid() -> None:
    """Scenario: SPI 1 is INTID 33 with irq_type 1 in bits 27:24 (api.rst)."""
    assert arm_spi_irq(1) == 0x0100_0021
