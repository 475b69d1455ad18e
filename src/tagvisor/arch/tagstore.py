"""Allocation-tag storage: one 4-bit tag per 16-byte granule, packed two per byte.

A :class:`TagStorage` covers a run of granules numbered from 0 (a guest's RAM, a host
frame pool). It keeps tags in the packed format of :mod:`tagvisor.arch.tagformat`, so a
4 GiB guest needs 128 MiB; the array comes from ``np.zeros``, which the OS backs lazily,
so untouched ranges cost nothing. Bulk reads and writes take either format and never
loop in Python per granule.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from tagvisor.arch.constants import TAG_GRANULE, TAG_MASK
from tagvisor.arch.errors import GranuleRangeError, TagValueError
from tagvisor.arch.tagformat import U8, pack_tags, unpack_tags


def _as_u8(data: ArrayLike | bytes | bytearray | memoryview) -> U8:
    if isinstance(data, bytes | bytearray | memoryview):
        return np.frombuffer(data, dtype=np.uint8)
    array = np.asarray(data)
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 0xFF):
            raise TagValueError("tag values must be bytes (0 to 255 before masking)")
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array.reshape(-1))


class TagStorage:
    """The allocation tags of ``granules`` consecutive granules, all initially 0."""

    __slots__ = ("_granules", "_packed")

    def __init__(self, granules: int) -> None:
        if granules < 0:
            raise GranuleRangeError(f"a tag storage cannot hold {granules} granules")
        self._granules = granules
        self._packed: U8 = np.zeros((granules + 1) // 2, dtype=np.uint8)

    @classmethod
    def covering(cls, size: int) -> TagStorage:
        """Storage for ``size`` bytes of memory (a multiple of the 16-byte granule)."""
        if size < 0 or size % TAG_GRANULE:
            raise GranuleRangeError(
                f"memory size {size:#x} is not a whole number of {TAG_GRANULE}-byte granules"
            )
        return cls(size // TAG_GRANULE)

    @property
    def granules(self) -> int:
        """How many granules the storage covers."""
        return self._granules

    @property
    def packed(self) -> U8:
        """The packed array itself (read-only view); even granules in low nibbles."""
        view = self._packed.view()
        view.flags.writeable = False
        return view

    def _check_range(self, first: int, count: int) -> None:
        if count < 0 or first < 0 or first + count > self._granules:
            raise GranuleRangeError(
                f"granules [{first}, {first + count}) are outside the storage "
                f"of {self._granules} granules"
            )

    # -- single granules -------------------------------------------------------------

    def tag_at(self, granule: int) -> int:
        """The tag of one granule."""
        self._check_range(granule, 1)
        byte = int(self._packed[granule >> 1])
        return (byte >> 4) if granule & 1 else (byte & TAG_MASK)

    def set_tag(self, granule: int, tag: int) -> None:
        """Set the tag of one granule."""
        self._check_range(granule, 1)
        if not 0 <= tag <= TAG_MASK:
            raise TagValueError(f"tag {tag:#x} does not fit in 4 bits")
        index = granule >> 1
        byte = int(self._packed[index])
        if granule & 1:
            self._packed[index] = (byte & 0x0F) | (tag << 4)
        else:
            self._packed[index] = (byte & 0xF0) | tag

    # -- byte format (one tag per byte) ----------------------------------------------

    def get(self, first: int, count: int, out: U8 | None = None) -> U8:
        """Tags of granules ``[first, first + count)``, one per byte.

        With ``out`` (a C-contiguous uint8 array of ``count`` bytes) nothing is allocated.
        """
        self._check_range(first, count)
        if out is None:
            out = np.empty(count, dtype=np.uint8)
        elif out.size != count or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous uint8 array of {count} bytes")
        if count == 0:
            return out
        done = 0
        if first & 1:
            out[0] = self._packed[first >> 1] >> 4
            done = 1
        pairs = (count - done) // 2
        if pairs:
            start = (first + done) >> 1
            unpack_tags(self._packed[start : start + pairs], out[done : done + 2 * pairs])
            done += 2 * pairs
        if done < count:
            out[done] = self._packed[(first + done) >> 1] & TAG_MASK
        return out

    def set(
        self,
        first: int,
        tags: ArrayLike | bytes | bytearray | memoryview,
        *,
        low_nibble_only: bool = False,
    ) -> None:
        """Set the tags of granules from ``first`` on, one tag per input byte.

        A byte above 15 raises :class:`TagValueError` before anything changes, unless
        ``low_nibble_only`` says to keep only its low nibble (KVM's TO_GUEST rule).
        """
        values = _as_u8(tags)
        count = values.size
        self._check_range(first, count)
        if count == 0:
            return
        if low_nibble_only:
            edge_mask = TAG_MASK
        else:
            edge_mask = 0xFF
            # Check the edges now so a bad edge byte cannot leave a half-done store.
            for edge in (values[0], values[-1]):
                if edge > TAG_MASK:
                    raise TagValueError(f"tag {int(edge):#x} does not fit in 4 bits")
        done = 0
        if first & 1:
            done = 1
        pairs = (count - done) // 2
        body_stop = done + 2 * pairs
        if pairs:
            start = (first + done) >> 1
            pack_tags(
                values[done:body_stop],
                self._packed[start : start + pairs],
                low_nibble_only=low_nibble_only,
            )
        if done:
            self.set_tag(first, int(values[0]) & edge_mask)
        if body_stop < count:
            self.set_tag(first + body_stop, int(values[body_stop]) & edge_mask)

    def fill(self, first: int, count: int, tag: int) -> None:
        """Give granules ``[first, first + count)`` the same tag."""
        self._check_range(first, count)
        if not 0 <= tag <= TAG_MASK:
            raise TagValueError(f"tag {tag:#x} does not fit in 4 bits")
        if count == 0:
            return
        stop = first + count
        if first & 1:
            self.set_tag(first, tag)
            first += 1
        if stop & 1 and stop > first:
            self.set_tag(stop - 1, tag)
            stop -= 1
        if stop > first:
            self._packed[first >> 1 : stop >> 1] = tag | (tag << 4)

    # -- packed format (two tags per byte) -------------------------------------------

    def get_packed(self, first: int, count: int) -> U8:
        """Tags of ``count`` granules in the packed format (``ceil(count / 2)`` bytes).

        When ``count`` is odd the last byte's high nibble is 0.
        """
        self._check_range(first, count)
        if first & 1 == 0:
            out = self._packed[first >> 1 : (first + count + 1) >> 1].copy()
            if count & 1:
                out[-1] &= TAG_MASK
            return out
        tags = self.get(first, count)
        if count & 1:
            tags = np.append(tags, np.uint8(0))
        out = np.empty(tags.size // 2, dtype=np.uint8)
        pack_tags(tags, out)
        return out

    def set_packed(self, first: int, count: int, packed: ArrayLike | bytes) -> None:
        """Set ``count`` granules from packed bytes (the swap / core-dump format)."""
        data = _as_u8(packed)
        self._check_range(first, count)
        need = (count + 1) // 2
        if data.size != need:
            raise ValueError(f"{count} granules need {need} packed bytes, got {data.size}")
        if first & 1 == 0 and count & 1 == 0:
            self._packed[first >> 1 : (first + count) >> 1] = data
            return
        tags = np.empty(2 * need, dtype=np.uint8)
        unpack_tags(data, tags)
        self.set(first, tags[:count])

    # -- queries ---------------------------------------------------------------------

    def any_nonzero(self, first: int, count: int) -> bool:
        """Whether any granule in the range has a tag other than 0."""
        self._check_range(first, count)
        if count == 0:
            return False
        return bool(self.get_packed(first, count).any())

    def uniform_tag(self, first: int, count: int) -> int | None:
        """The tag shared by every granule of the range, or None if they differ."""
        self._check_range(first, count)
        if count == 0:
            return None
        first_tag = self.tag_at(first)
        if count == 1:
            return first_tag
        tags = self.get(first, count)
        return first_tag if bool((tags == first_tag).all()) else None
