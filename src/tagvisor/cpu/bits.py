"""Bit manipulation used at decode time (Arm ARM shared pseudo-code).

Everything here runs while a block is translated, never per executed instruction, so
clarity wins over speed.
"""

from __future__ import annotations

from typing import Final

M64: Final = (1 << 64) - 1
M32: Final = (1 << 32) - 1


class ReservedEncoding(Exception):
    """An encoding the Arm ARM marks UNDEFINED or unallocated; the guest gets EC 0x0."""


def field(word: int, lsb: int, width: int) -> int:
    """``word<lsb + width - 1 : lsb>``."""
    return (word >> lsb) & ((1 << width) - 1)


def bit(word: int, n: int) -> int:
    """Bit ``n`` of ``word``."""
    return (word >> n) & 1


def sign_extend(value: int, width: int) -> int:
    """SignExtend(value<width-1:0>) as a Python int (may be negative)."""
    value &= (1 << width) - 1
    sign = 1 << (width - 1)
    return (value ^ sign) - sign


def ones(n: int) -> int:
    """Ones(n): the low ``n`` bits set."""
    return (1 << n) - 1


def ror(value: int, amount: int, width: int) -> int:
    """ROR(value, amount) on a ``width``-bit value."""
    amount %= width
    if amount == 0:
        return value
    mask = ones(width)
    return ((value >> amount) | (value << (width - amount))) & mask


def replicate(value: int, esize: int, width: int) -> int:
    """Replicate(value): the ``esize``-bit ``value`` repeated to fill ``width`` bits."""
    out = 0
    for shift in range(0, width, esize):
        out |= value << shift
    return out


def decode_bit_masks(
    imm_n: int, imms: int, immr: int, *, immediate: bool, datasize: int
) -> tuple[int, int]:
    """DecodeBitMasks: (wmask, tmask) for logical immediates and bitfield moves.

    Raises :class:`ReservedEncoding` for the combinations the Arm ARM makes UNDEFINED.
    """
    combined = (imm_n << 6) | (~imms & 0x3F)
    if combined == 0:
        raise ReservedEncoding("DecodeBitMasks: len < 1")
    length = combined.bit_length() - 1
    if length < 1:
        raise ReservedEncoding("DecodeBitMasks: len < 1")
    esize = 1 << length
    if esize > datasize:
        raise ReservedEncoding("DecodeBitMasks: element larger than the register")
    levels = ones(length)
    if immediate and (imms & levels) == levels:
        raise ReservedEncoding("DecodeBitMasks: all-ones element is reserved")
    s = imms & levels
    r = immr & levels
    d = (s - r) & levels
    welem = ones(s + 1)
    telem = ones(d + 1)
    wmask = replicate(ror(welem, r, esize), esize, datasize)
    tmask = replicate(telem, esize, datasize)
    return wmask, tmask
