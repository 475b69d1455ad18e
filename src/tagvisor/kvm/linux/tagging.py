"""The VMM's own tag instructions (STG, LDG) on its PROT_MTE mappings, run through ctypes.

Python has no way to issue STG, so two tiny A64 functions are written to a page that
is then made executable (mprotect to read+exec: set_pte_at syncs the instruction cache
for a newly executable page, arch/arm64/mm/flush.c __sync_icache_dcache). Only an arm64
process on a kernel and CPU with MTE can use them (the testbed's image is one); the
tags are those in bits 59:56 of the address the functions are given (Linux's EL0 has
TBI, so a tagged pointer reaches memory).
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING, Final

from tagvisor.kvm.api import TaggedMapping
from tagvisor.kvm.linux import libc
from tagvisor.kvm.linux.libc import MAP_ANONYMOUS, MAP_PRIVATE, PROT_MTE, PROT_READ, PROT_WRITE

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from tagvisor.kvm.linux.memory import LinuxUserMemory

PROT_EXEC: Final = 0x4
GRANULE: Final = 16
#: store_tags(x0 = tagged address, x1 = granules): stg x0, [x0], #16; subs x1, x1, #1;
#: b.ne .-8; ret (Arm ARM C6.2.322 STG post-index; SUBS; B.cond; RET).
STORE_CODE: Final = (0xD9201400, 0xF1000421, 0x54FFFFC1, 0xD65F03C0)
#: load_tags(x0 = address, x1 = granules, x2 = one byte per granule out):
#: ldg x3, [x0]; ubfx x3, x3, #56, #4; strb w3, [x2], #1; add x0, x0, #16;
#: subs x1, x1, #1; b.ne .-20; ret (LDG C6.2.132, UBFX, STRB post-index).
LOAD_CODE: Final = (
    0xD9600003,
    0xD378EC63,
    0x38001443,
    0x91004000,
    0xF1000421,
    0x54FFFF61,
    0xD65F03C0,
)
_Fn = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64)


class LinuxTagging(TaggedMapping):
    """LDG/STG of this process on the PROT_MTE mappings ``memory`` made."""

    def __init__(self, memory: LinuxUserMemory) -> None:
        self.memory = memory
        page = 4096
        self._code = libc.mmap(page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        words = (*STORE_CODE, *LOAD_CODE)
        ctypes.memmove(self._code, b"".join(w.to_bytes(4, "little") for w in words), 4 * len(words))
        libc.mprotect(self._code, page, PROT_READ | PROT_EXEC)
        self._store = _Fn(self._code)
        self._load = _Fn(self._code + 4 * len(STORE_CODE))

    def _check(self, address: int, count: int) -> None:
        mapping = self.memory._find(address, count * GRANULE, "tags")
        if not mapping.prot & PROT_MTE:
            raise OSError(
                errno.EIO, f"{mapping.kind} mapping at {mapping.address:#x} is not PROT_MTE"
            )
        if address % GRANULE:
            raise OSError(errno.EINVAL, f"tag address {address:#x} is not 16-byte aligned")

    def is_tagged(self, address: int) -> bool:
        """Whether ``address`` is in a PROT_MTE mapping made here."""
        mapping = self.memory.mappings_at(address)
        return mapping is not None and bool(mapping.prot & PROT_MTE)

    def load_tags(self, address: int, count: int) -> NDArray[np.uint8]:
        """LDG of ``count`` granules from ``address`` (EIO outside PROT_MTE)."""
        import numpy as np

        self._check(address, count)
        out = (ctypes.c_uint8 * count)()
        if count:
            self._load(address, count, ctypes.addressof(out))
        return np.frombuffer(bytes(out), np.uint8).copy()

    def store_tags(self, address: int, tags: NDArray[np.uint8]) -> None:
        """STG of ``tags[i]`` on granule i from ``address``, runs of equal tags a call."""
        self._check(address, int(tags.size))
        values = [int(tag) & 0xF for tag in tags]
        first = 0
        while first < len(values):
            last = first
            while last + 1 < len(values) and values[last + 1] == values[first]:
                last += 1
            tagged = (address + first * GRANULE) | values[first] << 56
            self._store(tagged, last - first + 1, 0)
            first = last + 1

    def checked_tags(self, address: int, count: int) -> NDArray[np.uint8]:
        """Tags as this process's own checks see them: NO_TAG (0xFF) outside PROT_MTE."""
        import numpy as np

        if not self.is_tagged(address):
            return np.full(count, 0xFF, np.uint8)
        return self.load_tags(address, count)
