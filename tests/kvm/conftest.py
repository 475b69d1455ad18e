"""Fixtures: a model host with a VM whose RAM is one anonymous memslot."""

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tagvisor.kvm.model import ModelKvm, ModelVm
from tagvisor.kvm.uapi import (
    KVM_ARM_TAGS_FROM_GUEST,
    KVM_ARM_TAGS_TO_GUEST,
    Cap,
    kvm_arm_copy_mte_tags,
    kvm_userspace_memory_region,
)

RAM_BASE = 0x4000_0000
RAM_SIZE = 1 << 20


@dataclass
class Machine:
    kvm: ModelKvm
    vm: ModelVm
    ram: int

    def copy(self, ipa: int, length: int, buffer: int, *, to_guest: bool) -> int:
        flags = KVM_ARM_TAGS_TO_GUEST if to_guest else KVM_ARM_TAGS_FROM_GUEST
        args = kvm_arm_copy_mte_tags(guest_ipa=ipa, length=length, addr=buffer, flags=flags)
        return self.vm.arm_mte_copy_tags(args)

    def buffer(self, length: int) -> int:
        return self.kvm.user_memory.map_anonymous(length)


def region(
    slot: int, gpa: int, size: int, uaddr: int, flags: int = 0
) -> kvm_userspace_memory_region:
    return kvm_userspace_memory_region(
        slot=slot, flags=flags, guest_phys_addr=gpa, memory_size=size, userspace_addr=uaddr
    )


MachineFactory = Callable[..., Machine]


@pytest.fixture
def make_machine() -> MachineFactory:
    def make(profile: str = "linux-6.13", *, mte: bool = True, flags: int = 0) -> Machine:
        kvm = ModelKvm(host_memory=64 << 20, profile=profile)
        vm = kvm.create_vm()
        if mte:
            vm.enable_cap(Cap.ARM_MTE)
        ram = kvm.user_memory.map_anonymous(RAM_SIZE)
        vm.set_user_memory_region(region(0, RAM_BASE, RAM_SIZE, ram, flags))
        return Machine(kvm, vm, ram)

    return make
