"""Process mappings: what backs them, and whether they may carry tags.

Linux decides at mmap time whether a mapping may ever use PROT_MTE: VM_MTE_ALLOWED is
set for anonymous mappings and for RAM-based files (shmem/tmpfs, memfd, and hugetlbfs
since Linux 6.13), never for page-cache files of a disk filesystem
(arch/arm64/include/asm/mman.h arch_calc_vm_flag_bits; mm/shmem.c shmem_mmap;
fs/hugetlbfs/inode.c). PROT_MTE asks for VM_MTE, which arch_validate_flags refuses
(mmap/mprotect fail with EINVAL) unless VM_MTE_ALLOWED is set.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final, NewType

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import PAGE_SIZE

#: A virtual address in a host process (the VMM's own address space).
HostVirtAddr = NewType("HostVirtAddr", int)

PROT_READ: Final = 0x1
PROT_WRITE: Final = 0x2
PROT_EXEC: Final = 0x4
#: arch/arm64/include/uapi/asm/mman.h
PROT_MTE: Final = 0x20

MAP_SHARED: Final = 0x01
MAP_PRIVATE: Final = 0x02
MAP_FIXED: Final = 0x10
MAP_ANONYMOUS: Final = 0x20
MAP_HUGETLB: Final = 0x40000

#: "Not present" and "not in swap" are 0, so a mapping's tables start as lazily backed
#: zeros (see FIRST_FRAME and FIRST_SLOT: no page has frame 0 or swap slot 0).
NO_FRAME: Final = 0
NO_SLOT: Final = 0


class BackingKind(enum.Enum):
    """What a mapping's pages come from."""

    ANON = "anonymous"
    SHMEM = "shared anonymous (shmem)"
    MEMFD = "memfd"
    TMPFS = "tmpfs file"
    HUGETLB = "hugetlbfs"
    FILE = "regular file (page cache)"

    @property
    def ram_based(self) -> bool:
        """Whether its pages are plain RAM that can hold tags (VM_MTE_ALLOWED)."""
        return self is not BackingKind.FILE

    @property
    def shared_object(self) -> bool:
        """Whether pages belong to a shared object (page cache) rather than the VMA."""
        return self is not BackingKind.ANON


@dataclass(eq=False)
class Backing:
    """The pages behind one or more mappings: a frame (or swap slot) per page.

    An anonymous private mapping has a backing of its own; shmem, memfd, tmpfs,
    hugetlbfs and file mappings of the same object share one, so every mapping sees
    the same frames and therefore the same tags.
    """

    kind: BackingKind
    npages: int
    name: str = ""
    pfns: NDArray[np.int64] = field(init=False)
    swap_slots: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.pfns = np.zeros(self.npages, dtype=np.int64)  # NO_FRAME everywhere
        self.swap_slots = np.zeros(self.npages, dtype=np.int64)  # NO_SLOT everywhere

    @classmethod
    def of_size(cls, kind: BackingKind, length: int, name: str = "") -> Backing:
        """A backing of ``kind`` with enough pages for ``length`` bytes."""
        return cls(kind, -(-length // PAGE_SIZE), name)


@dataclass(eq=False)
class Vma:
    """One mapping in a process: [start, start + length) onto ``backing`` pages."""

    start: int
    length: int
    prot: int
    shared: bool
    backing: Backing
    page_offset: int = 0
    mte_allowed: bool = False

    @property
    def end(self) -> int:
        """The address just past the mapping."""
        return self.start + self.length

    @property
    def npages(self) -> int:
        """The mapping's length in pages."""
        return self.length // PAGE_SIZE

    @property
    def mte(self) -> bool:
        """VM_MTE: mapped with PROT_MTE, so the process may use tags here."""
        return bool(self.prot & PROT_MTE)

    @property
    def hugetlb(self) -> bool:
        """Whether a hugetlbfs file backs the mapping."""
        return self.backing.kind is BackingKind.HUGETLB

    def page_index(self, address: int) -> int:
        """Index into the backing of the page holding ``address``."""
        return self.page_offset + (address - self.start) // PAGE_SIZE

    def describe(self) -> str:
        """The mapping in a few words, for error messages."""
        flags = "MAP_SHARED" if self.shared else "MAP_PRIVATE"
        return f"{self.backing.kind.value} {flags} at {self.start:#x}+{self.length:#x}"
