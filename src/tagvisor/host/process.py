"""A host process's address space: mmap, page faults, and MTE as user space sees it.

The VMM is such a process; KVM memslots point into its mappings. Page faults follow
mm/memory.c at the level MTE cares about: a missing page gets a fresh zeroed frame or is
read back from swap; a write to a page shared copy-on-write gets a private copy
(copy_highpage, tags included); and when a page is mapped into a PROT_MTE mapping its
tags are made valid (set_pte_at -> mte_sync_tags, arch/arm64/kernel/mte.c), cleared if
no one had initialised them.

Changes to mappings are announced to MMU notifiers (include/linux/mmu_notifier.h), as
KVM needs them to drop stage-2 entries.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import PACKED_TAGS_PER_PAGE, PAGE_SIZE, TAG_GRANULE
from tagvisor.arch.memory import NO_TAG
from tagvisor.arch.tagformat import U8, pack_tags, unpack_tags
from tagvisor.host.errors import SegmentationFault, SyscallError
from tagvisor.host.frames import HUGE_PAGE_FRAMES, FrameTable, Pfns, consecutive
from tagvisor.host.mapping import (
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    NO_FRAME,
    NO_SLOT,
    PROT_EXEC,
    PROT_MTE,
    PROT_READ,
    PROT_WRITE,
    Backing,
    BackingKind,
    HostVirtAddr,
    Vma,
)

if TYPE_CHECKING:
    from tagvisor.host.swap import SwapDevice
    from tagvisor.host.userfault import Userfaultfd

SEGV_MAPERR = 1
SEGV_ACCERR = 2

#: Called with [start, end) of host virtual addresses whose translations are going.
InvalidateHook = Callable[[int, int], None]
#: A secondary MMU's answer to "do you map this page now?" (its access flag set).
YoungHook = Callable[[int], bool]
#: mmu_notifier change_pte: the page at this address got a new pte (KSM write-protects it).
ChangePteHook = Callable[[int], None]

MMAP_BASE = 0x7F00_0000_0000


class HostProcess:
    """An address space of VMAs over a shared :class:`FrameTable`."""

    def __init__(
        self,
        frames: FrameTable,
        swap: SwapDevice | None = None,
        *,
        hugetlb_mte: bool = True,
        proposals: frozenset[str] = frozenset(),
    ) -> None:
        self.frames = frames
        self.swap = swap
        #: hugetlbfs is VM_MTE_ALLOWED since Linux 6.13 (arch_calc_vm_flag_bits).
        self.hugetlb_mte = hugetlb_mte
        #: Kernel features that are proposals, not Linux, that this host models.
        self.proposals = proposals
        self.vmas: list[Vma] = []
        self._next_map = MMAP_BASE
        self._notifiers: list[InvalidateHook] = []
        self._young: dict[InvalidateHook, YoungHook] = {}
        self._change_pte: dict[InvalidateHook, ChangePteHook] = {}
        #: MADV_PAGEOUT keeps a page a secondary MMU (a live VM's stage 2) maps: before
        #: 2864f3d0f583 (6.10) reclaim_pages checked references, which the MMU notifier
        #: answers from KVM's stage-2 access flag (measured on 6.1, docs/host-memory.md).
        self.pageout_keeps_secondary_mapped = False
        #: Ranges registered with userfaultfd (post-copy); see tagvisor.host.userfault.
        self.userfaults: list[Userfaultfd] = []

    # -- MMU notifiers ---------------------------------------------------------------

    def register_notifier(
        self,
        hook: InvalidateHook,
        young: YoungHook | None = None,
        change_pte: ChangePteHook | None = None,
    ) -> None:
        """Have ``hook`` called on every invalidation (mmu_notifier_register), ``young``
        asked whether the secondary MMU maps a page (clear_flush_young) and
        ``change_pte`` told of a page's new pte (set_pte_at_notify)."""
        self._notifiers.append(hook)
        if young is not None:
            self._young[hook] = young
        if change_pte is not None:
            self._change_pte[hook] = change_pte

    def unregister_notifier(self, hook: InvalidateHook) -> None:
        """mmu_notifier_unregister: the secondary MMU is gone (its VM destroyed)."""
        self._notifiers.remove(hook)
        self._young.pop(hook, None)
        self._change_pte.pop(hook, None)

    def write_protect(self, address: int) -> None:
        """What KSM's write_protect_page does to the page at ``address`` as secondary MMUs
        see it: invalidate, then set_pte_at_notify (mm/ksm.c)."""
        page = address - address % PAGE_SIZE
        self.invalidate(page, page + PAGE_SIZE)
        for change_pte in list(self._change_pte.values()):
            change_pte(page)

    def secondary_mapped(self, address: int) -> bool:
        """Whether some secondary MMU (a VM's stage 2) maps the page at ``address``."""
        return any(young(address) for young in self._young.values())

    def invalidate(self, start: int, end: int) -> None:
        """mmu_notifier_invalidate_range: tell secondary MMUs (KVM) to drop [start, end)."""
        for hook in self._notifiers:
            hook(start, end)

    # -- mmap and friends ------------------------------------------------------------

    def mmap(
        self,
        length: int,
        prot: int,
        flags: int,
        backing: Backing | None = None,
        page_offset: int = 0,
        address: int | None = None,
    ) -> HostVirtAddr:
        """mmap(2) with Linux's errnos for what matters here.

        ``backing`` is the file (memfd, tmpfs, hugetlbfs or regular file) for a file
        mapping; without it the mapping is anonymous (MAP_ANONYMOUS).
        """
        if length <= 0:
            raise SyscallError(errno.EINVAL, "mmap", "length must be positive")
        if bool(flags & MAP_SHARED) == bool(flags & MAP_PRIVATE):
            raise SyscallError(errno.EINVAL, "mmap", "exactly one of MAP_SHARED/MAP_PRIVATE")
        if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_MTE):
            raise SyscallError(errno.EINVAL, "mmap", f"unknown prot bits {prot:#x}")
        huge = bool(flags & MAP_HUGETLB) or (
            backing is not None and backing.kind is BackingKind.HUGETLB
        )
        align = HUGE_PAGE_FRAMES * PAGE_SIZE if huge else PAGE_SIZE
        length = -(-length // align) * align
        shared = bool(flags & MAP_SHARED)
        if backing is None:
            if not flags & MAP_ANONYMOUS:
                raise SyscallError(errno.EBADF, "mmap", "a file mapping needs a file")
            kind = (
                BackingKind.HUGETLB if huge else (BackingKind.SHMEM if shared else BackingKind.ANON)
            )
            backing = Backing.of_size(kind, length)
        elif page_offset + length // PAGE_SIZE > backing.npages:
            raise SyscallError(errno.ENXIO, "mmap", "mapping runs past the end of the file")
        vma = Vma(
            start=self._place(length, address, align),
            length=length,
            prot=prot,
            shared=shared,
            backing=backing,
            page_offset=page_offset,
            # MAP_HUGETLB too: stable 5.10.y-6.12.y's "arm64: mte: Do not allow PROT_MTE
            # on MAP_HUGETLB user mappings" (Catalin Marinas, 2025) took it away before 6.13.
            mte_allowed=backing.kind.ram_based
            and (self.hugetlb_mte or backing.kind is not BackingKind.HUGETLB),
        )
        self._validate_mte(vma, prot, "mmap")
        self.vmas.append(vma)
        self.vmas.sort(key=lambda v: v.start)
        return HostVirtAddr(vma.start)

    def _place(self, length: int, address: int | None, align: int) -> int:
        if address is not None:
            if address % align:
                raise SyscallError(errno.EINVAL, "mmap", f"address {address:#x} not aligned")
            if any(v.start < address + length and address < v.end for v in self.vmas):
                raise SyscallError(errno.EEXIST, "mmap", "MAP_FIXED_NOREPLACE overlap")
            return address
        start = -(-self._next_map // align) * align
        self._next_map = start + length + PAGE_SIZE  # a guard page between mappings
        return start

    @staticmethod
    def _validate_mte(vma: Vma, prot: int, syscall: str) -> None:
        # arch/arm64/include/asm/mman.h arch_validate_flags: VM_MTE needs VM_MTE_ALLOWED.
        if prot & PROT_MTE and not vma.mte_allowed:
            raise SyscallError(
                errno.EINVAL,
                syscall,
                f"PROT_MTE needs RAM-based memory; {vma.backing.kind.value} cannot hold tags",
            )

    def mprotect(self, address: int, length: int, prot: int) -> None:
        """mprotect(2) of whole VMAs (splitting VMAs is not modelled)."""
        vmas = list(self._vmas_in(address, length))
        for vma in vmas:
            self._validate_mte(vma, prot, "mprotect")
        for vma in vmas:
            vma.prot = prot
        self.invalidate(address, address + length)

    def munmap(self, address: int, length: int) -> None:
        """munmap(2) of whole VMAs. A private mapping's frames go back to the allocator;
        so do a shared object's once no mapping of it is left, since the files the
        modelled VMM maps are unlinked and have no descriptor open (memfd, shmem, an
        unlinked tmpfs, ramfs or hugetlbfs file: their pages are freed with the inode,
        huge pages back to the hugetlb pool)."""
        for vma in list(self._vmas_in(address, length)):
            self.invalidate(vma.start, vma.end)
            self.vmas.remove(vma)
            backing = vma.backing
            if backing.kind.shared_object and any(v.backing is backing for v in self.vmas):
                continue
            present = backing.pfns[backing.pfns != NO_FRAME]
            if present.size:
                self.frames.put(present)
            backing.pfns[:] = NO_FRAME
            if self.swap is not None:
                self.swap.release(backing.swap_slots[backing.swap_slots != NO_SLOT])
            backing.swap_slots[:] = NO_SLOT

    def exit(self) -> None:
        """The process ends (exit_mmap): every mapping goes, with its frames."""
        for vma in list(self.vmas):
            self.munmap(vma.start, vma.length)

    def discard(self, address: int, pages: np.ndarray) -> None:
        """MADV_DONTNEED of the given pages (indices from ``address``) of one private
        anonymous or shared mapping: their frames go, the next touch faults again."""
        vma = self.find_vma(address)
        if vma is None:
            raise SyscallError(errno.EINVAL, "madvise", f"nothing mapped at {address:#x}")
        index = vma.page_index(address) + pages
        present = index[vma.backing.pfns[index] != NO_FRAME]
        if not present.size:
            return
        self.invalidate(address, address + (int(pages.max()) + 1) * PAGE_SIZE)
        self.frames.put(vma.backing.pfns[present])
        vma.backing.pfns[present] = NO_FRAME

    def _vmas_in(self, address: int, length: int) -> Iterator[Vma]:
        found = False
        for vma in self.vmas:
            if vma.start < address + length and address < vma.end:
                if address > vma.start or address + length < vma.end:
                    raise SyscallError(errno.EINVAL, "munmap", "partial VMAs not modelled")
                found = True
                yield vma
        if not found:
            raise SyscallError(errno.EINVAL, "munmap", f"nothing mapped at {address:#x}")

    def find_vma(self, address: int) -> Vma | None:
        """The VMA containing ``address`` (find_vma + bounds check)."""
        for vma in self.vmas:
            if vma.start <= address < vma.end:
                return vma
        return None

    def accessible_prefix(self, address: int, length: int, *, write: bool) -> int:
        """How many bytes from ``address`` a copy_to/from_user could reach before faulting."""
        need = PROT_WRITE if write else PROT_READ
        cursor = address
        stop = address + length
        while cursor < stop:
            vma = self.find_vma(cursor)
            if vma is None or not vma.prot & need:
                break
            cursor = vma.end
        return min(cursor, stop) - address

    def vmas_between(self, start: int, end: int) -> list[Vma]:
        """The VMAs intersecting [start, end), in address order."""
        return [vma for vma in self.vmas if vma.start < end and start < vma.end]

    # -- page faults -----------------------------------------------------------------

    def fault_in(self, address: int, length: int, *, write: bool) -> Pfns:
        """Fault in [address, address + length) like get_user_pages; return the frames.

        One VMA at a time and vectorised over its pages. Raises SegmentationFault
        (SEGV_MAPERR for no mapping, SEGV_ACCERR for a protection violation).
        """
        first = address - address % PAGE_SIZE
        last = -(-(address + length) // PAGE_SIZE) * PAGE_SIZE
        parts = []
        cursor = first
        while cursor < last:
            vma = self.find_vma(cursor)
            if vma is None:
                raise SegmentationFault(cursor, SEGV_MAPERR, "no mapping")
            stop = min(last, vma.end)
            parts.append(self._fault_vma(vma, cursor, stop, write=write))
            cursor = stop
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def _fault_vma(self, vma: Vma, start: int, stop: int, *, write: bool) -> Pfns:
        index = np.arange(vma.page_index(start), vma.page_index(stop - 1) + 1)
        return self._fault_index(vma, index, start, write=write)

    def _fault_index(self, vma: Vma, index: np.ndarray, address: int, *, write: bool) -> Pfns:
        """Fault in the backing pages ``index`` of ``vma`` (``address`` is the first one,
        for the error); return their frames."""
        need = PROT_WRITE if write else PROT_READ
        if not vma.prot & need:
            raise SegmentationFault(address, SEGV_ACCERR, f"{vma.describe()} is not writable")
        backing = vma.backing
        missing = index[backing.pfns[index] == NO_FRAME]
        if missing.size and self.userfaults:
            self._userfault(vma, missing)
            missing = index[backing.pfns[index] == NO_FRAME]
        if missing.size:
            self._populate(backing, missing)
        if write and not vma.shared:
            self._break_cow(backing, index)
        pfns: Pfns = backing.pfns[index]
        if vma.mte:
            self.frames.sanitise(pfns)
        return pfns

    def _userfault(self, vma: Vma, missing: np.ndarray) -> None:
        """Hand missing pages in registered ranges to their userfaultfd, one by one
        (post-copy's on-demand path is page by page by nature)."""
        for index in missing.tolist():
            address = vma.start + (index - vma.page_offset) * PAGE_SIZE
            for uffd in self.userfaults:
                if uffd.covers(address) and vma.backing.swap_slots[index] == NO_SLOT:
                    uffd.resolve(address)
                    break

    def _populate(self, backing: Backing, missing: np.ndarray) -> None:
        swapped = missing[backing.swap_slots[missing] != NO_SLOT]
        fresh = missing[backing.swap_slots[missing] == NO_SLOT]
        if backing.kind is BackingKind.HUGETLB:
            for head_index in np.unique(fresh - fresh % HUGE_PAGE_FRAMES).tolist():
                backing.pfns[head_index : head_index + HUGE_PAGE_FRAMES] = self.frames.alloc_huge()
        elif fresh.size:
            backing.pfns[fresh] = self.frames.alloc(fresh.size)
        if swapped.size:
            if self.swap is None:
                raise RuntimeError("a page is in swap but the process has no swap device")
            backing.pfns[swapped] = self.swap.swap_in(backing.swap_slots[swapped])
            backing.swap_slots[swapped] = NO_SLOT

    def _break_cow(self, backing: Backing, index: np.ndarray) -> None:
        shared = index[self.frames.refcount[backing.pfns[index]] > 1]
        if not shared.size:
            return
        fresh = self.frames.alloc(shared.size)
        for page, new in zip(shared.tolist(), fresh.tolist(), strict=True):
            self.frames.copy_page(new, int(backing.pfns[page]))
        self.frames.put(backing.pfns[shared])
        backing.pfns[shared] = fresh

    # -- data access through the mapping ---------------------------------------------

    def read(self, address: int, length: int) -> bytes:
        """Read bytes as the process would through its page tables (no tag check)."""
        return b"".join(view.data for view in self.span_views(address, length, write=False))

    def write(self, address: int, data: bytes | memoryview) -> None:
        """Write bytes through the process's page tables (no tag check)."""
        source = np.frombuffer(data, np.uint8)
        done = 0
        for view in self.span_views(address, source.size, write=True):
            view[:] = source[done : done + view.size]
            done += view.size

    def span_views(self, address: int, length: int, *, write: bool) -> list[U8]:
        """[address, address + length) as views of host memory, one per run of
        consecutive frames (faulting the pages in as an access would): what the kernel's
        user copies walk page by page, in as few pieces as the frames allow, with no
        copy (a buffer whose frames are scattered cost two temporary copies per access,
        each of fresh memory)."""
        pfns = self.fault_in(address, length, write=write)
        if not length:
            return [self.frames.data[0, :0]]
        breaks = np.flatnonzero(np.diff(pfns) != 1) + 1
        offset = address % PAGE_SIZE
        views = []
        for first, end in itertools.pairwise([0, *breaks.tolist(), pfns.size]):
            run = int(pfns[first])
            flat = self.frames.data[run : run + end - first].reshape(-1)
            start = offset if first == 0 else 0
            stop = min(flat.size, offset + length - first * PAGE_SIZE)
            views.append(flat[start:stop])
        return views

    def contiguous_view(self, address: int, length: int, *, write: bool) -> U8 | None:
        """[address, address + length) as a view of host memory, if its frames are
        consecutive (the usual case for a fresh buffer); else None. Zero-copy bulk I/O."""
        pfns = self.fault_in(address, length, write=write)
        if not consecutive(pfns):
            return None
        offset = address % PAGE_SIZE
        first = int(pfns[0])
        flat = self.frames.data[first : first + pfns.size].reshape(-1)
        return flat[offset : offset + length]

    def contiguous_spans(self, address: int, npages: int) -> list[tuple[int, int]]:
        """The ``npages`` pages from page-aligned ``address`` as (first page, pages)
        spans whose frames are consecutive, each one :meth:`contiguous_view` can show
        (faulting the pages in for reading, as it does)."""
        spans, first = [], 0
        for view in self.span_views(address, npages * PAGE_SIZE, write=False):
            spans.append((first, view.size // PAGE_SIZE))
            first += view.size // PAGE_SIZE
        return spans

    # -- residency and whole-page bulk I/O (a VMM's snapshot and migration paths) --------

    def populated(self, address: int, npages: int) -> NDArray[np.bool_]:
        """Which of the ``npages`` pages from page-aligned ``address`` have memory behind
        them, in RAM or in swap: the present and swapped bits of /proc/self/pagemap.

        A page with neither was never touched (or was discarded): it reads as zeros and
        holds no tags, so a migration need not look at it. Pages of a disk file count as
        populated (their data may be on disk); pages outside any mapping do not.
        """
        result = np.zeros(npages, dtype=bool)
        end = address + npages * PAGE_SIZE
        for vma in self.vmas_between(address, end):
            lo, hi = max(address, vma.start), min(end, vma.end)
            first, count = (lo - address) // PAGE_SIZE, (hi - lo) // PAGE_SIZE
            if vma.backing.kind is BackingKind.FILE:
                result[first : first + count] = True
                continue
            index = vma.page_index(lo)
            pfns = vma.backing.pfns[index : index + count]
            slots = vma.backing.swap_slots[index : index + count]
            result[first : first + count] = (pfns != NO_FRAME) | (slots != NO_SLOT)
        return result

    def gather_pages(self, address: int, pages: NDArray[np.intp], out: U8) -> None:
        """Copy the whole pages ``address + pages[i] * PAGE_SIZE`` into ``out[i]`` (rows of
        PAGE_SIZE bytes), faulting them in for reading as a read would. One vectorised
        copy however the pages are scattered; ``pages`` ascend."""
        for part, pfns in self._page_frames(address, pages, write=False):
            rows = out[part]
            if consecutive(pfns):
                first = int(pfns[0])
                np.copyto(rows, self.frames.data[first : first + pfns.size])
            else:
                np.take(self.frames.data, pfns, axis=0, out=rows)

    def scatter_pages(self, address: int, pages: NDArray[np.intp], rows: U8 | None) -> None:
        """Write ``rows[i]`` (PAGE_SIZE bytes) to the whole page ``address + pages[i] *
        PAGE_SIZE``, or zeros when ``rows`` is None, faulting the pages in for writing
        (copy-on-write broken) as a write would; ``pages`` ascend."""
        for part, pfns in self._page_frames(address, pages, write=True):
            if consecutive(pfns):
                first = int(pfns[0])
                target = self.frames.data[first : first + pfns.size]
                if rows is None:
                    target.fill(0)
                else:
                    np.copyto(target, rows[part])
            else:
                self.frames.data[pfns] = 0 if rows is None else rows[part]

    def _page_frames(
        self, address: int, pages: NDArray[np.intp], *, write: bool
    ) -> Iterator[tuple[slice, Pfns]]:
        """(slice of ``pages``, their frames) for the pages in each VMA they fall in."""
        done = 0
        while done < pages.size:
            cursor = address + int(pages[done]) * PAGE_SIZE
            vma = self.find_vma(cursor)
            if vma is None:
                raise SegmentationFault(cursor, SEGV_MAPERR, "no mapping")
            stop = done + int(
                np.searchsorted(pages[done:], (vma.end - address) // PAGE_SIZE, side="left")
            )
            index = vma.page_index(address) + pages[done:stop]
            yield slice(done, stop), self._fault_index(vma, index, cursor, write=write)
            done = stop

    # -- tags through a PROT_MTE mapping (LDG/STG by the process, ptrace) ----------------

    def _tag_window(self, address: int, count: int, *, write: bool) -> tuple[Pfns, int]:
        vma = self.find_vma(address)
        if vma is None:
            raise SegmentationFault(address, SEGV_MAPERR, "no mapping")
        if not vma.mte:
            raise SyscallError(errno.EIO, "tags", f"{vma.describe()} is not PROT_MTE")
        pfns = self.fault_in(address, count * TAG_GRANULE, write=write)
        return pfns, (address % PAGE_SIZE) // TAG_GRANULE

    def load_tags(self, address: int, count: int) -> U8:
        """Tags of ``count`` granules from ``address`` of a PROT_MTE mapping.

        Like PTRACE_PEEKMTETAGS: EIO where the mapping is not PROT_MTE.
        """
        pfns, skip = self._tag_window(address, count, write=False)
        return self._frame_tags(pfns)[skip : skip + count]

    def store_tags(self, address: int, tags: U8) -> None:
        """Set tags of granules from ``address`` (STG by the process, POKEMTETAGS)."""
        pfns, skip = self._tag_window(address, int(tags.size), write=True)
        window = self._frame_tags(pfns)
        window[skip : skip + tags.size] = tags
        packed = np.empty(window.size // 2, np.uint8)
        pack_tags(window, packed)
        self.frames.packed_pages[pfns] = packed.reshape(-1, PACKED_TAGS_PER_PAGE)

    def _frame_tags(self, pfns: Pfns) -> U8:
        packed = self.frames.packed_pages[pfns].reshape(-1)
        out = np.empty(packed.size * 2, np.uint8)
        unpack_tags(packed, out)
        return out

    def tags_or_untagged(self, address: int, count: int) -> U8:
        """Tags as an access check sees them: NO_TAG outside PROT_MTE mappings."""
        vma = self.find_vma(address)
        if vma is None or not vma.mte:
            return np.full(count, NO_TAG, np.uint8)
        return self.load_tags(address, count)
