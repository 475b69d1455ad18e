"""The tag-check decision: which accesses are checked, and what a mismatch does."""

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tagvisor.arch import (
    CheckOutcome,
    FlatTaggedMemory,
    MteState,
    TagCheckFault,
    TagCheckMode,
    check_access,
    with_tag,
)
from tagvisor.arch.errors import FSC_TAG_CHECK
from tagvisor.arch.sysregs import TcrMte

BASE = 0x4000_0000


def memory_with_tag(tag: int, granules: int = 4) -> FlatTaggedMemory:
    memory = FlatTaggedMemory(BASE, 4096)
    memory.tags.fill(0, granules, tag)
    return memory


def el1(mode: TagCheckMode = TagCheckMode.SYNC) -> MteState:
    return MteState.bare_metal_el1(mode)


def test_matching_tag_passes_and_mismatch_faults_synchronously() -> None:
    """Scenario: granules tagged 0x5; a load through tag 0x5 passes, through 0x6 faults.

    The fault is a data abort with DFSC 0x11 reporting the pointer as FAR.
    """
    memory = memory_with_tag(5)
    state = el1()
    assert check_access(state, memory, with_tag(BASE, 5), 8, write=False) is CheckOutcome.MATCH
    with pytest.raises(TagCheckFault) as fault:
        check_access(state, memory, with_tag(BASE + 3, 6), 4, write=False)
    assert fault.value.fsc == FSC_TAG_CHECK
    assert fault.value.address == with_tag(BASE + 3, 6)
    assert (fault.value.logical_tag, fault.value.allocation_tag) == (6, 5)


def test_spanning_access_reports_the_start_of_the_first_bad_granule() -> None:
    """Scenario: granule 0 is tagged 0x5, granule 1 is 0x0; an 8-byte load at offset 12.

    The access spans both granules; the fault names the start of granule 1 with the
    pointer's tag kept (QEMU mte_probe_int; Arm ARM split of unaligned accesses).
    """
    memory = memory_with_tag(5, granules=1)
    with pytest.raises(TagCheckFault) as fault:
        check_access(el1(), memory, with_tag(BASE + 12, 5), 8, write=False)
    assert fault.value.address == with_tag(BASE + 16, 5)


@given(offset=st.integers(0, 200), size=st.sampled_from([1, 2, 4, 8, 16, 32]))
def test_access_faults_exactly_when_it_touches_a_differently_tagged_granule(
    offset: int, size: int
) -> None:
    """Scenario: granules 0-7 tagged 0x9, the rest 0x0; any access through tag 0x9.

    It faults if and only if its last byte lies at or past byte 128.
    """
    memory = memory_with_tag(9, granules=8)
    ptr = with_tag(BASE + offset, 9)
    if offset + size <= 128:
        assert check_access(el1(), memory, ptr, size, write=True) is CheckOutcome.MATCH
    else:
        with pytest.raises(TagCheckFault) as fault:
            check_access(el1(), memory, ptr, size, write=True)
        assert fault.value.address == with_tag(max(BASE + offset, BASE + 128), 9)


def test_async_mode_records_tf0_or_tf1_by_address_bit_55() -> None:
    """Scenario: async mode; a bad store to a TTBR0 address sets TFSR_EL1.TF0.

    With TBI1 and memory mapped high, a bad store to a TTBR1 address sets TF1 instead.
    """
    state = el1(TagCheckMode.ASYNC)
    memory = memory_with_tag(1)
    outcome = check_access(state, memory, with_tag(BASE, 2), 8, write=True)
    assert outcome is CheckOutcome.ASYNC_RECORDED
    assert (state.tfsr_el1.tf0, state.tfsr_el1.tf1) == (True, False)

    high = 0xFFFF_8000_0000_0000
    state = el1(TagCheckMode.ASYNC)
    state.tcr = TcrMte(tbi0=True, tbi1=True)
    high_memory = FlatTaggedMemory(high & ((1 << 56) - 1) | (0xFF << 56), 4096)
    check_access(state, high_memory, with_tag(high, 3), 8, write=True)
    assert (state.tfsr_el1.tf0, state.tfsr_el1.tf1) == (False, True)


def test_el0_async_faults_go_to_tfsre0() -> None:
    """Scenario: a Linux user process in async mode makes a bad load."""
    state = MteState.linux_user(TagCheckMode.ASYNC)
    check_access(state, memory_with_tag(4), with_tag(BASE, 7), 1, write=False)
    assert state.tfsre0_el1.tf0
    assert not state.tfsr_el1.tf0


def test_asymmetric_mode_faults_loads_and_records_stores() -> None:
    """Scenario: FEAT_MTE3 asymmetric mode (TCF = 3) with a bad pointer."""
    memory = memory_with_tag(1)
    state = el1(TagCheckMode.ASYMM)
    with pytest.raises(TagCheckFault):
        check_access(state, memory, with_tag(BASE, 2), 8, write=False)
    outcome = check_access(state, memory, with_tag(BASE, 2), 8, write=True)
    assert outcome is CheckOutcome.ASYNC_RECORDED


@pytest.mark.parametrize(
    ("change", "outcome"),
    [
        (lambda s: replace(s, tco=True), CheckOutcome.UNCHECKED),
        (lambda s: replace(s, sctlr=replace(s.sctlr, ata=False)), CheckOutcome.UNCHECKED),
        (lambda s: replace(s, hcr_ata=False), CheckOutcome.UNCHECKED),
        (lambda s: replace(s, tcr=TcrMte(tbi0=False)), CheckOutcome.UNCHECKED),
        (lambda s: replace(s, sctlr=replace(s.sctlr, tcf=TagCheckMode.NONE)), CheckOutcome.IGNORED),
        (lambda s: replace(s, sctlr=replace(s.sctlr, tcso=True)), CheckOutcome.UNCHECKED),
    ],
    ids=["PSTATE.TCO", "SCTLR.ATA=0", "HCR_EL2.ATA=0", "no TBI", "TCF=none", "store-only"],
)
def test_each_way_to_turn_checking_off_lets_a_bad_load_through(
    change: object, outcome: CheckOutcome
) -> None:
    """Scenario: a load through a wrong tag under each disabling control in turn."""
    assert callable(change)
    state = change(el1())
    result = check_access(state, memory_with_tag(3), with_tag(BASE, 4), 8, write=False)
    assert result is outcome


def test_tcma_match_all_tag_is_unchecked_only_with_the_all_zero_top_bits() -> None:
    """Scenario: TCMA0 set; pointer tag 0 with bit 55 clear is the match-all value.

    Memory tagged 0x7 is then reachable through an untagged pointer, but a pointer
    with tag 0x1 still faults.
    """
    state = el1()
    state.tcr = TcrMte(tbi0=True, tcma0=True)
    memory = memory_with_tag(7)
    assert check_access(state, memory, BASE, 8, write=False) is CheckOutcome.UNCHECKED
    with pytest.raises(TagCheckFault):
        check_access(state, memory, with_tag(BASE, 1), 8, write=False)


def test_untagged_memory_always_passes_the_check() -> None:
    """Scenario: memory that is not Normal Tagged (device or plain normal memory)."""
    memory = FlatTaggedMemory(BASE, 4096, tagged=False)
    result = check_access(el1(), memory, with_tag(BASE, 0xA), 16, write=True)
    assert result is CheckOutcome.MATCH
