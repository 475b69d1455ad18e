"""Guest memory as the VMM sees it: regions of its own mappings, and a dirty bitmap.

A region is one memslot: a guest-physical range backed by a mapping in the VMM's own
address space. The VMM reads and writes guest data through that mapping (never tag
checked: see :mod:`tagvisor.vmm.tag_access` for tags). What changed since the last look
is KVM's dirty log OR the VMM's own writes (a device's DMA), which KVM cannot see: the
union is what migration must send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NewType

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.errors import TagvisorError
from tagvisor.kvm.api import UserMemory, Vm
from tagvisor.kvm.uapi import KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region

#: A guest physical address.
GuestPhysAddr = NewType("GuestPhysAddr", int)


class GuestMemoryError(TagvisorError):
    """A guest-physical access by the VMM fell outside guest RAM."""


@dataclass(eq=False)
class GuestRegion:
    """One memslot: [gpa, gpa + size) at ``hva`` in the VMM, and the VMM's own writes."""

    slot: int
    gpa: int
    size: int
    hva: int
    logging: bool = False
    vmm_dirty: NDArray[np.bool_] = field(init=False)
    #: What take_dirty returns when nothing changed: one read-only mask of zeros that
    #: the OS never backs, rather than a fresh one to write and then read.
    clean: NDArray[np.bool_] = field(init=False, repr=False)

    #: Whether any bit of ``vmm_dirty`` may be set: a clean last pass need not read it.
    vmm_written: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.vmm_dirty = np.zeros(self.npages, dtype=bool)
        self.clean = np.zeros(self.npages, dtype=bool)
        self.clean.flags.writeable = False

    def mark_dirty(self, pages: slice | NDArray[np.intp]) -> None:
        """The VMM wrote these pages behind KVM's back: the next take_dirty reports them."""
        self.vmm_dirty[pages] = True
        self.vmm_written = True

    @property
    def npages(self) -> int:
        """The region's size in pages."""
        return self.size // PAGE_SIZE

    @property
    def end(self) -> int:
        """The guest-physical address just past the region."""
        return self.gpa + self.size

    def contains(self, gpa: int, length: int = 1) -> bool:
        """Whether [gpa, gpa + length) lies within the region."""
        return self.gpa <= gpa and gpa + length <= self.end


class GuestMemory:
    """All of a VM's RAM regions, reached through the VMM's mappings."""

    def __init__(self, vm: Vm, user: UserMemory) -> None:
        self.vm = vm
        self.user = user
        self.regions: list[GuestRegion] = []

    def add_region(self, gpa: int, size: int, hva: int) -> GuestRegion:
        """Register [gpa, gpa + size) at ``hva`` with KVM as the next memslot."""
        region = GuestRegion(slot=len(self.regions), gpa=gpa, size=size, hva=hva)
        self.vm.set_user_memory_region(
            kvm_userspace_memory_region(
                slot=region.slot,
                flags=0,
                guest_phys_addr=gpa,
                memory_size=size,
                userspace_addr=hva,
            )
        )
        self.regions.append(region)
        return region

    def region_of(self, gpa: int, length: int = 1) -> GuestRegion:
        """The region holding [gpa, gpa + length); an error if none does."""
        for region in self.regions:
            if region.contains(gpa, length):
                return region
        raise GuestMemoryError(
            f"[{gpa:#x}, {gpa + length:#x}) is not inside one region of guest RAM"
        )

    @property
    def size(self) -> int:
        """Guest RAM in bytes, every region's."""
        return sum(region.size for region in self.regions)

    # -- data ------------------------------------------------------------------------

    def read(self, gpa: int, length: int) -> bytes:
        """A copy of ``length`` bytes of guest RAM at ``gpa``."""
        region = self.region_of(gpa, length)
        return self.user.read(region.hva + gpa - region.gpa, length)

    def _hva(self, gpa: int, length: int) -> tuple[GuestRegion, int]:
        region = self.region_of(gpa, length)
        return region, region.hva + gpa - region.gpa

    def view(self, gpa: int, length: int) -> NDArray[np.uint8]:
        """Guest memory as a read-only array: a view of the mapping when the backend can
        give one, else a copy. Read it before the guest changes the range again."""
        array = self.mapped_view(gpa, length)
        if array is None:
            _, hva = self._hva(gpa, length)
            array = np.frombuffer(self.user.read(hva, length), np.uint8)
        return array

    def mapped_view(self, gpa: int, length: int) -> NDArray[np.uint8] | None:
        """Guest memory as a read-only view of the mapping, if the backend can give one
        (UserMemory.view); else None."""
        _, hva = self._hva(gpa, length)
        array = self.user.view(hva, length)
        if array is None:
            return None
        array = array.view()
        array.flags.writeable = False
        return array

    def view_spans(self, gpa: int, npages: int) -> list[tuple[int, int]]:
        """The ``npages`` pages from ``gpa`` as (first page, pages) spans that
        :meth:`mapped_view` can show in one view each (UserMemory.view_spans)."""
        _, hva = self._hva(gpa, npages * PAGE_SIZE)
        return self.user.view_spans(hva, npages)

    def write(self, gpa: int, data: bytes | memoryview) -> None:
        """Write guest memory from the VMM side; the pages count as dirty."""
        region, hva = self._hva(gpa, len(data))
        self.user.write(hva, data)
        if data:
            region.mark_dirty(_pages_of(region, gpa, len(data)))

    # -- whole pages in bulk (snapshots and migration) ----------------------------------

    def populated(self, gpa: int, npages: int) -> NDArray[np.bool_]:
        """Which of ``npages`` pages from ``gpa`` (inside one region) may hold data or
        tags (UserMemory.populated). The others were never touched and read as zeros
        with zero tags."""
        _, hva = self._hva(gpa, npages * PAGE_SIZE)
        return self.user.populated(hva, npages)

    def writable_view(self, gpa: int, length: int) -> NDArray[np.uint8] | None:
        """Guest memory [gpa, gpa + length) as a writable array, if the backend can give
        one (UserMemory.writable_view), else None. Its pages count as dirty, as for
        :meth:`write`."""
        region, hva = self._hva(gpa, length)
        view = self.user.writable_view(hva, length)
        if view is not None:
            region.mark_dirty(_pages_of(region, gpa, length))
        return view

    def read_pages(self, gpa: int, pages: NDArray[np.intp], out: NDArray[np.uint8]) -> None:
        """Copy guest pages ``gpa + pages[i] * PAGE_SIZE`` (ascending, inside one region)
        into rows ``out[i]`` of PAGE_SIZE bytes: a copy the guest cannot change."""
        if pages.size:
            _, hva = self._hva(gpa, (int(pages[-1]) + 1) * PAGE_SIZE)
            self.user.gather_pages(hva, pages, out)

    def write_pages(
        self, gpa: int, pages: NDArray[np.intp], rows: NDArray[np.uint8] | None
    ) -> None:
        """Write rows of PAGE_SIZE bytes (zeros if ``rows`` is None) to guest pages
        ``gpa + pages[i] * PAGE_SIZE`` (ascending, inside one region); they count as
        dirty, as for :meth:`write`."""
        if pages.size:
            region, hva = self._hva(gpa, (int(pages[-1]) + 1) * PAGE_SIZE)
            self.user.scatter_pages(hva, pages, rows)
            region.mark_dirty((gpa - region.gpa) // PAGE_SIZE + pages)

    # -- dirty tracking --------------------------------------------------------------

    def start_dirty_log(self) -> None:
        """Turn on KVM_MEM_LOG_DIRTY_PAGES on every region; everything starts dirty."""
        for region in self.regions:
            self._set_logging(region, True)
            region.mark_dirty(slice(None))

    def stop_dirty_log(self) -> None:
        """Turn KVM_MEM_LOG_DIRTY_PAGES off again on every region."""
        for region in self.regions:
            self._set_logging(region, False)

    def _set_logging(self, region: GuestRegion, on: bool) -> None:
        self.vm.set_user_memory_region(
            kvm_userspace_memory_region(
                slot=region.slot,
                flags=KVM_MEM_LOG_DIRTY_PAGES if on else 0,
                guest_phys_addr=region.gpa,
                memory_size=region.size,
                userspace_addr=region.hva,
            )
        )
        region.logging = on

    def take_dirty(self, region: GuestRegion) -> NDArray[np.bool_]:
        """Pages changed since the last call: KVM's log OR the VMM's own writes (when
        none did, ``region.clean``, which is read-only)."""
        # Done in place, a GiB of guest RAM being 32 KiB of bitmap: this runs while the
        # guest is paused for the last pass of a migration, when nothing has changed
        # more often than not (a paused guest's last pass), and finding that out costs
        # a look at the bitmap's words and a flag, nothing written.
        bitmap = np.frombuffer(self.vm.get_dirty_log(region.slot), np.uint8)
        words = bitmap.view(np.uint64) if bitmap.size % 8 == 0 else bitmap
        if not words.any() and not region.vmm_written:
            return region.clean
        dirty = np.unpackbits(bitmap, count=region.npages, bitorder="little").view(np.bool_)
        if region.vmm_written:
            np.logical_or(dirty, region.vmm_dirty, out=dirty)
            region.vmm_dirty.fill(False)
            region.vmm_written = False
        return dirty


def _pages_of(region: GuestRegion, gpa: int, length: int) -> slice:
    """The region's pages that [gpa, gpa + length) touches."""
    first = (gpa - region.gpa) // PAGE_SIZE
    return slice(first, (gpa - region.gpa + length - 1) // PAGE_SIZE + 1)
