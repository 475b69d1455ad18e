"""The backend API: one method per KVM ioctl, named after it (kvm-ioctls style).

Two backends implement it: the software model (:mod:`tagvisor.kvm.model`) and the
real ``/dev/kvm``. Methods do what their ioctl does and nothing more; a failed call
raises :class:`~tagvisor.kvm.errors.KvmError` with the kernel's errno. Conveniences
(helpers that loop, retry or decide) belong to the VMM, above this layer.

Userspace addresses (memslot ``userspace_addr``, the COPY_TAGS buffer) live in the
address space of the process that owns the VM: :class:`UserMemory` maps and reaches
them, so the same VMM code works whether that process is modelled or real.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.uapi import (
    ExitReason,
    kvm_arm_copy_mte_tags,
    kvm_userspace_memory_region,
    kvm_vcpu_init,
)


@dataclass(frozen=True)
class MmioAccess:
    """kvm_run.mmio: the guest touched an address no memslot covers."""

    phys_addr: int
    length: int
    is_write: bool
    data: bytes = b""


@dataclass(frozen=True)
class VcpuExit:
    """What KVM_RUN returned: the exit reason and the union member it selects."""

    reason: ExitReason
    mmio: MmioAccess | None = None
    system_event: int | None = None
    system_event_data: tuple[int, ...] = field(default=())
    internal_suberror: int | None = None


class UserMemory(Protocol):
    """Mappings in the VMM's own address space (what memslots and buffers point at)."""

    def map_anonymous(self, length: int, *, shared: bool = False, mte: bool = False) -> int:
        """mmap(MAP_ANONYMOUS | MAP_PRIVATE or MAP_SHARED), PROT_MTE if ``mte``."""
        ...

    def map_memfd(self, length: int, *, mte: bool = False) -> int:
        """memfd_create + ftruncate + mmap(MAP_SHARED)."""
        ...

    def map_file(self, length: int) -> int:
        """mmap(MAP_SHARED) of a regular file on a disk filesystem (page cache)."""
        ...

    def map_hugetlb(self, length: int, *, mte: bool = False) -> int:
        """mmap of a hugetlbfs file (2 MiB pages)."""
        ...

    def unmap(self, address: int, length: int) -> None: ...

    def protect(self, address: int, length: int, *, writable: bool) -> None:
        """mprotect to read-only or read-write (PROT_MTE kept as mapped)."""
        ...

    def read(self, address: int, length: int) -> bytes: ...

    def write(self, address: int, data: bytes | memoryview) -> None: ...


class Vcpu(Protocol):
    """A VCPU file descriptor's ioctls."""

    def arm_vcpu_init(self, init: kvm_vcpu_init) -> None: ...

    def get_one_reg(self, reg_id: int) -> int: ...

    def set_one_reg(self, reg_id: int, value: int) -> None: ...

    def get_reg_list(self) -> list[int]: ...

    def run(self) -> VcpuExit: ...

    def set_mmio_read_data(self, data: bytes) -> None:
        """Fill kvm_run.mmio.data for an MMIO read before the next KVM_RUN."""
        ...

    def kick(self) -> None:
        """Make the KVM_RUN in progress, or else the next one, return KVM_EXIT_INTR.

        Not an ioctl: what a VMM does with kvm_run.immediate_exit and a signal to the
        VCPU thread. Any thread may call it.
        """
        ...


class Vm(Protocol):
    """A VM file descriptor's ioctls."""

    def check_extension(self, cap: int) -> int: ...

    def enable_cap(self, cap: int, flags: int = 0, args: Sequence[int] = ()) -> None: ...

    def set_user_memory_region(self, region: kvm_userspace_memory_region) -> None: ...

    def create_vcpu(self, vcpu_id: int) -> Vcpu: ...

    def arm_preferred_target(self) -> kvm_vcpu_init: ...

    def get_dirty_log(self, slot: int) -> bytes:
        """The slot's dirty bitmap: bit i of byte i // 8 is page i (little-endian u64s)."""
        ...

    def clear_dirty_log(
        self, slot: int, first_page: int, num_pages: int, bitmap: bytes
    ) -> None: ...

    def arm_mte_copy_tags(self, copy: kvm_arm_copy_mte_tags) -> int:
        """KVM_ARM_MTE_COPY_TAGS; returns the bytes of guest memory covered."""
        ...


class Kvm(Protocol):
    """``/dev/kvm``: the system ioctls, and the process that owns the VMs."""

    @property
    def user_memory(self) -> UserMemory: ...

    def get_api_version(self) -> int: ...

    def check_extension(self, cap: int) -> int: ...

    def create_vm(self, machine_type: int = 0) -> Vm: ...

    def get_vcpu_mmap_size(self) -> int: ...


T = TypeVar("T")


def raw_ioctl(call: Callable[[], T]) -> T | int:
    """The raw variant of any call: its result, or ``-errno`` instead of raising.

    Like the KVM selftests' ``__vm_ioctl`` beside the asserting ``vm_ioctl``; used by
    conformance scenarios that compare errnos between backends.
    """
    try:
        return call()
    except KvmError as error:
        return -(error.errno or errno.EIO)
