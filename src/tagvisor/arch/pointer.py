"""Tagged pointers: the logical tag in bits 59:56 and the top-byte-ignore rules.

Arm ARM: AArch64.AllocationTagFromAddress, AddressWithAllocationTag, and the TBI
handling of AArch64.TranslateAddress. With TBI the top byte of a virtual address is not
translated, which is what lets a tag ride in bits 59:56 of a pointer. Bit 55 picks the
TTBR0 (low, bit 55 = 0) or TTBR1 (high) half of the address space, and with it which
TBI/TCMA control applies.
"""

from __future__ import annotations

from typing import Final, NewType

from tagvisor.arch.constants import TAG_MASK
from tagvisor.arch.errors import TagValueError

#: A 64-bit virtual address as a program holds it, tag bits included.
VirtAddr = NewType("VirtAddr", int)

MASK64: Final = (1 << 64) - 1
TAG_SHIFT: Final = 56
TOP_BYTE_SHIFT: Final = 56


def _u64(value: int) -> int:
    return value & MASK64


def allocation_tag_from_address(ptr: int) -> int:
    """The logical tag a pointer carries (bits 59:56)."""
    return (ptr >> TAG_SHIFT) & TAG_MASK


def with_tag(ptr: int, tag: int) -> int:
    """``ptr`` with bits 59:56 replaced by ``tag`` (AddressWithAllocationTag)."""
    if not 0 <= tag <= TAG_MASK:
        raise TagValueError(f"tag {tag:#x} does not fit in 4 bits")
    return _u64((ptr & ~(TAG_MASK << TAG_SHIFT)) | (tag << TAG_SHIFT))


def select_bit(ptr: int) -> int:
    """Bit 55: 0 selects the TTBR0 (lower) range, 1 the TTBR1 (upper) range."""
    return (ptr >> 55) & 1


def bits_59_55(ptr: int) -> int:
    """The five bits the TCMA match-all rule looks at."""
    return (ptr >> 55) & 0x1F


def strip_top_byte(ptr: int) -> int:
    """The address with its top byte made canonical, as translation sees it under TBI.

    The top byte becomes a sign extension of bit 55, so a TTBR0 pointer loses its tag
    bits and a TTBR1 pointer gets 0xFF.
    """
    low = ptr & ((1 << TOP_BYTE_SHIFT) - 1)
    return _u64(low | (0xFF << TOP_BYTE_SHIFT)) if select_bit(ptr) else low


def canonical_untagged(ptr: int, tbi: bool) -> int:
    """The address translation uses: top byte stripped when TBI applies, else as is."""
    return strip_top_byte(ptr) if tbi else _u64(ptr)
