"""The in-kernel GICv3: created, placed and initialised through the device API.

Documentation/virt/kvm/devices/arm-vgic-v3.rst: KVM_CREATE_DEVICE of
KVM_DEV_TYPE_ARM_VGIC_V3 (one per VM, and only on a host with a GICv3), the
distributor's and redistributors' base addresses in KVM_DEV_ARM_VGIC_GRP_ADDR (64 KiB
aligned, u64), the number of interrupts in KVM_DEV_ARM_VGIC_GRP_NR_IRQS (64 to 1024 in
steps of 32, u32), then KVM_DEV_ARM_VGIC_CTRL_INIT, which "must be called after all
VCPUs have been created".
"""

from __future__ import annotations

import struct

from tagvisor.kvm.api import Device, Vm
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.uapi import (
    KVM_DEV_ARM_VGIC_CTRL_INIT,
    KVM_DEV_ARM_VGIC_GRP_ADDR,
    KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_VGIC_V3_ADDR_TYPE_DIST,
    KVM_VGIC_V3_ADDR_TYPE_REDIST,
)
from tagvisor.vmm.linux.platform import GicLayout
from tagvisor.vmm.machine import MachineError


def create_gicv3(vm: Vm, layout: GicLayout) -> Device:
    """The VM's GICv3 at ``layout``'s addresses, initialised: call after every VCPU
    exists. A KVM that cannot is a MachineError naming the step that failed."""
    step = "KVM_CREATE_DEVICE(KVM_DEV_TYPE_ARM_VGIC_V3)"
    try:
        device = vm.create_device(KVM_DEV_TYPE_ARM_VGIC_V3)
        assert device is not None  # only a TEST creation returns none
        step = "the distributor's address"
        dist = struct.pack("<Q", layout.dist_base)
        device.set_device_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST, dist)
        step = "the redistributors' address"
        redist = struct.pack("<Q", layout.redist_base)
        device.set_device_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_REDIST, redist)
        step = f"the number of interrupts ({layout.nr_irqs})"
        device.set_device_attr(KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, struct.pack("<I", layout.nr_irqs))
        step = "KVM_DEV_ARM_VGIC_CTRL_INIT"
        device.set_device_attr(KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT)
    except KvmError as error:
        raise MachineError(f"the in-kernel GICv3 failed at {step}: {error}") from error
    return device
