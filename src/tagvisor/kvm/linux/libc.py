"""The few libc calls Python's standard library lacks: raw mmap / munmap / mprotect.

``mmap.mmap`` cannot map with PROT_MTE or return the mapping's address, and
``os.memfd_create`` exists but MAP_HUGETLB / MFD_HUGETLB mappings need raw flags, so
the VMM's memory is mapped through ctypes. Constants are arm64 Linux's (the generic
asm-generic/mman-common.h values, the same on x86-64 except PROT_MTE, which is
arm64-only).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from functools import cache
from typing import Final

PROT_NONE: Final = 0x0
PROT_READ: Final = 0x1
PROT_WRITE: Final = 0x2
PROT_MTE: Final = 0x20  # arch/arm64/include/uapi/asm/mman.h

MAP_SHARED: Final = 0x01
MAP_PRIVATE: Final = 0x02
MAP_ANONYMOUS: Final = 0x20
MAP_NORESERVE: Final = 0x4000
MAP_HUGETLB: Final = 0x40000

MADV_DONTNEED: Final = 4
MADV_MERGEABLE: Final = 12  # KSM may merge the range's pages (Linux 2.6.32+)
MADV_PAGEOUT: Final = 21  # reclaim the range now: anonymous pages go to swap (5.4+)
MADV_SOFT_OFFLINE: Final = 101  # migrate the page off its frame (CAP_SYS_ADMIN)

MFD_CLOEXEC: Final = 0x0001
MFD_HUGETLB: Final = 0x0004

MAP_FAILED: Final = ctypes.c_void_p(-1).value


@cache
def libc() -> ctypes.CDLL:
    """The C library, with errno kept per call and the prototypes set."""
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    )
    lib.munmap.restype = ctypes.c_int
    lib.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    lib.mprotect.restype = ctypes.c_int
    lib.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    lib.madvise.restype = ctypes.c_int
    lib.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return lib


def _fail(call: str) -> OSError:
    err = ctypes.get_errno() or errno.EIO
    return OSError(err, f"{call}: {os.strerror(err)}")


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """mmap(NULL, length, prot, flags, fd, offset): the address, or OSError."""
    address = libc().mmap(None, length, prot, flags, fd, offset)
    if address is None or address == MAP_FAILED:
        raise _fail("mmap")
    return int(address)


def munmap(address: int, length: int) -> None:
    """munmap(2); OSError with the errno on failure."""
    if libc().munmap(address, length) != 0:
        raise _fail("munmap")


def mprotect(address: int, length: int, prot: int) -> None:
    """mprotect(2); OSError with the errno on failure."""
    if libc().mprotect(address, length, prot) != 0:
        raise _fail("mprotect")


def madvise(address: int, length: int, advice: int) -> None:
    """madvise(2); OSError with the errno on failure."""
    if libc().madvise(address, length, advice) != 0:
        raise _fail("madvise")


def memfd_create(name: str, flags: int = MFD_CLOEXEC) -> int:
    """os.memfd_create (Linux 3.17+, glibc 2.27+)."""
    return os.memfd_create(name, flags)
