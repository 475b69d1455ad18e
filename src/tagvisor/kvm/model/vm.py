"""A model VM: capabilities, memslots, VCPUs, dirty log and COPY_TAGS."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import numpy as np

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import dirtytags, psci
from tagvisor.kvm.model.copytags import copy_tags
from tagvisor.kvm.model.idregs import writable_masks
from tagvisor.kvm.model.memslots import Memslot, MemslotTable
from tagvisor.kvm.model.regdata import regfile
from tagvisor.kvm.model.stage2 import Stage2Mmu
from tagvisor.kvm.model.vcpu import ModelVcpu
from tagvisor.kvm.uapi import (
    KVM_ARM_TARGET_GENERIC_V8,
    KVM_DIRTY_LOG_INITIALLY_SET,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_USER_MEM_SLOTS,
    Cap,
    kvm_arm_copy_mte_tags,
    kvm_userspace_memory_region,
    kvm_vcpu_init,
)

if TYPE_CHECKING:
    from tagvisor.kvm.model.system import ModelKvm

KVM_MAX_VCPUS: Final = 512
#: Default IPA space of an arm64 VM (KVM_VM_TYPE_ARM_IPA_SIZE 0 means 40 bits).
IPA_BITS: Final = 40
#: User address space limit (48-bit VA, TASK_SIZE_64) for access_ok.
TASK_SIZE: Final = 1 << 48


class ModelVm:
    """The state behind a VM file descriptor, with Linux's checks and errnos."""

    def __init__(self, kvm: ModelKvm) -> None:
        self.kvm = kvm
        self.profile = kvm.profile
        self.process = kvm.process
        self.memslots = MemslotTable()
        self.vcpus: dict[int, ModelVcpu] = {}
        self.vcpu_features: int | None = None
        self.mte_cap_enabled = False  # KVM_ARCH_FLAG_MTE_ENABLED
        self.seed_v2_mte = False  # the v2 design's sticky VM-wide flag
        self.manual_dirty_protect = 0
        self.id_regs: dict[int, int] = {}  # ID registers the VMM changed (per VM in Linux)
        self.has_run = False  # kvm_vm_has_ran_once(): a VCPU has entered KVM_RUN
        self._closed = False
        self.stage2 = Stage2Mmu(self.memslots, self.process, self.profile, lambda: self.has_mte)

    @property
    def has_mte(self) -> bool:
        """kvm_has_mte(): tags of guest memory are initialised and kept."""
        return self.kvm.host_mte and (self.mte_cap_enabled or self.seed_v2_mte)

    # -- capabilities ----------------------------------------------------------------

    def close(self) -> None:
        """The VM's last file descriptor closed: KVM destroys it, unmapping stage 2 and
        unregistering its MMU notifier (kvm_destroy_vm)."""
        if not self._closed:
            self._closed = True
            self.stage2.detach()

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd; unknown capabilities give 0."""
        return self.kvm.check_extension(cap)

    def enable_cap(self, cap: int, flags: int = 0, args: Sequence[int] = ()) -> None:
        """KVM_ENABLE_CAP (arm.c kvm_vm_ioctl_enable_cap); only flags is validated."""
        ioctl = "KVM_ENABLE_CAP"
        if flags:
            raise KvmError(errno.EINVAL, ioctl, "flags must be zero")
        if cap == Cap.ARM_MTE and self.profile.mte_is_vm_cap:
            if not self.kvm.check_extension(Cap.ARM_MTE):
                # kvm_vm_ioctl_enable_cap; from 7.0 pKVM refuses it too (pkvm_ext_allowed)
                raise KvmError(errno.EINVAL, ioctl, "this host offers no MTE to its VMs")
            if self.vcpus:
                raise KvmError(
                    errno.EINVAL, ioctl, "MTE must be enabled before the first KVM_CREATE_VCPU"
                )
            self.mte_cap_enabled = True
            return
        if cap == Cap.MANUAL_DIRTY_LOG_PROTECT2:
            value = args[0] if args else 0
            valid = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET
            if value & ~valid:
                raise KvmError(errno.EINVAL, ioctl, f"unknown dirty-log mode bits {value:#x}")
            self.manual_dirty_protect = value
            return
        raise KvmError(errno.EINVAL, ioctl, f"capability {cap} cannot be enabled")

    # -- memslots --------------------------------------------------------------------

    def set_user_memory_region(self, region: kvm_userspace_memory_region) -> None:
        """KVM_SET_USER_MEMORY_REGION, with kvm_main.c's checks in order, then arm64's."""
        ioctl = "KVM_SET_USER_MEMORY_REGION"

        def einval(detail: str) -> KvmError:
            return KvmError(errno.EINVAL, ioctl, detail)

        if region.flags & ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY):
            raise einval(f"unknown flags {region.flags:#x}")
        slot_id = region.slot & 0xFFFF
        if slot_id >= KVM_USER_MEM_SLOTS or region.slot >> 16:
            raise einval(f"slot {region.slot} is out of range (0 to {KVM_USER_MEM_SLOTS - 1})")
        size, gpa, uaddr = region.memory_size, region.guest_phys_addr, region.userspace_addr
        if size % PAGE_SIZE or gpa % PAGE_SIZE:
            raise einval("memory_size and guest_phys_addr must be page aligned")
        if uaddr % PAGE_SIZE or uaddr >> 56 or uaddr + size > TASK_SIZE:
            raise einval("userspace_addr must be page aligned, untagged and in user space")
        if gpa + size >= 2**64:
            raise einval("guest_phys_addr + memory_size overflows")
        old = self.memslots.slots.get(slot_id)
        if not size:
            if old is None:
                raise einval(f"slot {slot_id} does not exist, so it cannot be deleted")
            self._delete(old)
            return
        if old is not None:
            if old.userspace_addr != uaddr or old.memory_size != size:
                raise einval("an existing slot's address or size cannot change; delete it first")
            if (old.flags ^ region.flags) & KVM_MEM_READONLY:
                raise einval("KVM_MEM_READONLY cannot be flipped on an existing slot")
        moving = old is None or old.guest_phys_addr != gpa
        if moving and self.memslots.overlapping(gpa, size, exclude=slot_id) is not None:
            raise KvmError(errno.EEXIST, ioctl, f"[{gpa:#x}, {gpa + size:#x}) overlaps a slot")
        self._prepare(ioctl, gpa, size, uaddr)
        if old is not None and not moving:
            self._change_flags(old, region.flags)
            return
        if old is not None:
            self._delete(old)
        memslot = Memslot(slot_id, 0, gpa, size, uaddr)
        self.memslots.slots[slot_id] = memslot
        self._change_flags(memslot, region.flags)

    def _prepare(self, ioctl: str, gpa: int, size: int, uaddr: int) -> None:
        """kvm_arch_prepare_memory_region (mmu.c): IPA range, then the MTE VMA check."""
        if gpa + size > 1 << IPA_BITS:
            raise KvmError(
                errno.EFAULT, ioctl, f"the slot ends beyond the {IPA_BITS}-bit IPA space"
            )
        if not self.has_mte:
            return
        for vma in self.process.vmas_between(uaddr, uaddr + size):
            reason = self.profile.memslot_refusal(vma)
            if reason is not None:
                raise KvmError(errno.EINVAL, ioctl, f"{reason} ({vma.describe()})")

    def _change_flags(self, memslot: Memslot, flags: int) -> None:
        was_logging = memslot.logging
        memslot.flags = flags
        if memslot.logging and not was_logging:
            initially_set = self.manual_dirty_protect & KVM_DIRTY_LOG_INITIALLY_SET
            memslot.dirty = np.full(memslot.npages, bool(initially_set))
            memslot.dirty_pending = bool(initially_set)
            if not initially_set:
                memslot.s2_writable[:] = False  # kvm_mmu_wp_memory_region
                self.memslots.changed()
        elif not memslot.logging:
            memslot.dirty = None
        if memslot.readonly:
            memslot.s2_writable[:] = False
            self.memslots.changed()

    def _delete(self, memslot: Memslot) -> None:
        memslot.unmap(slice(None))
        del self.memslots.slots[memslot.slot]
        self.memslots.changed()

    # -- VCPUs -----------------------------------------------------------------------

    def create_vcpu(self, vcpu_id: int) -> ModelVcpu:
        """KVM_CREATE_VCPU."""
        ioctl = "KVM_CREATE_VCPU"
        if not 0 <= vcpu_id < KVM_MAX_VCPUS:
            raise KvmError(errno.EINVAL, ioctl, f"VCPU id {vcpu_id} is out of range")
        if vcpu_id in self.vcpus:
            raise KvmError(errno.EEXIST, ioctl, f"VCPU {vcpu_id} already exists")
        vcpu = ModelVcpu(self, vcpu_id)
        self.vcpus[vcpu_id] = vcpu
        return vcpu

    def power_on(self, mpidr: int, *, entry: int, context: int) -> int:
        """PSCI CPU_ON: the VCPU whose id is the target's Aff0 starts at ``entry``."""
        target = self.vcpus.get(mpidr & 0xFF)
        if target is None or mpidr >> 8 & 0xFFFF_FFFF_FF:
            return psci.INVALID_PARAMETERS
        if not target.powered_off:
            return psci.ALREADY_ON
        target.power_on(entry, context)
        return psci.SUCCESS

    def arm_preferred_target(self) -> kvm_vcpu_init:
        """KVM_ARM_PREFERRED_TARGET: generic v8, no features."""
        return kvm_vcpu_init(target=KVM_ARM_TARGET_GENERIC_V8)

    def arm_get_reg_writable_masks(
        self, range_: int = 0, reserved: tuple[int, ...] = (0,) * 13
    ) -> list[int]:
        """KVM_ARM_GET_REG_WRITABLE_MASKS: 192 masks of the feature ID space (6.7+)."""
        return writable_masks(regfile(self.profile.regfile), range_, reserved)

    # -- dirty log -------------------------------------------------------------------

    def _logging_slot(self, slot: int, ioctl: str) -> Memslot:
        if slot & 0xFFFF >= KVM_USER_MEM_SLOTS or slot >> 16:
            raise KvmError(errno.EINVAL, ioctl, f"slot {slot} is out of range")
        memslot = self.memslots.slots.get(slot)
        if memslot is None or memslot.dirty is None:
            raise KvmError(errno.ENOENT, ioctl, f"slot {slot} does not log dirty pages")
        return memslot

    def get_dirty_log(self, slot: int) -> bytes:
        """KVM_GET_DIRTY_LOG: without manual protect, also clear and write-protect."""
        with self.stage2.lock:
            return self._get_dirty_log(slot)

    def _get_dirty_log(self, slot: int) -> bytes:
        memslot = self._logging_slot(slot, "KVM_GET_DIRTY_LOG")
        assert memslot.dirty is not None
        # A paused guest's log is clean pass after pass: found so from a flag, with
        # no read of a bit per page (its last pass is part of a migration's downtime).
        dirty = memslot.dirty_pending and bool(memslot.dirty.any())
        bitmap = memslot.dirty_bitmap_bytes() if dirty else memslot.clean_bitmap_bytes()
        if not self.manual_dirty_protect & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE and dirty:
            reported = np.flatnonzero(memslot.dirty)
            memslot.dirty[reported] = False
            memslot.s2_writable[reported] = False
            self.memslots.changed()
            dirty = False
        memslot.dirty_pending = dirty
        return bitmap

    def get_dirty_log_tags(self, slot: int, addr: int, flags: int = 0) -> bytes:
        """PROPOSAL (tagvisor.kvm.model.dirtytags), not Linux: KVM_GET_DIRTY_LOG that
        also writes each reported page's packed tags to ``addr`` (slot size / 32)."""
        dirtytags.check_enabled(self.process)
        with self.stage2.lock:
            memslot = self._logging_slot(slot, dirtytags.IOCTL)
            assert memslot.dirty is not None
            if flags & dirtytags.DIRTY_LOG_TAGS_ALL:
                memslot.dirty[:] = True  # report all; the harvest below write-protects
                memslot.dirty_pending = True
            bitmap = self._get_dirty_log(slot)
            bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
            pages = np.flatnonzero(bits[: memslot.npages])
            dirtytags.write_page_tags(self.process, memslot, pages, addr)
            return bitmap

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, bitmap: bytes) -> None:
        """KVM_CLEAR_DIRTY_LOG: clear the given bits and write-protect those pages."""
        with self.stage2.lock:
            self._clear_dirty_log(slot, first_page, num_pages, bitmap)

    def _clear_dirty_log(self, slot: int, first_page: int, num_pages: int, bitmap: bytes) -> None:
        ioctl = "KVM_CLEAR_DIRTY_LOG"
        if slot & 0xFFFF >= KVM_USER_MEM_SLOTS or slot >> 16:
            raise KvmError(errno.EINVAL, ioctl, f"slot {slot} is out of range")
        if first_page & 63:
            raise KvmError(errno.EINVAL, ioctl, "first_page must be a multiple of 64")
        memslot = self._logging_slot(slot, ioctl)
        assert memslot.dirty is not None
        npages = memslot.npages
        if (
            first_page > npages
            or num_pages > npages - first_page
            or (num_pages < npages - first_page and num_pages & 63)
        ):
            raise KvmError(errno.EINVAL, ioctl, "the page range does not fit the slot")
        bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")[:num_pages]
        if bits.size < num_pages:
            raise KvmError(errno.EFAULT, ioctl, "the bitmap is shorter than num_pages bits")
        pages = first_page + np.flatnonzero(bits)
        memslot.dirty[pages] = False
        memslot.s2_writable[pages] = False
        self.memslots.changed()

    # -- tags ------------------------------------------------------------------------

    def arm_mte_copy_tags(self, copy: kvm_arm_copy_mte_tags) -> int:
        """KVM_ARM_MTE_COPY_TAGS (guest.c kvm_vm_ioctl_mte_copy_tags)."""
        if not self.profile.has_copy_tags:
            raise KvmError(
                errno.EINVAL, "KVM_ARM_MTE_COPY_TAGS", f"{self.profile.name} has no such ioctl"
            )
        # No stage-2 lock: COPY_TAGS goes through the VMM's mapping and never touches the
        # dirty log, and a post-copy VMM calls it while a VCPU sleeps in a userfault.
        return copy_tags(
            copy,
            memslots=self.memslots,
            process=self.process,
            profile=self.profile,
            mte_enabled=self.has_mte,
        )

    def create_device(self, device_type: int, *, test: bool = False) -> None:
        """KVM_CREATE_DEVICE: the model has no in-kernel devices (no GIC, no ITS), so
        every type is one this KVM lacks: ENODEV, as kvm_ioctl_create_device answers a
        type with no ops (virt/kvm/kvm_main.c)."""
        raise KvmError(
            errno.ENODEV, "KVM_CREATE_DEVICE", f"the model has no device of type {device_type}"
        )

    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: no irqchip in the model, so ENXIO, as arm.c's
        kvm_vm_ioctl_irq_line answers an SPI without one (the model's VCPUs take no
        interrupts at all, so the CPU type is refused too)."""
        raise KvmError(errno.ENXIO, "KVM_IRQ_LINE", "the model has no interrupt controller")
