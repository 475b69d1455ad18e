"""The seed thread's five ways for a VMM to reach guest tags, instrumented.

``copy-tags``, ``prot-mte+tco`` and ``prot-mte+tcma`` are tagvisor.vmm.tag_access's,
wrapped to count what they cost. Two are built here:

* ``two-mappings``: guest RAM (a memfd) mapped twice in the VMM, plainly for data and
  PROT_MTE for tags only, so no VMM data access is ever tag-checked; tags are LDG/STG
  through the second mapping.
* ``dirty-log-tags``: the proposal of tagvisor.kvm.model.dirtytags. Each dirty-log
  harvest also fills a slot size / 32 buffer with the reported pages' tags; the VMM
  reads tags from that buffer and never asks for them otherwise. It cannot write tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from tagvisor.arch.constants import PACKED_TAGS_PER_PAGE, PAGE_SIZE, TAG_GRANULE
from tagvisor.arch.tagformat import U8, unpack_tags
from tagvisor.host.mapping import MAP_SHARED, PROT_MTE, PROT_READ, PROT_WRITE
from tagvisor.host.process import HostProcess
from tagvisor.kvm.model import ModelKvm, ModelVm
from tagvisor.kvm.model.dirtytags import DIRTY_LOG_TAGS_ALL
from tagvisor.kvm.uapi import KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region
from tagvisor.lab.counting import Counters, CountingVm
from tagvisor.vmm.machine import Machine
from tagvisor.vmm.memory import GuestMemory
from tagvisor.vmm.tag_access import (
    CopyTagsAccess,
    ProcessMteAccess,
    TagAccess,
    TagAccessError,
    VmmTagFault,
)

COPY_TAGS: Final = "copy-tags"
TCO: Final = "prot-mte+tco"
TCMA: Final = "prot-mte+tcma"
TWO_MAPPINGS: Final = "two-mappings"
DIRTY_LOG_TAGS: Final = "dirty-log-tags"
DESIGNS: Final = (COPY_TAGS, TCO, TCMA, TWO_MAPPINGS, DIRTY_LOG_TAGS)
#: The seed's warning, for contrast: PROT_MTE with checks on and nothing done.
NAIVE: Final = "prot-mte-naive"
#: The way each design's machine is built with (what its destination rebuilds).
BUILD_WAY: Final = {TCO: TCO, TCMA: TCMA, NAIVE: NAIVE}
AVOID: Final = {TCO: "tco", TCMA: "tcma", NAIVE: "none"}
#: Bytes of page table per 4 KiB page of a mapping: a PTE, plus a PMD entry per 2 MiB.
PAGE_TABLE_PER_PAGE: Final = 8 + 8 / 512


def needs_prot_mte(design: str) -> bool:
    """Whether ``design`` maps guest RAM PROT_MTE in the VMM (the TCO, TCMA and naive ways)."""
    return design in AVOID


class CountingProcessAccess(ProcessMteAccess):
    """A PROT_MTE way that counts its LDG/STG, TCO writes and faults."""

    def __init__(self, kvm: ModelKvm, memory: GuestMemory, avoid: str, counters: Counters) -> None:
        super().__init__(kvm.user_memory.tagged_mapping(), memory, kvm.user_memory, avoid)
        self.counters = counters

    def _check(self, hva: int, length: int, *, write: bool) -> None:
        if self.avoid_checks == "tco":
            self.counters.tco_writes += 2  # MSR TCO, #1 before; MSR TCO, #0 after
        try:
            super()._check(hva, length, write=write)
        except VmmTagFault:
            self.counters.vmm_tag_faults += 1
            raise

    def read_tags(self, gpa: int, granules: int, out: U8 | None = None) -> U8:
        """The tags of ``granules`` granules at ``gpa``, counted as one LDG each."""
        self.counters.tag_instructions += granules
        return super().read_tags(gpa, granules, out)

    def write_tags(self, gpa: int, tags: U8) -> None:
        """Store ``tags`` from ``gpa``, counted as one STG each."""
        self.counters.tag_instructions += int(tags.size)
        super().write_tags(gpa, tags)


class TwoMappingsAccess:
    """Data through the memslot's plain mapping; tags through a second, PROT_MTE one."""

    name = TWO_MAPPINGS

    def __init__(self, process: HostProcess, memory: GuestMemory, counters: Counters) -> None:
        self.process = process
        self.memory = memory
        self.counters = counters
        self._tag_hva: dict[int, int] = {}
        for region in memory.regions:
            vma = process.find_vma(region.hva)
            if vma is None or not vma.shared:
                raise TagAccessError("two mappings need guest RAM in a shareable file (memfd)")
            first = vma.page_index(region.hva)
            self._tag_hva[region.slot] = process.mmap(
                region.size, PROT_READ | PROT_WRITE | PROT_MTE, MAP_SHARED, vma.backing, first
            )
            counters.overhead_bytes += int(region.npages * PAGE_TABLE_PER_PAGE)

    def _tags_at(self, gpa: int, length: int) -> int:
        region = self.memory.region_of(gpa, length)
        return self._tag_hva[region.slot] + gpa - region.gpa

    def read_data(self, gpa: int, length: int) -> bytes:
        """Guest data through the memslot's own (unchecked) mapping."""
        return self.memory.read(gpa, length)

    def write_data(self, gpa: int, data: bytes) -> None:
        """Write guest data through the memslot's own (unchecked) mapping."""
        self.memory.write(gpa, data)

    def read_tags(self, gpa: int, granules: int, out: U8 | None = None) -> U8:
        """The tags of ``granules`` granules at ``gpa`` by LDG through the PROT_MTE mapping
        (counted), into ``out`` if given."""
        self.counters.tag_instructions += granules
        tags = self.process.load_tags(self._tags_at(gpa, granules * TAG_GRANULE), granules)
        if out is None:
            return tags
        np.copyto(out, tags)
        return out

    def write_tags(self, gpa: int, tags: U8) -> None:
        """Store ``tags`` from ``gpa`` by STG through the PROT_MTE mapping (counted), and mark
        the pages dirty for the VMM's own dirty tracking: KVM sees no write."""
        self.counters.tag_instructions += int(tags.size)
        self.process.store_tags(self._tags_at(gpa, int(tags.size) * TAG_GRANULE), tags)
        region = self.memory.region_of(gpa)
        first = (gpa - region.gpa) // PAGE_SIZE
        last = (gpa - region.gpa + tags.size * TAG_GRANULE - 1) // PAGE_SIZE
        region.mark_dirty(slice(first, last + 1))


class DirtyLogTagsVm(CountingVm):
    """The VM as a VMM using the proposal sees it: every harvest brings the tags."""

    def __init__(self, vm: ModelVm, counters: Counters, buffers: dict[int, int]) -> None:
        super().__init__(vm, counters)
        self.model = vm
        self.buffers = buffers

    def _harvest(self, slot: int, flags: int) -> bytes:
        self._count("KVM_GET_DIRTY_LOG_TAGS")
        bitmap = self.model.get_dirty_log_tags(slot, self.buffers[slot], flags)
        pages = int(np.unpackbits(np.frombuffer(bitmap, np.uint8)).sum())
        self.counters.kernel_tag_bytes += pages * PACKED_TAGS_PER_PAGE
        return bitmap

    def set_user_memory_region(self, region: kvm_userspace_memory_region) -> None:
        """Set the memslot; when it starts dirty logging, a first harvest reports every page with
        its tags, so the first pass has them all."""
        super().set_user_memory_region(region)
        if region.flags & KVM_MEM_LOG_DIRTY_PAGES and region.slot in self.buffers:
            # The first harvest reports every page, so the first pass has its tags.
            self._harvest(region.slot, DIRTY_LOG_TAGS_ALL)

    def get_dirty_log(self, slot: int) -> bytes:
        """A harvest with the proposal's KVM_GET_DIRTY_LOG_TAGS: the dirty bitmap, the reported
        pages' tags into the slot's buffer (counted as kernel tag bytes)."""
        return self._harvest(slot, 0)


class DirtyLogTagsAccess:
    """Tags as the last harvest returned them; data through the plain mapping."""

    name = DIRTY_LOG_TAGS

    def __init__(self, kvm: ModelKvm, memory: GuestMemory, buffers: dict[int, int]) -> None:
        self.kvm = kvm
        self.memory = memory
        self.buffers = buffers

    def read_data(self, gpa: int, length: int) -> bytes:
        """Guest data through the memslot's plain mapping."""
        return self.memory.read(gpa, length)

    def write_data(self, gpa: int, data: bytes) -> None:
        """Write guest data through the memslot's plain mapping."""
        self.memory.write(gpa, data)

    def read_tags(self, gpa: int, granules: int, out: U8 | None = None) -> U8:
        """The tags of ``granules`` granules at ``gpa`` as the last harvest left them in the
        slot's buffer; TagAccessError while the slot does not log."""
        region = self.memory.region_of(gpa, granules * TAG_GRANULE)
        if not region.logging:
            raise TagAccessError(
                "a dirty log that returns tags has tags only from a harvest: logging is off"
            )
        skip = (gpa - region.gpa) // TAG_GRANULE
        first, end = skip // 2, -(-(skip + granules) // 2)
        packed = self.kvm.process.read(self.buffers[region.slot] + first, end - first)
        tags = np.empty((end - first) * 2, np.uint8)
        unpack_tags(np.frombuffer(packed, np.uint8).copy(), tags)
        window = tags[skip % 2 : skip % 2 + granules]
        if out is None:
            return window.copy()
        np.copyto(out, window)
        return out

    def write_tags(self, gpa: int, tags: U8) -> None:
        """Refused (TagAccessError): the proposal only returns tags, and gives the VMM no way to
        write them."""
        raise TagAccessError(
            "a dirty log that returns tags only reads them: the VMM has no way to write tags"
        )


@dataclass
class Installed:
    """A design in place on a machine, and what it has cost so far."""

    design: str
    access: TagAccess
    counters: Counters


def install(machine: Machine, kvm: ModelKvm, design: str) -> Installed:
    """Put ``design`` in place on a freshly built ``machine`` of the model backend."""
    counters = Counters()
    memory = machine.memory
    if design == DIRTY_LOG_TAGS:
        assert isinstance(machine.vm, ModelVm)
        buffers = {
            region.slot: kvm.user_memory.map_anonymous(region.npages * PACKED_TAGS_PER_PAGE)
            for region in memory.regions
        }
        counters.overhead_bytes = sum(r.npages * PACKED_TAGS_PER_PAGE for r in memory.regions)
        memory.vm = DirtyLogTagsVm(machine.vm, counters, buffers)
        access: TagAccess = DirtyLogTagsAccess(kvm, memory, buffers)
    else:
        memory.vm = CountingVm(machine.vm, counters)
        if design == COPY_TAGS:
            access = CopyTagsAccess(memory.vm, memory, kvm.user_memory)
        elif design == TWO_MAPPINGS:
            access = TwoMappingsAccess(kvm.process, memory, counters)
        else:
            access = CountingProcessAccess(kvm, memory, AVOID[design], counters)
    machine.tags = access
    machine.dma.access = access
    return Installed(design, access, counters)
