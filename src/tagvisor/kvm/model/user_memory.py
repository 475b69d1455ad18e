""":class:`~tagvisor.kvm.api.UserMemory` over the modelled VMM process, with every
capability the model has: views of host frames, residency from the page tables,
vectorised page copies, the VMM's own tag instructions, userfaultfd and pre-faulting."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.arch.tagformat import U8
from tagvisor.host.ksm import ksm_scan
from tagvisor.host.mapping import (
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    NO_SLOT,
    PROT_MTE,
    PROT_READ,
    PROT_WRITE,
    Backing,
    BackingKind,
)
from tagvisor.host.migrate import migrate_pages
from tagvisor.host.prefault import Prefaulter
from tagvisor.host.process import HostProcess
from tagvisor.host.userfault import Userfaultfd
from tagvisor.kvm.api import Background, FaultHandler, TaggedMapping, UserMemory

RW = PROT_READ | PROT_WRITE


class ProcessTagging(TaggedMapping):
    """The modelled VMM process's LDG/STG on its own PROT_MTE mappings."""

    def __init__(self, process: HostProcess) -> None:
        self.process = process

    def is_tagged(self, address: int) -> bool:
        """Whether ``address`` is in a PROT_MTE mapping of the process."""
        vma = self.process.find_vma(address)
        return vma is not None and vma.mte

    def load_tags(self, address: int, count: int) -> U8:
        """LDG by the process: EIO outside PROT_MTE."""
        return self.process.load_tags(address, count)

    def store_tags(self, address: int, tags: U8) -> None:
        """STG by the process from ``address``."""
        self.process.store_tags(address, tags)

    def checked_tags(self, address: int, count: int) -> U8:
        """Tags as the process's own checks see them (NO_TAG untagged)."""
        return self.process.tags_or_untagged(address, count)


class ModelUserMemory(UserMemory):
    """The mapping calls and every bulk capability, over a :class:`HostProcess`."""

    def __init__(self, process: HostProcess) -> None:
        self.process = process

    def _prot(self, mte: bool) -> int:
        return RW | (PROT_MTE if mte else 0)

    def map_anonymous(self, length: int, *, shared: bool = False, mte: bool = False) -> int:
        """mmap(MAP_ANONYMOUS) in the modelled process."""
        flags = MAP_ANONYMOUS | (MAP_SHARED if shared else MAP_PRIVATE)
        return self.process.mmap(length, self._prot(mte), flags)

    def map_memfd(self, length: int, *, mte: bool = False) -> int:
        """A modelled memfd, mapped MAP_SHARED."""
        backing = Backing.of_size(BackingKind.MEMFD, length, "memfd:tagvisor")
        return self.process.mmap(length, self._prot(mte), MAP_SHARED, backing)

    def map_file(self, length: int) -> int:
        """A modelled disk file in the page cache, mapped MAP_SHARED."""
        backing = Backing.of_size(BackingKind.FILE, length, "guest-ram.img")
        return self.process.mmap(length, RW, MAP_SHARED, backing)

    def map_hugetlb(
        self, length: int, *, mte: bool = False, source: str = "memfd", shared: bool = True
    ) -> int:
        """Modelled huge pages: a hugetlb memfd or hugetlbfs file, or MAP_HUGETLB memory,
        MAP_SHARED or MAP_PRIVATE."""
        share = MAP_SHARED if shared else MAP_PRIVATE
        if source == "anonymous":
            return self.process.mmap(length, self._prot(mte), MAP_ANONYMOUS | MAP_HUGETLB | share)
        if source not in ("memfd", "file"):
            raise ValueError(f"unknown hugetlb source {source!r}: memfd, anonymous or file")
        name = "memfd:tagvisor-huge" if source == "memfd" else "hugetlbfs:tagvisor"
        backing = Backing.of_size(BackingKind.HUGETLB, length, name)
        return self.process.mmap(length, self._prot(mte), share, backing)

    def unmap(self, address: int, length: int) -> None:
        """munmap in the modelled process."""
        self.process.munmap(address, length)

    def protect(self, address: int, length: int, *, writable: bool) -> None:
        """mprotect, keeping PROT_MTE as mapped."""
        vma = self.process.find_vma(address)
        mte = PROT_MTE if vma is not None and vma.mte else 0
        self.process.mprotect(address, length, (RW if writable else PROT_READ) | mte)

    def read(self, address: int, length: int) -> bytes:
        """Read through the process's page tables (no tag check)."""
        return self.process.read(address, length)

    def write(self, address: int, data: bytes | memoryview) -> None:
        """Write through the process's page tables (no tag check)."""
        self.process.write(address, data)

    # -- capabilities ----------------------------------------------------------------

    def view(self, address: int, length: int) -> U8 | None:
        """A view of host memory where the range's frames are consecutive."""
        return self.process.contiguous_view(address, length, write=False)

    def writable_view(self, address: int, length: int) -> U8 | None:
        """A writable view where the range's frames are consecutive."""
        if not length:
            return None
        return self.process.contiguous_view(address, length, write=True)

    def view_spans(self, address: int, npages: int) -> list[tuple[int, int]]:
        """Spans of consecutive host frames: what one :meth:`view` each can show."""
        return self.process.contiguous_spans(address, npages)

    def populated(self, address: int, npages: int) -> NDArray[np.bool_]:
        """Pages with a frame or a swap slot behind them (the page tables)."""
        return self.process.populated(address, npages)

    def gather_pages(self, address: int, pages: NDArray[np.intp], out: U8) -> None:
        """One vectorised copy of the pages out of host frames."""
        self.process.gather_pages(address, pages, out)

    def scatter_pages(self, address: int, pages: NDArray[np.intp], rows: U8 | None) -> None:
        """One vectorised copy of the rows into host frames."""
        self.process.scatter_pages(address, pages, rows)

    def discard(self, address: int, pages: NDArray[np.intp]) -> None:
        """MADV_DONTNEED: the pages' frames go back to the host."""
        self.process.discard(address, pages)

    def page_out(self, address: int, length: int) -> int:
        """MADV_PAGEOUT: the range's unshared anonymous pages to the host's swap device
        (none without one); how many of its pages are in swap afterwards."""
        swap = self.process.swap
        if swap is not None and not self.process.pageout_keeps_secondary_mapped:
            swap.swap_out(self.process, address, length)
        elif swap is not None:  # page by page, leaving those a live VM maps
            for page in range(address, address + length, PAGE_SIZE):
                if not self.process.secondary_mapped(page):
                    swap.swap_out(self.process, page, PAGE_SIZE)
        return self._swapped(address, -(-length // PAGE_SIZE))

    def _swapped(self, address: int, npages: int) -> int:
        count = 0
        for page in range(address, address + npages * PAGE_SIZE, PAGE_SIZE):
            vma = self.process.find_vma(page)
            count += int(
                vma is not None and vma.backing.swap_slots[vma.page_index(page)] != NO_SLOT
            )
        return count

    def soft_offline(self, address: int, length: int) -> int:
        """MADV_SOFT_OFFLINE: each present page migrates to a new frame, tags and all
        (tagvisor.host.migrate)."""
        migrate_pages(self.process, address, length)
        return 0

    def ksm_merge(self, ranges: Sequence[tuple[int, int]]) -> int:
        """MADV_MERGEABLE and ksmd's passes: equal untagged pages merge
        (tagvisor.host.ksm)."""
        ksm_scan(self.process, ranges)
        return 0

    def tagged_mapping(self) -> TaggedMapping:
        """The process's own LDG/STG on its PROT_MTE mappings."""
        return ProcessTagging(self.process)

    def frame_numbers(self, address: int, npages: int) -> list[int]:
        """The host frames behind the pages now (0 where none), from the page tables."""
        frames = []
        for page in range(npages):
            vma = self.process.find_vma(address + page * PAGE_SIZE)
            pfn = (
                0
                if vma is None
                else int(vma.backing.pfns[vma.page_index(address + page * PAGE_SIZE)])
            )
            frames.append(pfn)
        return frames

    def userfaultfd(self, start: int, length: int, handler: FaultHandler) -> Userfaultfd:
        """The modelled userfaultfd over [start, start + length)."""
        return Userfaultfd(self.process, start, length, handler)

    def prefault(self, npages: int) -> Background:
        """A thread that faults in fresh host frames ahead of the stream."""
        return Prefaulter(self.process.frames, npages).start()
