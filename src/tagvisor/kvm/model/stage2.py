"""Stage 2: how guest physical accesses reach host frames, and what MTE adds there.

arch/arm64/kvm/mmu.c user_mem_abort, as far as tags and dirty pages are concerned:

* A *translation fault* (no stage-2 entry) faults the page in through the VMM's mapping
  (get_user_pages), then, for an MTE VM and a mapping that may hold tags, initialises
  the page's tags once (sanitise_mte_tags: cleared unless already PG_mte_tagged). A
  mapping that may not (profile.fault_refusal) fails KVM_RUN with EFAULT.
* While the slot logs dirty pages, a read fault maps the page read-only, so the first
  write - a data store or a tag store, which stage 2 also treats as a write - takes a
  *permission fault*, which makes it writable and marks it dirty. Permission faults
  never touch tags (except in the seed's v2).
* A write fault marks the page dirty in the slot's bitmap (mark_page_dirty_in_slot).

The tag-store-dirties-the-page rule is the seed's claim that tags share the page's
permission model; a QEMU reviewer doubted the dirty log sees tag-only writes. It is
marked here as one to confirm on the real kernel (docs/kvm-abi.md, conformance).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import GRANULES_PER_PAGE, PACKED_TAGS_PER_PAGE, PAGE_SIZE, TAG_GRANULE
from tagvisor.arch.tagformat import U8, pack_tags, unpack_tags
from tagvisor.cpu.bus import MmioExit
from tagvisor.host.errors import SegmentationFault
from tagvisor.host.mapping import PROT_WRITE
from tagvisor.host.process import HostProcess
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model.memslots import NOT_MAPPED, Memslot, MemslotTable
from tagvisor.kvm.model.profiles import KernelProfile

P = ParamSpec("P")
R = TypeVar("R")


def _locked(
    method: Callable[Concatenate[Stage2Mmu, P], R],
) -> Callable[Concatenate[Stage2Mmu, P], R]:
    def wrapper(self: Stage2Mmu, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.lock:
            return method(self, *args, **kwargs)

    wrapper.__doc__, wrapper.__name__ = method.__doc__, method.__name__
    return wrapper


class Stage2Mmu:
    """Stage-2 faults and guest-physical data and tag access for one VM.

    The A64 core's :class:`~tagvisor.cpu.bus.PhysicalBus`.
    """

    def __init__(
        self,
        memslots: MemslotTable,
        process: HostProcess,
        profile: KernelProfile,
        mte_enabled: Callable[[], bool],
    ) -> None:
        self.memslots = memslots
        self.process = process
        self.frames = process.frames
        self.profile = profile
        self.mte_enabled = mte_enabled
        #: Held by every guest access and by dirty-log harvesting, so a harvest never
        #: falls between a write fault marking a page dirty and the write landing
        #: (real KVM gets this from the guest retrying the faulting store). A CPU that
        #: caches translations holds it while it runs a block.
        self.lock = threading.RLock()
        #: Counts of faults taken, for tests and the lab.
        self.translation_faults = 0
        self.permission_faults = 0
        process.register_notifier(self.invalidate_hva, self.maps_hva, self.change_pte)

    # -- MMU notifier ----------------------------------------------------------------

    @_locked
    def invalidate_hva(self, start: int, end: int) -> None:
        """kvm_mmu_notifier_invalidate_range_start: unmap stage 2 for [start, end)."""
        for memslot in self.memslots.slots.values():
            lo = max(start, memslot.userspace_addr)
            hi = min(end, memslot.userspace_addr + memslot.memory_size)
            if lo < hi:
                first = (lo - memslot.userspace_addr) // PAGE_SIZE
                last = -(-(hi - memslot.userspace_addr) // PAGE_SIZE)
                memslot.unmap(slice(first, last))
                self.memslots.changed()

    def maps_hva(self, address: int) -> bool:
        """Whether stage 2 maps the page at host address ``address`` (its access flag:
        KVM sets it on every mapping it makes)."""
        for memslot in self.memslots.slots.values():
            if memslot.userspace_addr <= address < memslot.userspace_addr + memslot.memory_size:
                page = (address - memslot.userspace_addr) // PAGE_SIZE
                if memslot.s2_pfn[page] != NOT_MAPPED:
                    return True
        return False

    @_locked
    def change_pte(self, address: int) -> None:
        """kvm_set_spte_gfn for a page of a memslot: before 6.2 it sanitised the page's
        tags in an MTE VM (clearing them and setting PG_mte_tagged) whether or not the
        guest ever touched it; from 2dbf12ae132c ("KVM: arm64: Simplify the
        sanitise_mte_tags() logic") an untagged page is left for user_mem_abort."""
        if not (self.profile.change_pte_sanitises_tags and self.mte_enabled()):
            return
        for memslot in self.memslots.slots.values():
            if memslot.userspace_addr <= address < memslot.userspace_addr + memslot.memory_size:
                vma = self.process.find_vma(address)
                if vma is not None:
                    pfn = vma.backing.pfns[vma.page_index(address)]
                    if pfn:
                        self.frames.sanitise(np.array([pfn], dtype=np.int64))
                return

    @_locked
    def detach(self) -> None:
        """kvm_destroy_vm: stage 2 goes and the MMU notifier is unregistered."""
        for memslot in self.memslots.slots.values():
            memslot.unmap(slice(None))
        self.memslots.changed()
        self.process.unregister_notifier(self.invalidate_hva)

    # -- faults ----------------------------------------------------------------------

    def _pieces(self, gpa: int, length: int) -> Iterator[tuple[Memslot, int, int]]:
        """(memslot, first page, page count) covering [gpa, gpa + length)."""
        cursor = gpa - gpa % PAGE_SIZE
        stop = gpa + length
        while cursor < stop:
            memslot = self.memslots.find(cursor)
            if memslot is None:
                raise MmioExit(max(cursor, gpa), write=False)
            first = (cursor - memslot.guest_phys_addr) // PAGE_SIZE
            last = min(-(-(stop - memslot.guest_phys_addr) // PAGE_SIZE), memslot.npages)
            yield memslot, first, last - first
            cursor = memslot.guest_phys_addr + last * PAGE_SIZE

    @_locked
    def map_pages(self, gpa: int, length: int, *, write: bool) -> NDArray[np.int64]:
        """Fault in every page of the range as a guest access would; return host frames.

        Raises MmioExit where no memslot (or a read-only one, for writes) is found, and
        KvmError(EFAULT) where the kernel would fail KVM_RUN.
        """
        parts = []
        for memslot, first, count in self._pieces(gpa, length):
            if write and memslot.readonly:
                raise MmioExit(memslot.guest_phys_addr + first * PAGE_SIZE, write=True)
            parts.append(self._fault(memslot, np.arange(first, first + count), write=write))
        return np.concatenate(parts)

    def _fault(
        self, memslot: Memslot, pages: NDArray[np.int64], *, write: bool
    ) -> NDArray[np.int64]:
        missing = pages[memslot.s2_pfn[pages] == NOT_MAPPED]
        if missing.size:
            self.translation_faults += int(missing.size)
            self._translation_fault(memslot, missing, write=write)
        if write:
            protected = pages[~memslot.s2_writable[pages]]
            if protected.size:
                self.permission_faults += int(protected.size)
                if self.profile.sanitise_on_permission_fault and self.mte_enabled():
                    self.frames.sanitise(memslot.s2_pfn[protected])
                memslot.s2_writable[protected] = True
            if memslot.dirty is not None:
                memslot.dirty[pages] = True
                memslot.dirty_pending = True
        return memslot.s2_pfn[pages]

    def _translation_fault(
        self, memslot: Memslot, pages: NDArray[np.int64], *, write: bool
    ) -> None:
        start = memslot.hva_of(int(pages[0]))
        length = (int(pages[-1]) - int(pages[0]) + 1) * PAGE_SIZE
        vmas = self.process.vmas_between(start, start + length)
        if not vmas:
            raise KvmError(errno.EFAULT, "KVM_RUN", f"no VMM mapping at {start:#x}")
        mte = self.mte_enabled()
        for vma in vmas if mte else ():
            refusal = self.profile.fault_refusal(vma)
            if refusal is not None:
                raise KvmError(refusal[0], "KVM_RUN", refusal[1])
        try:
            # gup for the pages (contiguous in the VMM): a read fault may still map the
            # host page writable, but stage 2 stays read-only while logging.
            pfns_all = self.process.fault_in(start, length, write=write)
        except SegmentationFault as fault:
            raise KvmError(errno.EFAULT, "KVM_RUN", str(fault)) from None
        pfns = pfns_all[pages - pages[0]]
        opted_out = self.profile.promotes_only_prot_mte and not all(v.mte for v in vmas)
        if mte and not opted_out:
            # A huge page is mapped (and its tags made valid) as one block.
            self.frames.sanitise(self.frames.huge_page_frames(pfns))
        memslot.s2_pfn[pages] = pfns
        writable = write or (not memslot.logging and not memslot.readonly)
        memslot.s2_writable[pages] = writable and all(v.prot & PROT_WRITE for v in vmas)

    @_locked
    def page_for(self, gpa: int, *, write: bool) -> tuple[int, bool]:
        """(host frame, stage-2 writable) of the page holding ``gpa``, faulting it in.

        The fast path for a CPU: it may cache the answer until
        ``memslots.generation`` changes.
        """
        pfn = int(self.map_pages(gpa, 1, write=write)[0])
        memslot = self.memslots.find(gpa)
        assert memslot is not None  # map_pages found it
        return pfn, bool(memslot.s2_writable[(gpa - memslot.guest_phys_addr) // PAGE_SIZE])

    # -- guest physical data and tags ------------------------------------------------------

    @_locked
    def read(self, gpa: int, length: int) -> bytes:
        """Guest memory as the guest reads it (faulting pages in), as bytes."""
        pfns = self.map_pages(gpa, length, write=False)
        offset = gpa % PAGE_SIZE
        window: NDArray[np.uint8] = self.frames.data[pfns].reshape(-1)
        return window[offset : offset + length].tobytes()

    @_locked
    def write(self, gpa: int, data: bytes) -> None:
        """Write guest memory as the guest would (faulting pages in for writing)."""
        pfns = self.map_pages(gpa, len(data), write=True)
        offset = gpa % PAGE_SIZE
        if len(pfns) == 1:
            self.frames.data[pfns[0], offset : offset + len(data)] = np.frombuffer(data, np.uint8)
            return
        window = self.frames.data[pfns].reshape(-1)
        window[offset : offset + len(data)] = np.frombuffer(data, np.uint8)
        self.frames.data[pfns] = window.reshape(-1, PAGE_SIZE)

    @_locked
    def load_tags(self, gpa: int, count: int) -> U8:
        """Allocation tags of ``count`` granules from granule-aligned ``gpa``."""
        pfns = self.map_pages(gpa, count * TAG_GRANULE, write=False)
        packed = self.frames.packed_pages[pfns].reshape(-1)
        tags = np.empty(packed.size * 2, np.uint8)
        unpack_tags(packed, tags)
        skip = (gpa % PAGE_SIZE) // TAG_GRANULE
        return tags[skip : skip + count]

    @_locked
    def store_tags(self, gpa: int, tags: U8) -> None:
        """Guest tag stores: need stage-2 write permission, so they dirty the page."""
        pfns = self.map_pages(gpa, int(tags.size) * TAG_GRANULE, write=True)
        skip = (gpa % PAGE_SIZE) // TAG_GRANULE
        if len(pfns) == 1:
            self.frames.tags.set(int(pfns[0]) * GRANULES_PER_PAGE + skip, tags)
            return
        packed = self.frames.packed_pages[pfns].reshape(-1)
        window = np.empty(packed.size * 2, np.uint8)
        unpack_tags(packed, window)
        window[skip : skip + tags.size] = tags
        pack_tags(window, packed)
        self.frames.packed_pages[pfns] = packed.reshape(-1, PACKED_TAGS_PER_PAGE)
