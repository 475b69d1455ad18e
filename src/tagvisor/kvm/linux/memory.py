""":class:`~tagvisor.kvm.api.UserMemory` over this process's own address space.

Mappings are made with libc's mmap (through :mod:`ctypes`), so their addresses can be
handed to KVM as memslot ``userspace_addr`` or a COPY_TAGS buffer. ``read`` and
``write`` only touch mappings made here: anything else would crash the interpreter
rather than raise, so it is refused with EFAULT first, as a kernel copy would be.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Final

from tagvisor.errors import TagvisorError
from tagvisor.kvm.api import FaultHandler, UserMemory, page_runs
from tagvisor.kvm.linux import host_mm, libc
from tagvisor.kvm.linux.libc import (
    MADV_DONTNEED,
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    MFD_CLOEXEC,
    MFD_HUGETLB,
    PROT_MTE,
    PROT_READ,
    PROT_WRITE,
)
from tagvisor.kvm.linux.userfault import LinuxUserFaultRange

if TYPE_CHECKING:  # numpy is imported where a capability needs it, not by the image
    import numpy as np
    from numpy.typing import NDArray

    from tagvisor.kvm.linux.tagging import LinuxTagging

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
HUGE_PAGE_SIZE = 2 << 20
#: /proc/self/pagemap, one u64 per page: bit 63 present in RAM, bit 62 in swap
#: (Documentation/admin-guide/mm/pagemap.rst).
PAGEMAP: Final = "/proc/self/pagemap"
PAGEMAP_PRESENT: Final = 1 << 63
PAGEMAP_PRESENT_OR_SWAPPED: Final = PAGEMAP_PRESENT | (1 << 62)
#: Bits 54:0 of a present page's pagemap entry: its page frame number (root only).
PAGEMAP_PFN: Final = (1 << 55) - 1
#: Where huge pages come from (map_hugetlb's ``source``).
HUGETLB_SOURCES: Final = ("memfd", "anonymous", "file")
#: Where the testbed's /init mounts hugetlbfs (tagvisor.testbed.boot.INIT).
HUGETLBFS_DIR: Final = "/dev/hugepages"


class UserMemoryError(TagvisorError, OSError):
    """A mapping call failed, or an access fell outside this backend's mappings."""

    def __init__(self, err: int, call: str, detail: str = "") -> None:
        super().__init__(err, os.strerror(err))
        self.call = call
        self.detail = detail

    def __str__(self) -> str:
        text = f"{self.call}: {self.strerror} (errno {self.errno})"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass
class Mapping:
    """One mapping this backend made: where, how long, its protection and backing."""

    address: int
    length: int
    prot: int
    kind: str  # anonymous, anonymous-shared, memfd, file, hugetlb-{memfd,anonymous,file}
    fd: int = -1

    @cached_property
    def array(self) -> NDArray[np.uint8]:
        """The whole mapping as bytes, made once: views of its parts are slices of it
        (a ctypes array of a new length is a new type, some 0.3 ms each under nested
        TCG, and a migration's pass asked for hundreds of views)."""
        import numpy as np

        return np.frombuffer(_raw(self.address, self.length), np.uint8)

    def part(self, address: int, length: int) -> NDArray[np.uint8]:
        """[address, address + length) of the mapping, a view of :attr:`array`."""
        start = address - self.address
        return self.array[start : start + length]

    @property
    def end(self) -> int:
        """The address just past the mapping."""
        return self.address + self.length


def _raw(address: int, length: int) -> memoryview:
    """[address, address + length) of this process as a buffer, without a copy."""
    return memoryview((ctypes.c_uint8 * length).from_address(address)).cast("B")


def _round_up(value: int, granule: int) -> int:
    return -(-value // granule) * granule


class LinuxUserMemory(UserMemory):
    """Mappings in the VMM process, made with the real mmap.

    ``file_dir`` is where :meth:`map_file` creates its backing file (default: the
    system's temporary directory). It must be a disk filesystem for the mapping to be
    page cache; in the testbed, /tmp is tmpfs (shmem), which KVM treats like memfd.
    """

    def __init__(
        self, file_dir: str | Path | None = None, hugetlbfs_dir: str | Path = HUGETLBFS_DIR
    ) -> None:
        self.file_dir = Path(file_dir) if file_dir else Path(tempfile.gettempdir())
        self.hugetlbfs_dir = Path(hugetlbfs_dir)
        self.mappings: dict[int, Mapping] = {}
        self._mte: bool | None = None
        self._tagging: LinuxTagging | None = None
        #: The pagemap entry of a page mapping the shared zero page (0: unknown here).
        self._zero_entry: int | None = None

    # -- capability ------------------------------------------------------------------

    @property
    def mte_supported(self) -> bool:
        """Whether PROT_MTE works here: an arm64 kernel on an MTE CPU.

        Only arm64 knows the bit; other architectures' mmap ignores unknown PROT bits,
        so the machine is checked first. An arm64 kernel without MTE refuses it
        (EINVAL, arch_validate_flags).
        """
        if self._mte is None and os.uname().machine not in ("aarch64", "arm64"):
            self._mte = False
        if self._mte is None:
            try:
                address = libc.mmap(
                    PAGE_SIZE, PROT_READ | PROT_WRITE | PROT_MTE, MAP_PRIVATE | MAP_ANONYMOUS
                )
            except OSError:
                self._mte = False
            else:
                libc.munmap(address, PAGE_SIZE)
                self._mte = True
        return self._mte

    def _prot(self, mte: bool) -> int:
        if mte and not self.mte_supported:
            raise UserMemoryError(
                errno.EINVAL, "mmap", "PROT_MTE asked for, but this kernel or CPU has no MTE"
            )
        return PROT_READ | PROT_WRITE | (PROT_MTE if mte else 0)

    def _map(self, length: int, prot: int, flags: int, kind: str, fd: int = -1) -> int:
        if length <= 0:
            raise UserMemoryError(errno.EINVAL, "mmap", "length must be positive")
        try:
            address = libc.mmap(length, prot, flags, fd)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            detail = f"{kind}, {length} bytes"
            raise UserMemoryError(exc.errno or errno.EIO, "mmap", detail) from None
        self.mappings[address] = Mapping(address, length, prot, kind, fd)
        return address

    # -- UserMemory ------------------------------------------------------------------

    def map_anonymous(self, length: int, *, shared: bool = False, mte: bool = False) -> int:
        """mmap(MAP_ANONYMOUS) of ``length`` bytes, shared or private, PROT_MTE if ``mte``."""
        flags = MAP_ANONYMOUS | (MAP_SHARED if shared else MAP_PRIVATE)
        kind = "anonymous-shared" if shared else "anonymous"
        return self._map(length, self._prot(mte), flags, kind)

    def map_memfd(self, length: int, *, mte: bool = False) -> int:
        """A memfd of ``length`` bytes, mapped MAP_SHARED (PROT_MTE if ``mte``)."""
        prot = self._prot(mte)
        fd = libc.memfd_create("tagvisor", MFD_CLOEXEC)
        os.ftruncate(fd, length)
        return self._map(length, prot, MAP_SHARED, "memfd", fd)

    def map_file(self, length: int) -> int:
        """A regular file in ``file_dir``, mapped MAP_SHARED (the file is unlinked)."""
        fd, name = tempfile.mkstemp(prefix="tagvisor-guest-ram-", dir=self.file_dir)
        os.unlink(name)
        os.ftruncate(fd, length)
        return self._map(length, PROT_READ | PROT_WRITE, MAP_SHARED, "file", fd)

    def map_hugetlb(
        self, length: int, *, mte: bool = False, source: str = "memfd", shared: bool = True
    ) -> int:
        """2 MiB huge pages from ``source`` (see :data:`HUGETLB_SOURCES`), mapped
        MAP_SHARED or MAP_PRIVATE (PROT_MTE if ``mte``).

        Needs huge pages reserved (``/proc/sys/vm/nr_hugepages``; without them mmap
        fails with ENOMEM) and, for "file", hugetlbfs mounted at ``hugetlbfs_dir``.
        """
        if source not in HUGETLB_SOURCES:
            raise UserMemoryError(
                errno.EINVAL, "mmap", f"unknown hugetlb source {source!r}: {HUGETLB_SOURCES}"
            )
        prot = self._prot(mte)
        size = _round_up(length, HUGE_PAGE_SIZE)
        share = MAP_SHARED if shared else MAP_PRIVATE
        kind = f"hugetlb-{source}"
        if source == "anonymous":
            return self._map(size, prot, share | MAP_ANONYMOUS | MAP_HUGETLB, kind)
        fd = self._hugetlb_fd(source)
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            os.close(fd)
            raise UserMemoryError(exc.errno or errno.EIO, "ftruncate", "hugetlb file") from None
        return self._map(size, prot, share, kind, fd)

    def _hugetlb_fd(self, source: str) -> int:
        if source == "memfd":
            try:
                return libc.memfd_create("tagvisor-huge", MFD_CLOEXEC | MFD_HUGETLB)
            except OSError as exc:
                raise UserMemoryError(
                    exc.errno or errno.EIO, "memfd_create", "MFD_HUGETLB: no hugetlbfs support"
                ) from None
        try:
            fd, name = tempfile.mkstemp(prefix="tagvisor-huge-", dir=self.hugetlbfs_dir)
        except OSError as exc:
            detail = f"no hugetlbfs mounted at {self.hugetlbfs_dir}? mount -t hugetlbfs"
            raise UserMemoryError(exc.errno or errno.EIO, "open", detail) from None
        os.unlink(name)  # the pages go when the last mapping and the fd do
        return fd

    def unmap(self, address: int, length: int) -> None:
        """munmap of a whole mapping made here; anything else is EINVAL."""
        mapping = self.mappings.get(address)
        if mapping is None or _round_up(length, PAGE_SIZE) != _round_up(mapping.length, PAGE_SIZE):
            raise UserMemoryError(errno.EINVAL, "munmap", "only whole mappings made here")
        libc.munmap(address, mapping.length)
        del self.mappings[address]
        if mapping.fd >= 0:
            os.close(mapping.fd)

    def protect(self, address: int, length: int, *, writable: bool) -> None:
        """mprotect to read-only or read-write, keeping PROT_MTE as mapped."""
        mapping = self._find(address, length, "mprotect")
        prot = (PROT_READ | PROT_WRITE if writable else PROT_READ) | (mapping.prot & PROT_MTE)
        try:
            libc.mprotect(address, _round_up(length, PAGE_SIZE), prot)
        except OSError as exc:
            raise UserMemoryError(exc.errno or errno.EIO, "mprotect") from None
        if address == mapping.address and length >= mapping.length:
            mapping.prot = prot

    def _find(self, address: int, length: int, call: str) -> Mapping:
        for mapping in self.mappings.values():
            if mapping.address <= address and address + length <= mapping.end:
                return mapping
        raise UserMemoryError(
            errno.EFAULT, call, f"[{address:#x}, +{length:#x}) is not inside a mapping made here"
        )

    def read(self, address: int, length: int) -> bytes:
        """``length`` bytes copied out of a mapping made here (EFAULT outside one)."""
        self._find(address, length, "read")
        return ctypes.string_at(address, length)

    def write(self, address: int, data: bytes | memoryview) -> None:
        """Copy ``data`` into a writable mapping made here (EFAULT otherwise)."""
        raw = bytes(data)
        mapping = self._find(address, len(raw), "write")
        if not mapping.prot & PROT_WRITE:
            raise UserMemoryError(errno.EFAULT, "write", "the mapping is read-only")
        ctypes.memmove(address, raw, len(raw))

    # -- capabilities ----------------------------------------------------------------

    def view(self, address: int, length: int) -> NDArray[np.uint8]:
        """The mapping itself, as an array: this process's memory is contiguous."""
        return self._find(address, length, "read").part(address, length)

    def writable_view(self, address: int, length: int) -> NDArray[np.uint8] | None:
        """The mapping itself as a writable array; None for a read-only one."""
        mapping = self._find(address, length, "write")
        if not mapping.prot & PROT_WRITE or not length:
            return None
        return mapping.part(address, length)

    def populated(self, address: int, npages: int) -> NDArray[np.bool_]:
        """Pages of a private anonymous mapping with memory behind them, in RAM or in
        swap, from /proc/self/pagemap. Any other mapping's pages all count: a shared
        page may live in the page cache with no entry in this process's page tables
        (mincore would miss shmem pages in swap), and sending a zero page costs
        little, losing one a guest."""
        import numpy as np

        mapping = self._find(address, npages * PAGE_SIZE, "pagemap")
        if mapping.kind != "anonymous" or PAGE_SIZE != 4096:
            return np.ones(npages, dtype=bool)
        try:
            with open(PAGEMAP, "rb") as pagemap:
                pagemap.seek(address // PAGE_SIZE * 8)
                raw = pagemap.read(npages * 8)
        except OSError:
            return np.ones(npages, dtype=bool)
        if len(raw) != npages * 8:
            return np.ones(npages, dtype=bool)
        entries = np.frombuffer(raw, np.uint64)
        present: NDArray[np.bool_] = (entries & PAGEMAP_PRESENT_OR_SWAPPED) != 0
        zero = self._zero_page_entry()
        if zero:
            # A page that was only read maps the kernel's shared zero page: its data
            # and its tags are zero (arm64 tags the zero page with zeros at boot,
            # arch/arm64/kernel/cpufeature.c cpu_enable_mte), and no memory is its own.
            frames = entries & np.uint64(PAGEMAP_PRESENT | PAGEMAP_PFN)
            present &= frames != np.uint64(zero & (PAGEMAP_PRESENT | PAGEMAP_PFN))
        return present

    def _zero_page_entry(self) -> int:
        """The pagemap entry of a private anonymous page that was only read (present,
        the zero page's frame), or 0 where frames read as 0 (without CAP_SYS_ADMIN)
        and the zero page cannot be told apart."""
        if self._zero_entry is None:
            self._zero_entry = 0
            address = libc.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
            try:
                ctypes.string_at(address, 1)  # a read fault maps the zero page
                with open(PAGEMAP, "rb") as pagemap:
                    pagemap.seek(address // PAGE_SIZE * 8)
                    entry = int.from_bytes(pagemap.read(8), "little")
                if entry & PAGEMAP_PRESENT and entry & PAGEMAP_PFN:
                    self._zero_entry = entry
            except OSError:
                pass
            finally:
                libc.munmap(address, PAGE_SIZE)
        return self._zero_entry

    def discard(self, address: int, pages: NDArray[np.intp]) -> None:
        """madvise(MADV_DONTNEED), a run of pages per call, for private anonymous
        memory; a shared mapping keeps its file's data through that, so its pages are
        zeroed instead."""
        if self._find(address, PAGE_SIZE, "madvise").kind != "anonymous":
            super().discard(address, pages)
            return
        for _, first, count in page_runs(pages):
            start, length = address + first * PAGE_SIZE, count * PAGE_SIZE
            self._find(start, length, "madvise")
            try:
                libc.madvise(start, length, MADV_DONTNEED)
            except OSError as exc:
                raise UserMemoryError(exc.errno or errno.EIO, "madvise") from None

    def userfaultfd(
        self, start: int, length: int, handler: FaultHandler
    ) -> LinuxUserFaultRange | None:
        """Register [start, start + length) with the kernel's userfaultfd in MISSING
        mode (tagvisor.kvm.linux.userfault); faults go to ``handler`` on a thread of
        its own."""
        self._find(start, length, "userfaultfd")
        try:
            return LinuxUserFaultRange(start, length, handler)
        except OSError as exc:
            raise UserMemoryError(exc.errno or errno.EIO, "userfaultfd", str(exc)) from None

    def page_out(self, address: int, length: int) -> int | None:
        """MADV_PAGEOUT of part of a mapping made here; its pages in swap afterwards
        (tagvisor.kvm.linux.host_mm)."""
        self._find(address, length, "madvise")
        return host_mm.page_out(address, length)

    def soft_offline(self, address: int, length: int) -> int:
        """MADV_SOFT_OFFLINE of each page (root only): its raw outcome."""
        self._find(address, length, "madvise")
        return host_mm.soft_offline(address, length)

    def ksm_merge(self, ranges: Sequence[tuple[int, int]]) -> int | None:
        """MADV_MERGEABLE of each range, then ksmd's passes (root: the sysfs knobs)."""
        for address, length in ranges:
            self._find(address, length, "madvise")
        return host_mm.ksm_merge(ranges)

    def mappings_at(self, address: int) -> Mapping | None:
        """The mapping made here that holds ``address``, if any."""
        for mapping in self.mappings.values():
            if mapping.address <= address < mapping.end:
                return mapping
        return None

    def tag_instructions(self) -> LinuxTagging | None:
        """STG/LDG run through ctypes (tagvisor.kvm.linux.tagging), where PROT_MTE works."""
        if not self.mte_supported:
            return None
        if self._tagging is None:
            from tagvisor.kvm.linux.tagging import LinuxTagging

            self._tagging = LinuxTagging(self)
        return self._tagging

    def frame_numbers(self, address: int, npages: int) -> list[int] | None:
        """Page frames from /proc/self/pagemap (0 where absent); None when they read as 0
        everywhere, as they do without CAP_SYS_ADMIN (pagemap.rst)."""
        try:
            with open(PAGEMAP, "rb") as pagemap:
                pagemap.seek(address // PAGE_SIZE * 8)
                raw = pagemap.read(npages * 8)
        except OSError:
            return None
        entries = [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]
        frames = [e & PAGEMAP_PFN if e >> 63 else 0 for e in entries]
        return frames if any(frames) else None

    def close(self) -> None:
        """Unmap every mapping this backend made."""
        for mapping in list(self.mappings.values()):
            self.unmap(mapping.address, mapping.length)
