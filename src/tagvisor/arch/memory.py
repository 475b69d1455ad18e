"""Memory as the MTE operations see it, and a flat implementation of it.

:class:`TagMemory` is the narrow interface between the architecture model and whatever
holds memory: a flat test buffer here, a guest's RAM behind stage-1 and stage-2
translation in the CPU and KVM layers. Addresses given to it are *untagged* (the top
byte already stripped by TBI); it answers for whole granules.

A granule whose memory is not Normal Tagged (MAIR 0xF0) has no allocation tag: the
interface reports it as :data:`NO_TAG`, tag stores to it are ignored, and accesses to it
are never tag checked.
"""

from __future__ import annotations

from typing import Final, Protocol

import numpy as np

from tagvisor.arch.constants import TAG_GRANULE
from tagvisor.arch.errors import ArchUsageError
from tagvisor.arch.tagformat import U8
from tagvisor.arch.tagstore import TagStorage

#: Stands in a tag array for a granule that has no allocation tag storage.
NO_TAG: Final = 0xFF


class TagMemory(Protocol):
    """Granule-level access to data and allocation tags by untagged address."""

    def load_tags(self, address: int, count: int) -> U8:
        """Tags of ``count`` granules from the granule-aligned ``address``.

        Granules without tag storage read as :data:`NO_TAG`.
        """
        ...

    def store_tags(self, address: int, tags: U8) -> None:
        """Set the tags of granules from ``address``; untagged granules ignore it.

        This is a write access: implementations check write permission.
        """
        ...

    def write_data(self, address: int, data: bytes) -> None:
        """Write bytes (used by STGP, STZG and DC GZVA)."""
        ...


class FlatTaggedMemory:
    """A single block of RAM at ``base`` whose address is both virtual and physical.

    ``tagged`` says whether the block is Normal Tagged memory. The tour and the tests
    use it; guests use memory that translates through page tables.
    """

    def __init__(self, base: int, size: int, *, tagged: bool = True) -> None:
        if base % TAG_GRANULE or size <= 0 or size % TAG_GRANULE:
            raise ArchUsageError(
                f"memory at {base:#x} of {size:#x} bytes is not whole 16-byte granules"
            )
        self.base = base
        self.size = size
        self.tagged = tagged
        self.data = np.zeros(size, dtype=np.uint8)
        self.tags = TagStorage.covering(size)

    def _offset(self, address: int, length: int) -> int:
        offset = address - self.base
        if offset < 0 or offset + length > self.size:
            raise ArchUsageError(
                f"[{address:#x}, {address + length:#x}) is outside memory "
                f"[{self.base:#x}, {self.base + self.size:#x})"
            )
        return offset

    def load_tags(self, address: int, count: int) -> U8:
        """Tags of ``count`` granules from the granule-aligned ``address`` (NO_TAG each
        where the memory is not Normal Tagged)."""
        offset = self._offset(address, count * TAG_GRANULE)
        if not self.tagged:
            return np.full(count, NO_TAG, dtype=np.uint8)
        return self.tags.get(offset // TAG_GRANULE, count)

    def store_tags(self, address: int, tags: U8) -> None:
        """Set the tags of ``tags.size`` granules from the granule-aligned ``address``
        (ignored where the memory is not Normal Tagged)."""
        offset = self._offset(address, tags.size * TAG_GRANULE)
        if self.tagged:
            self.tags.set(offset // TAG_GRANULE, tags)

    def write_data(self, address: int, data: bytes) -> None:
        """Store ``data`` at ``address`` (no tag check: callers check first)."""
        offset = self._offset(address, len(data))
        self.data[offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)

    def read_data(self, address: int, length: int) -> bytes:
        """``length`` bytes at ``address`` (no tag check: callers check first)."""
        offset = self._offset(address, length)
        return self.data[offset : offset + length].tobytes()
