"""What a VMM spends: ioctls counted at the backend API, and the VMM's own tag work."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tagvisor.kvm.api import Vcpu, Vm
from tagvisor.kvm.uapi import kvm_arm_copy_mte_tags, kvm_userspace_memory_region, kvm_vcpu_init


@dataclass
class Counters:
    """Costs of one design over one workload."""

    #: ioctls by name, as they crossed the backend API.
    ioctls: Counter[str] = field(default_factory=Counter)
    #: Bytes the kernel copied into or out of VMM buffers for tags (copy_to/from_user).
    kernel_tag_bytes: int = 0
    #: LDG/STG the VMM itself executed (one per granule: LDGM is EL1 only).
    tag_instructions: int = 0
    #: MSR TCO writes around VMM data accesses.
    tco_writes: int = 0
    #: SIGSEGV/SEGV_MTESERR the VMM took on its own accesses.
    vmm_tag_faults: int = 0
    #: Memory the design needs beyond guest RAM (page tables, buffers), in bytes.
    overhead_bytes: int = 0

    @property
    def syscalls(self) -> int:
        """The ioctls counted, of every kind."""
        return sum(self.ioctls.values())


class CountingVm:
    """A VM file descriptor whose ioctls are counted on the way through.

    Anything beyond the Vm protocol (the model's stage 2, for instance) is forwarded.
    """

    def __init__(self, vm: Vm, counters: Counters) -> None:
        self._vm = vm
        self.counters = counters

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vm, name)

    def _count(self, name: str) -> None:
        self.counters.ioctls[name] += 1

    def check_extension(self, cap: int) -> int:
        """Count one KVM_CHECK_EXTENSION, then pass it to the VM."""
        self._count("KVM_CHECK_EXTENSION")
        return self._vm.check_extension(cap)

    def enable_cap(self, cap: int, flags: int = 0, args: Sequence[int] = ()) -> None:
        """Count one KVM_ENABLE_CAP, then pass it to the VM."""
        self._count("KVM_ENABLE_CAP")
        self._vm.enable_cap(cap, flags, args)

    def set_user_memory_region(self, region: kvm_userspace_memory_region) -> None:
        """Count one KVM_SET_USER_MEMORY_REGION, then pass it to the VM."""
        self._count("KVM_SET_USER_MEMORY_REGION")
        self._vm.set_user_memory_region(region)

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """Count one KVM_CREATE_VCPU, then pass it to the VM."""
        self._count("KVM_CREATE_VCPU")
        return self._vm.create_vcpu(vcpu_id)

    def arm_preferred_target(self) -> kvm_vcpu_init:
        """Count one KVM_ARM_PREFERRED_TARGET, then pass it to the VM."""
        self._count("KVM_ARM_PREFERRED_TARGET")
        return self._vm.arm_preferred_target()

    def get_dirty_log(self, slot: int) -> bytes:
        """Count one KVM_GET_DIRTY_LOG, then pass it to the VM."""
        self._count("KVM_GET_DIRTY_LOG")
        return self._vm.get_dirty_log(slot)

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, bitmap: bytes) -> None:
        """Count one KVM_CLEAR_DIRTY_LOG, then pass it to the VM."""
        self._count("KVM_CLEAR_DIRTY_LOG")
        self._vm.clear_dirty_log(slot, first_page, num_pages, bitmap)

    def arm_mte_copy_tags(self, copy: kvm_arm_copy_mte_tags) -> int:
        """Count one KVM_ARM_MTE_COPY_TAGS and the tag bytes the kernel copied (one per granule
        of the bytes it reports done); its result."""
        self._count("KVM_ARM_MTE_COPY_TAGS")
        done = self._vm.arm_mte_copy_tags(copy)
        self.counters.kernel_tag_bytes += done // 16  # one tag byte per granule
        return done
