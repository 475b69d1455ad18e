"""The model's ``/dev/kvm``: a host with MTE, its memory, and the VMM process."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from tagvisor.cpu import A64Core
from tagvisor.host.frames import FrameTable
from tagvisor.host.process import HostProcess
from tagvisor.host.swap import SwapDevice
from tagvisor.kvm.api import Kvm
from tagvisor.kvm.model.guest import GuestExecutor
from tagvisor.kvm.model.profiles import DEFAULT_PROFILE, KernelProfile, profile_named
from tagvisor.kvm.model.user_memory import ModelUserMemory
from tagvisor.kvm.model.vm import ModelVm
from tagvisor.kvm.uapi import KVM_API_VERSION, KVM_RUN_SIZE, Cap

#: Builds what runs one VCPU's guest code; called at a VCPU's first KVM_RUN.
ExecutorFactory = Callable[["ModelKvm"], GuestExecutor]


class ModelKvm(Kvm):
    """``/dev/kvm`` of a modelled arm64 host.

    ``host_memory`` bytes of RAM back every VM and the VMM's buffers; the OS gives the
    arrays lazily, so a large figure costs only what is used. The profile picks the
    kernel version (or the seed's v2 design) whose ABI the model follows. ``proposals``
    turns on modelled kernel features that Linux does not have (named in
    tagvisor.host.userfault), all off by default. ``prealloc`` bytes of host RAM are
    faulted in when the host is made (see FrameTable.prealloc): what a destination
    that waits for a migrating guest wants, so its pages land in memory already there.
    ``executor`` builds what runs each VCPU's guest code (default: :func:`a64_core`).
    """

    def __init__(
        self,
        host_memory: int = 1 << 30,
        profile: str | KernelProfile = DEFAULT_PROFILE,
        *,
        host_mte: bool = True,
        host_mte_level: int = 2,
        host_32bit_el1: bool = False,
        host_mte_pfr2: int = 0,
        host_kvm_protected: bool = False,
        swap_pages: int = 0,
        proposals: frozenset[str] = frozenset(),
        prealloc: int = 0,
        executor: ExecutorFactory | None = None,
    ) -> None:
        self.profile = profile_named(profile) if isinstance(profile, str) else profile
        self.host_mte = host_mte
        self.host_mte_level = host_mte_level
        self.host_32bit_el1 = host_32bit_el1
        #: The host's ID_AA64PFR2_EL1 MTE fields (MTESTOREONLY 7:4, MTEFAR 11:8).
        self.host_mte_pfr2 = host_mte_pfr2 & 0xFF0
        #: KVM runs in protected mode (kvm-arm.mode=protected, pKVM).
        self.host_kvm_protected = host_kvm_protected
        self.frames = FrameTable(host_memory // 4096)
        self.frames.hugetlb_folio_flags = self.profile.hugetlb_pool_clears_mte_flags
        self.frames.prealloc(-(-prealloc // 4096))
        swap = SwapDevice(self.frames, swap_pages) if swap_pages else None
        self.process = HostProcess(
            self.frames, swap, hugetlb_mte=self.profile.hugetlb_mte_allowed, proposals=proposals
        )
        self.process.pageout_keeps_secondary_mapped = self.profile.pageout_checks_references
        self._user_memory = ModelUserMemory(self.process)
        self._executor = executor or a64_core

    @property
    def user_memory(self) -> ModelUserMemory:
        """The modelled VMM process's address space."""
        return self._user_memory

    def get_api_version(self) -> int:
        """KVM_GET_API_VERSION (12)."""
        return KVM_API_VERSION

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 for anything unknown (kvm_vm_ioctl_check_extension)."""
        if cap == Cap.ARM_MTE:
            return int(
                self.host_mte and self.profile.mte_is_vm_cap and not self._pkvm_refuses_mte()
            )
        if cap == Cap.MANUAL_DIRTY_LOG_PROTECT2:
            return 3
        if cap == Cap.ARM_EL1_32BIT:
            return int(self.host_32bit_el1)
        if cap in (Cap.USER_MEMORY, Cap.ONE_REG, Cap.READONLY_MEM):
            return 1
        return 0

    def _pkvm_refuses_mte(self) -> bool:
        """Whether pKVM keeps MTE from every VM here (Linux 7.0, f4eee308c8f4)."""
        return self.host_kvm_protected and not self.profile.mte_cap_under_pkvm

    def create_vm(self, machine_type: int = 0) -> ModelVm:
        """KVM_CREATE_VM on the modelled host."""
        return ModelVm(self)

    def new_executor(self) -> GuestExecutor:
        """What executes a VCPU's guest code: by default the A64 core (tagvisor.cpu)."""
        return self._executor(self)

    def get_vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE (the model's kvm_run has Linux's size)."""
        return KVM_RUN_SIZE

    def mte_feature_level(self) -> int:
        """The modelled host's MTE level, as its VMs see it."""
        return self.host_mte_level

    def abi_profile(self) -> str:
        """The kernel profile's name, e.g. linux-6.13 or seed-v2."""
        return self.profile.name

    def in_child_process(self, run: Callable[[Kvm], dict[str, Any]]) -> dict[str, Any]:
        """``run`` in a new modelled process on this host's frames (what a forked VMM's
        child that opens ``/dev/kvm`` has: an address space of its own, the same RAM);
        the process exits afterwards, its memory going back to the host."""
        child = copy.copy(self)
        child.process = HostProcess(
            self.frames,
            self.process.swap,
            hugetlb_mte=self.profile.hugetlb_mte_allowed,
            proposals=self.process.proposals,
        )
        child.process.pageout_keeps_secondary_mapped = self.profile.pageout_checks_references
        child._user_memory = ModelUserMemory(child.process)
        try:
            return run(child)
        except Exception as exc:  # as a real child would report it
            return {"exception": f"{type(exc).__name__}: {exc}"}
        finally:
            child.process.exit()


def a64_core(kvm: ModelKvm) -> GuestExecutor:
    """An A64 core for ``kvm``'s VCPUs (the MTE level the guest sees is in each VCPU's
    ID_AA64PFR1_EL1, from the host's)."""
    # 200k instructions a slice: a pause (for migration's last pass) waits ~20 ms, not ~100.
    return A64Core(max_instructions_per_run=200_000)
