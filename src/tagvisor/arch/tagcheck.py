"""Whether an access is tag checked, and what a mismatch does.

Follows the Arm ARM's AArch64.AccessIsTagChecked and AArch64.CheckTag /
AArch64.TagCheckFault, cross-checked with QEMU's target/arm/tcg/mte_helper.c
(mte_probe_int, mte_check_fail).

An access is *unchecked* when any of these hold: the address has no TBI (the tag bits
would be translated, so they cannot be a tag); TCMA is set for its half of the address
space and bits 59:55 are the match-all value; allocation tag access is disabled
(SCTLR.ATA/ATA0, HCR_EL2.ATA); PSTATE.TCO is 1; store-only checking is on and the
access is a load. A checked access to memory that is not Normal Tagged passes.

A checked access compares the pointer's logical tag with the allocation tag of every
granule it touches. On the first mismatch the TCF mode for the EL decides: none
(nothing happens), sync (a data abort, DFSC 0x11), async (TFSR_ELx.TF0 or TF1 by
address bit 55; TFSRE0_EL1 for EL0 accesses), asymmetric (sync for loads, async for
stores).
"""

from __future__ import annotations

from dataclasses import replace
from enum import Enum

import numpy as np

from tagvisor.arch.constants import TAG_GRANULE
from tagvisor.arch.errors import ArchUsageError, TagCheckFault
from tagvisor.arch.memory import NO_TAG, TagMemory
from tagvisor.arch.pointer import (
    allocation_tag_from_address,
    bits_59_55,
    select_bit,
    strip_top_byte,
)
from tagvisor.arch.state import MteState
from tagvisor.arch.sysregs import TagCheckMode


class CheckOutcome(Enum):
    """What a data access's tag check came to, when it did not fault synchronously."""

    UNCHECKED = "unchecked"
    MATCH = "match"
    #: The mismatch was recorded in TFSR_ELx (asynchronous or asymmetric store).
    ASYNC_RECORDED = "async"
    #: Checked and mismatched, but TCF is 0: the fault has no effect.
    IGNORED = "ignored"


def access_is_tag_checked(state: MteState, ptr: int, *, write: bool) -> bool:
    """AArch64.AccessIsTagChecked for a data access by the current EL, ignoring memory type."""
    high = select_bit(ptr) == 1
    tbi = state.tcr.tbi1 if high else state.tcr.tbi0
    if not tbi:
        return False
    tcma = state.tcr.tcma1 if high else state.tcr.tcma0
    if tcma and bits_59_55(ptr) in (0b00000, 0b11111):
        return False
    if not state.allocation_tag_access_enabled():
        return False
    if state.tco:
        return False
    return not (state.store_only() and not write)


def first_mismatch(memory: TagMemory, ptr: int, size: int) -> tuple[int, int] | None:
    """The first granule of ``[ptr, ptr + size)`` whose tag differs from the pointer's.

    Returns (index of that granule within the access, its allocation tag), or None.
    Granules without tag storage never mismatch.
    """
    address = strip_top_byte(ptr)
    first = address - address % TAG_GRANULE
    last = address + size - 1
    count = (last - last % TAG_GRANULE - first) // TAG_GRANULE + 1
    tags = memory.load_tags(first, count)
    logical = allocation_tag_from_address(ptr)
    bad = np.flatnonzero((tags != logical) & (tags != NO_TAG))
    if bad.size == 0:
        return None
    index = int(bad[0])
    return index, int(tags[index])


def fault_address(ptr: int, granule_index: int) -> int:
    """The address reported for a mismatch in the ``granule_index``-th granule touched.

    The first granule reports the access's own address; a later one reports the start
    of that granule, keeping the pointer's top byte (QEMU mte_probe_int; the same as
    the Arm ARM's byte-by-byte split of an unaligned access).
    """
    if granule_index == 0:
        return ptr
    return (ptr & ~(TAG_GRANULE - 1)) + granule_index * TAG_GRANULE


def check_access(
    state: MteState, memory: TagMemory, ptr: int, size: int, *, write: bool
) -> CheckOutcome:
    """Check a data access of ``size`` bytes at ``ptr`` and apply the TCF mode.

    Raises :class:`TagCheckFault` for a synchronous fault; an asynchronous one sets the
    TFSR bit in ``state`` and returns ``ASYNC_RECORDED``. Nothing else changes.
    """
    if size <= 0:
        raise ArchUsageError(f"an access of {size} bytes is meaningless")
    if not access_is_tag_checked(state, ptr, write=write):
        return CheckOutcome.UNCHECKED
    mismatch = first_mismatch(memory, ptr, size)
    if mismatch is None:
        return CheckOutcome.MATCH
    index, allocation_tag = mismatch
    mode = state.tag_check_mode()
    if mode is TagCheckMode.NONE:
        return CheckOutcome.IGNORED
    if mode is TagCheckMode.SYNC or (mode is TagCheckMode.ASYMM and not write):
        raise TagCheckFault(
            address=fault_address(ptr, index),
            logical_tag=allocation_tag_from_address(ptr),
            allocation_tag=allocation_tag,
            write=write,
        )
    record_async_fault(state, ptr)
    return CheckOutcome.ASYNC_RECORDED


def record_async_fault(state: MteState, ptr: int) -> None:
    """Set TF0 or TF1 (by address bit 55) in the TFSR of the accessing EL."""
    high = select_bit(ptr) == 1
    if state.el == 0:
        old = state.tfsre0_el1
        state.tfsre0_el1 = replace(old, tf1=True) if high else replace(old, tf0=True)
    else:
        old = state.tfsr_el1
        state.tfsr_el1 = replace(old, tf1=True) if high else replace(old, tf0=True)
