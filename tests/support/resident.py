"""Which pages of an array are in memory, as the kernel says (mincore(2))."""

from __future__ import annotations

import ctypes
import mmap

import numpy as np
from numpy.typing import NDArray


def resident(array: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Which pages that a C-contiguous array touches are in memory (the first and
    last may be shared with memory around it)."""
    first = array.ctypes.data - array.ctypes.data % mmap.PAGESIZE
    length = array.ctypes.data + array.nbytes - first
    vector = np.zeros(-(-length // mmap.PAGESIZE), np.uint8)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    assert libc.mincore(first, length, vector.ctypes.data) == 0
    in_memory: NDArray[np.bool_] = vector & 1 != 0
    return in_memory
