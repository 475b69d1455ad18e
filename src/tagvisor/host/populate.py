"""Faulting in anonymous memory before it is used.

The first write to a page of fresh anonymous memory is a page fault: the kernel finds
a frame, zeroes it and maps it. On the VMs tagvisor is measured on that costs 0.25 s
per GiB where the hypervisor backs the memory already and 1.2 to 2.6 s per GiB where it
took free memory back, and it is the largest single cost of receiving a migrated
guest. ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14, mm/madvise.c) takes those faults
in one call per range and, called through ctypes, releases the GIL; where it does not
exist a write to one byte per page does the same, more slowly.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable
from functools import cache
from typing import Final, cast

import numpy as np
from numpy.typing import NDArray

#: linux/mman.h: populate (prefault) page tables writable, as writes would.
MADV_POPULATE_WRITE: Final = 23

Madvise = Callable[[int, int, int], int]


@cache
def _madvise() -> Madvise | None:
    """libc's madvise if this kernel knows MADV_POPULATE_WRITE, else None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    probe = mmap.mmap(-1, mmap.PAGESIZE)
    byte = ctypes.c_char.from_buffer(probe)
    try:
        known = function(ctypes.addressof(byte), mmap.PAGESIZE, MADV_POPULATE_WRITE) == 0
    finally:
        del byte  # the mmap cannot close while a ctypes object uses its buffer
        probe.close()
    return cast(Madvise, function) if known else None


def available() -> bool:
    """Whether this host can populate memory in one call (Linux 5.14 and later)."""
    return _madvise() is not None


def populate_range(address: int, length: int) -> bool:
    """MADV_POPULATE_WRITE over the whole pages that [address, address + length)
    touches (mapped memory the caller owns); False if the call is unknown or failed
    (out of memory, say): the pages are then left to fault in when first written."""
    madvise = _madvise()
    if madvise is None or length <= 0:
        return False
    first = address - address % mmap.PAGESIZE
    end = -(-(address + length) // mmap.PAGESIZE) * mmap.PAGESIZE
    return madvise(first, end - first, MADV_POPULATE_WRITE) == 0


def populate(array: NDArray[np.uint8]) -> None:
    """Fault in the memory behind a C-contiguous array, writable, without changing
    a byte of it (nothing else may write to it meanwhile: the fallback rewrites one
    byte per page with its own value)."""
    flat = array.reshape(-1)
    if flat.size and not populate_range(flat.ctypes.data, flat.nbytes):
        step = mmap.PAGESIZE
        start = -flat.ctypes.data % step  # the first byte of each page the array starts
        # An in-place ufunc writes every element (an assignment of a view to itself
        # is skipped by NumPy), and OR with 0 changes no value.
        np.bitwise_or(flat[start::step], 0, out=flat[start::step])
        np.bitwise_or(flat[:1], 0, out=flat[:1])
