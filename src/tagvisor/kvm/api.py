"""The backend API: one method per KVM ioctl, named after it (kvm-ioctls style).

Two backends implement it: the software model (:mod:`tagvisor.kvm.model`) and the
real ``/dev/kvm``. Methods do what their ioctl does and nothing more; a failed call
raises :class:`~tagvisor.kvm.errors.KvmError` with the kernel's errno. Conveniences
(helpers that loop, retry or decide) belong to the VMM, above this layer.

Userspace addresses (memslot ``userspace_addr``, the COPY_TAGS buffer) live in the
address space of the process that owns the VM: :class:`UserMemory` maps and reaches
them, so the same VMM code works whether that process is modelled or real.

What only some backends can do is a *capability*: a method of these protocols with a
default that is correct everywhere (bulk views of guest RAM, residency, page gathers,
the VMM's own tag instructions, userfaultfd, pre-faulting, Python guests). Backends
subclass the protocols and override what they do better; the VMM, snapshots and
migration call the methods and never ask which backend they have.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.uapi import (
    Cap,
    ExitReason,
    kvm_arm_copy_mte_tags,
    kvm_userspace_memory_region,
    kvm_vcpu_init,
)

if TYPE_CHECKING:  # numpy stays out of the real backend's imports (a minimal image)
    import numpy as np
    from numpy.typing import NDArray

    U8 = NDArray[np.uint8]

#: The host page size the capabilities' defaults step by (arm64 and x86 Linux: 4 KiB).
PAGE_BYTES: Final = 4096


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


#: Called, on the faulting thread, with the page-aligned address of a missing page.
FaultHandler = Callable[[int], None]

#: A guest written in Python: called with its VCPU's context, it yields the exits a
#: real guest's MMIO or PSCI calls would make (the model runs them: kvm.model.guest).
GuestProgram = Callable[[Any], Generator[VcpuExit, "bytes | None", None]]


class TaggedMapping(Protocol):
    """The VMM's own PROT_MTE mapping of guest RAM, reached as the process would reach
    it: LDG/STG on its own addresses, and the tags its own accesses are checked against.
    Only a backend whose VMM can issue those instructions has one (the model's)."""

    def is_tagged(self, address: int) -> bool:
        """Whether ``address`` lies in a PROT_MTE mapping of this process."""
        ...

    def load_tags(self, address: int, count: int) -> U8:
        """LDG of ``count`` granules from ``address`` (EIO outside PROT_MTE)."""
        ...

    def store_tags(self, address: int, tags: U8) -> None:
        """STG of one tag per granule from ``address``."""
        ...

    def checked_tags(self, address: int, count: int) -> U8:
        """Tags as the process's own tag check sees them (NO_TAG outside PROT_MTE)."""
        ...


class UserFaultRange(Protocol):
    """A range registered with userfaultfd (MISSING mode) and its placing calls."""

    @property
    def places_tags(self) -> bool:
        """Whether :meth:`copy_with_tags` exists here (a modelled proposal, not Linux)."""
        ...

    def copy(self, address: int, data: bytes, *, wake: bool = True) -> None:
        """UFFDIO_COPY of whole pages (``wake=False``: UFFDIO_COPY_MODE_DONTWAKE)."""
        ...

    def wake(self, address: int, length: int) -> None:
        """UFFDIO_WAKE."""
        ...

    def copy_with_tags(self, address: int, data: bytes, tags: U8) -> None:
        """Place pages already tagged, then wake (only where :attr:`places_tags`)."""
        ...

    def present(self, address: int) -> bool:
        """Whether the page at ``address`` has been placed."""
        ...

    def unregister(self) -> None:
        """UFFDIO_UNREGISTER."""
        ...


class Background(Protocol):
    """Work a capability started on a thread of its own."""

    def stop(self, *, wait: bool = False) -> None:
        """Stop the work (and with ``wait``, return only once its thread has ended)."""
        ...


class _Idle:
    """The :class:`Background` of a capability a backend does not have."""

    def stop(self, *, wait: bool = False) -> None:
        return None


class UserMemory(Protocol):
    """Mappings in the VMM's own address space (what memslots and buffers point at).

    The mapping calls are required. The rest are capabilities, each with a default
    that is correct on any backend, if slow or absent, in the way rust-vmm's
    vm-memory gives a trait's optional methods a default: a backend overrides what it
    can do better (the model's bulk views of host frames, the real backend's own
    mmap), and callers never ask which backend they have.
    """

    def map_anonymous(self, length: int, *, shared: bool = False, mte: bool = False) -> int:
        """mmap(MAP_ANONYMOUS | MAP_PRIVATE or MAP_SHARED), PROT_MTE if ``mte``."""
        ...

    def map_memfd(self, length: int, *, mte: bool = False) -> int:
        """memfd_create + ftruncate + mmap(MAP_SHARED)."""
        ...

    def map_file(self, length: int) -> int:
        """mmap(MAP_SHARED) of a regular file on a disk filesystem (page cache)."""
        ...

    def map_hugetlb(
        self, length: int, *, mte: bool = False, source: str = "memfd", shared: bool = True
    ) -> int:
        """mmap of 2 MiB huge pages, MAP_SHARED or MAP_PRIVATE, from ``source``: "memfd"
        (memfd_create with MFD_HUGETLB), "anonymous" (MAP_ANONYMOUS | MAP_HUGETLB) or
        "file" (a file on a hugetlbfs mount)."""
        ...

    def unmap(self, address: int, length: int) -> None:
        """munmap of a mapping made by one of the map calls."""
        ...

    def protect(self, address: int, length: int, *, writable: bool) -> None:
        """mprotect to read-only or read-write (PROT_MTE kept as mapped)."""
        ...

    def read(self, address: int, length: int) -> bytes:
        """A copy of ``length`` bytes of the VMM's memory at ``address``."""
        ...

    def write(self, address: int, data: bytes | memoryview) -> None:
        """Store ``data`` into the VMM's memory at ``address``."""
        ...

    # -- capabilities: bulk access to guest RAM ------------------------------------------

    def view(self, address: int, length: int) -> U8 | None:
        """[address, address + length) as an array over the mapping itself (no copy),
        or None where the backend cannot show that range in one piece."""
        return None

    def writable_view(self, address: int, length: int) -> U8 | None:
        """Like :meth:`view`, writable; the pages are faulted in for writing."""
        return None

    def view_spans(self, address: int, npages: int) -> list[tuple[int, int]]:
        """The ``npages`` pages from ``address`` as (first page, pages) spans that
        :meth:`view` can show one each: one span unless the backend's views need
        consecutive host frames and these pages' are not."""
        return [(0, npages)]

    def populated(self, address: int, npages: int) -> NDArray[np.bool_]:
        """Which of ``npages`` pages from page-aligned ``address`` may hold data or
        tags (memory behind them, in RAM or in swap); a backend that cannot tell says
        every page may."""
        import numpy as np  # here: the real backend's image imports this module without it

        return np.ones(npages, dtype=bool)

    def gather_pages(self, address: int, pages: NDArray[np.intp], out: U8) -> None:
        """Copy whole pages ``address + pages[i] * PAGE_SIZE`` (ascending) into rows
        ``out[i]``: through :meth:`view` a run of pages at a time, else :meth:`read`."""
        import numpy as np

        for index, first, count in page_runs(pages):
            start, length = address + first * PAGE_BYTES, count * PAGE_BYTES
            view = self.view(start, length)
            rows = view if view is not None else np.frombuffer(self.read(start, length), np.uint8)
            out[index : index + count] = rows.reshape(count, PAGE_BYTES)

    def scatter_pages(self, address: int, pages: NDArray[np.intp], rows: U8 | None) -> None:
        """Write rows of PAGE_SIZE bytes (zeros if ``rows`` is None) to whole pages
        ``address + pages[i] * PAGE_SIZE`` (ascending)."""
        import numpy as np

        for index, first, count in page_runs(pages):
            start, length = address + first * PAGE_BYTES, count * PAGE_BYTES
            part = None if rows is None else rows[index : index + count].reshape(-1)
            view = self.writable_view(start, length)
            if view is not None:
                view[:] = 0 if part is None else part
            else:
                self.write(
                    start, bytes(length) if part is None else np.ascontiguousarray(part).data
                )

    def discard(self, address: int, pages: NDArray[np.intp]) -> None:
        """MADV_DONTNEED of ``pages`` (indices from ``address``): they read as zeros
        afterwards. The default writes the zeros."""
        self.scatter_pages(address, pages, None)

    # -- capabilities: the host's memory management, forced ------------------------------

    def page_out(self, address: int, length: int) -> int | None:
        """madvise(MADV_PAGEOUT) of the range (Linux 5.4+: reclaim it now, anonymous pages
        to swap); how many of its pages are in swap afterwards, or None where the backend
        cannot say."""
        return None

    def soft_offline(self, address: int, length: int) -> int | None:
        """madvise(MADV_SOFT_OFFLINE) of the range's pages, one call a page: each present
        page migrates to a new frame (mm/memory-failure.c); the raw outcome (0 or -errno),
        or None where the backend cannot."""
        return None

    def ksm_merge(self, ranges: Sequence[tuple[int, int]]) -> int | None:
        """madvise(MADV_MERGEABLE) of each (address, length), then KSM's scans until equal
        pages that may merge have (a few full passes); the raw outcome of the madvises (the
        first failure), or None where the backend has no KSM."""
        return None

    # -- capabilities: what only some backends' VMM processes can do -----------------------

    def tagged_mapping(self) -> TaggedMapping | None:
        """The VMM's own tag instructions on its PROT_MTE mappings, if it has them."""
        return None

    def tag_instructions(self) -> TaggedMapping | None:
        """The VMM's own LDG/STG on its PROT_MTE mappings, for planting or reading tags
        as the process itself would (no tag-check control, which :meth:`tagged_mapping`'s
        users need); by default those of :meth:`tagged_mapping`."""
        return self.tagged_mapping()

    def frame_numbers(self, address: int, npages: int) -> list[int] | None:
        """The host page frame of each of ``npages`` pages from ``address`` (0 where none
        is present), to tell whether memory came back on frames used before; None where
        the backend cannot see them."""
        return None

    def userfaultfd(self, start: int, length: int, handler: FaultHandler) -> UserFaultRange | None:
        """Register [start, start + length) with userfaultfd in MISSING mode, faults
        going to ``handler``; None where the backend has no userfaultfd."""
        return None

    def prefault(self, npages: int) -> Background:
        """Start faulting in fresh memory for about ``npages`` pages that are about to
        be written (a migration's first pass), ahead of the writes; a backend that
        cannot gains nothing from it and does nothing."""
        return _Idle()


class Vcpu(Protocol):
    """A VCPU file descriptor's ioctls."""

    def arm_vcpu_init(self, init: kvm_vcpu_init) -> None:
        """KVM_ARM_VCPU_INIT: reset the VCPU to the target and features given."""
        ...

    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG of a register of up to 64 bits, by its KVM register id."""
        ...

    def set_one_reg(self, reg_id: int, value: int) -> None:
        """KVM_SET_ONE_REG of a register of up to 64 bits, by its KVM register id."""
        ...

    def get_reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST: the id of every register the VCPU has."""
        ...

    def run(self) -> VcpuExit:
        """KVM_RUN: run the guest until its next exit, and say why it exited."""
        ...

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE: a ``kvm.uapi.MpState`` (STOPPED while powered off)."""
        ...

    def set_mp_state(self, state: int) -> None:
        """KVM_SET_MP_STATE (arm64 takes RUNNABLE, STOPPED and SUSPENDED)."""
        ...

    def set_mmio_read_data(self, data: bytes) -> None:
        """Fill kvm_run.mmio.data for an MMIO read before the next KVM_RUN."""
        ...

    def kick(self) -> None:
        """Make the KVM_RUN in progress, or else the next one, return KVM_EXIT_INTR.

        Not an ioctl: what a VMM does with kvm_run.immediate_exit and a signal to the
        VCPU thread. Any thread may call it.
        """
        ...

    # -- capabilities --------------------------------------------------------------------

    def get_registers(self, reg_ids: Sequence[int]) -> list[int]:
        """The values of ``reg_ids``, as one KVM_GET_ONE_REG each would give them (the
        default makes those calls; a backend may read its register file at once)."""
        return [self.get_one_reg(reg) for reg in reg_ids]

    def set_registers(self, values: Sequence[tuple[int, int]]) -> None:
        """KVM_SET_ONE_REG of each (id, value) in order, with the same checks."""
        for reg, value in values:
            self.set_one_reg(reg, value)

    def attach_program(self, program: GuestProgram) -> bool:
        """Run ``program`` on this VCPU instead of guest code in memory; False where
        the backend cannot run Python guests (only the model can)."""
        return False


class Device(Protocol):
    """A device file descriptor from KVM_CREATE_DEVICE (e.g. the in-kernel GICv3)."""

    def set_device_attr(self, group: int, attr: int, value: bytes = b"") -> None:
        """KVM_SET_DEVICE_ATTR: ``value`` is what kvm_device_attr.addr points at (none
        for a control such as KVM_DEV_ARM_VGIC_CTRL_INIT, whose addr KVM ignores)."""
        ...

    def get_device_attr(self, group: int, attr: int, size: int = 8) -> bytes:
        """KVM_GET_DEVICE_ATTR into a buffer of ``size`` bytes."""
        ...

    # -- capabilities --------------------------------------------------------------------

    def get_device_attrs(self, attrs: Sequence[tuple[int, int, int]]) -> list[bytes]:
        """KVM_GET_DEVICE_ATTR of each (group, attr, size), in order (the default makes
        those calls; a backend may reuse one argument for all of them)."""
        return [self.get_device_attr(group, attr, size) for group, attr, size in attrs]


class Vm(Protocol):
    """A VM file descriptor's ioctls."""

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM: 0 if the capability is absent, else its value."""
        ...

    def enable_cap(self, cap: int, flags: int = 0, args: Sequence[int] = ()) -> None:
        """KVM_ENABLE_CAP (e.g. KVM_CAP_ARM_MTE, before any VCPU exists)."""
        ...

    def set_user_memory_region(self, region: kvm_userspace_memory_region) -> None:
        """KVM_SET_USER_MEMORY_REGION: add, move or delete a memslot."""
        ...

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """KVM_CREATE_VCPU: a new VCPU with this id."""
        ...

    def arm_preferred_target(self) -> kvm_vcpu_init:
        """KVM_ARM_PREFERRED_TARGET: the target VCPUs of this host should be."""
        ...

    def get_dirty_log(self, slot: int) -> bytes:
        """The slot's dirty bitmap: bit i of byte i // 8 is page i (little-endian u64s)."""
        ...

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, bitmap: bytes) -> None:
        """KVM_CLEAR_DIRTY_LOG: re-protect the pages of ``bitmap`` (from
        ``first_page``) so that their next write is logged again."""
        ...

    def arm_mte_copy_tags(self, copy: kvm_arm_copy_mte_tags) -> int:
        """KVM_ARM_MTE_COPY_TAGS; returns the bytes of guest memory covered."""
        ...

    def create_device(self, device_type: int, *, test: bool = False) -> Device | None:
        """KVM_CREATE_DEVICE of a ``KVM_DEV_TYPE_*``; with ``test``
        (KVM_CREATE_DEVICE_TEST) only asks whether it could, and returns None."""
        ...

    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: drive the line ``irq`` (arm64's encoding, kvm.uapi.arm_spi_irq)
        to ``level``."""
        ...

    def arm_get_reg_writable_masks(
        self, range_: int = 0, reserved: tuple[int, ...] = (0,) * 13
    ) -> list[int]:
        """KVM_ARM_GET_REG_WRITABLE_MASKS (6.7+): each ID register's writable bits."""
        ...


class Kvm(Protocol):
    """``/dev/kvm``: the system ioctls, and the process that owns the VMs."""

    @property
    def user_memory(self) -> UserMemory:
        """The VMM process's memory, where guest RAM and buffers are mapped."""
        ...

    def get_api_version(self) -> int:
        """KVM_GET_API_VERSION (12 on every Linux since 2.6.22)."""
        ...

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm: 0 if the capability is absent, else its value."""
        ...

    def create_vm(self, machine_type: int = 0) -> Vm:
        """KVM_CREATE_VM: a new VM (``machine_type`` carries the IPA size on arm64)."""
        ...

    def get_vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: the size of each VCPU's kvm_run mapping."""
        ...

    # -- capabilities --------------------------------------------------------------------

    def mte_feature_level(self) -> int:
        """The MTE feature level a VM on this host would see (ID_AA64PFR1_EL1.MTE: 0
        none, 2 FEAT_MTE2, 3 FEAT_MTE3). The default knows only whether the cap
        exists, and then says FEAT_MTE2, the least KVM_CAP_ARM_MTE needs."""
        return 2 if self.check_extension(Cap.ARM_MTE) else 0

    def abi_profile(self) -> str:
        """Whose KVM ABI this is: "linux" for a real kernel, a profile's name for the
        model (snapshots and streams record it)."""
        return "linux"

    def in_child_process(self, run: Callable[[Kvm], dict[str, Any]]) -> dict[str, Any]:
        """``run`` on a Kvm of its own in a child of the VMM process, on the same host
        (fork, then the child opens ``/dev/kvm``; the model: a new process on the same
        host frames); the JSON dict it returns. A child that fails returns
        ``{"exception": ...}``."""
        ...


T = TypeVar("T")


def page_runs(pages: NDArray[np.intp]) -> list[tuple[int, int, int]]:
    """(index into ``pages``, first page, count) of each run of consecutive pages in
    ascending ``pages``: a bulk call per run instead of one per page."""
    import numpy as np

    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [pages.size]))
    return [
        (start, int(pages[start]), stop - start)
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True)
    ]


def raw_ioctl(call: Callable[[], T]) -> T | int:
    """The raw variant of any call: its result, or ``-errno`` instead of raising.

    Like the KVM selftests' ``__vm_ioctl`` beside the asserting ``vm_ioctl``; used by
    conformance scenarios that compare errnos between backends.
    """
    try:
        return call()
    except KvmError as error:
        return -(error.errno or errno.EIO)
