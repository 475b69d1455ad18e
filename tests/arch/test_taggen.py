"""IRG, GMI, ADDG, SUBG and ChooseNonExcludedTag."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tagvisor.arch import MteState, TagCheckMode, allocation_tag_from_address, with_tag
from tagvisor.arch.errors import ArchUsageError
from tagvisor.arch.sysregs import GcrEl1, RgsrEl1
from tagvisor.arch.taggen import (
    addg,
    choose_non_excluded_tag,
    gmi,
    irg,
    lfsr_random_tag,
    subg,
)

tags = st.integers(0, 15)
masks = st.integers(0, 0xFFFF)


@given(tags, tags, masks)
def test_chosen_tag_is_never_excluded_unless_all_are(tag: int, offset: int, exclude: int) -> None:
    """Scenario: any start tag, offset and exclude mask."""
    result = choose_non_excluded_tag(tag, offset, exclude)
    if exclude == 0xFFFF:
        assert result == 0
    else:
        assert not exclude >> result & 1


@given(tags, tags, masks)
def test_chosen_tag_is_offset_steps_through_the_allowed_tags(
    tag: int, offset: int, exclude: int
) -> None:
    """Scenario: the result equals walking the cyclic list of allowed tags by hand."""
    allowed = [t for t in range(16) if not exclude >> t & 1]
    if not allowed:
        return
    # Offset 0 keeps the first allowed tag at or after `tag`; each step moves one on.
    start = next(t for t in [*range(tag, 16), *range(tag)] if t in allowed)
    if offset:
        after = [t for t in [*range(tag + 1, 16), *range(tag + 1)] if t in allowed]
        after = after * 16
        expected = after[offset - 1]
    else:
        expected = start
    assert choose_non_excluded_tag(tag, offset, exclude) == expected


def test_lfsr_steps_match_the_architected_feedback_taps() -> None:
    """Scenario: seed 0x0001 and seed 0x002D through four LFSR steps each.

    Seed 1: the taps 5^3^2^0 give 1, 0, 0, 0 (tag 0b0001), seed 0x1000 after four
    shifts. Seed 0x2D (bits 5,3,2,0 set) gives top = 0 first.
    """
    assert lfsr_random_tag(0x0001) == (0b0001, 0x1000)
    tag, _ = lfsr_random_tag(0x002D)
    assert tag & 1 == 0
    assert lfsr_random_tag(0) == (0, 0)


def test_irg_with_rrnd_clear_uses_and_updates_rgsr() -> None:
    """Scenario: EL1, GCR_EL1.RRND = 0, RGSR_EL1 = {TAG 3, SEED 0xACE1}.

    Each IRG result's tag is stored back in RGSR_EL1.TAG and the seed advances four
    LFSR steps; the same state gives the same sequence.
    """

    def run() -> list[int]:
        state = MteState.bare_metal_el1(TagCheckMode.SYNC)
        state.rgsr = RgsrEl1(tag=3, seed=0xACE1)
        out = []
        for _ in range(6):
            ptr = irg(state, 0x1000, 0)
            assert allocation_tag_from_address(ptr) == state.rgsr.tag
            out.append(state.rgsr.tag)
        return out

    first = run()
    assert first == run()
    offset, _seed = lfsr_random_tag(0xACE1)
    assert first[0] == choose_non_excluded_tag(3, offset, 0)


@given(masks, masks)
def test_irg_honours_both_the_operand_mask_and_gcr_exclude(xm: int, gcr: int) -> None:
    """Scenario: random Xm and GCR_EL1.Exclude; IRG never picks a tag either excludes."""
    state = MteState.linux_user(TagCheckMode.SYNC)
    state.gcr = GcrEl1(exclude=gcr, rrnd=True)
    for _ in range(8):
        tag = allocation_tag_from_address(irg(state, 0x1234, xm))
        excluded = xm | gcr
        assert tag == 0 if excluded == 0xFFFF else not excluded >> tag & 1


def test_irg_gives_tag_zero_without_allocation_tag_access() -> None:
    """Scenario: SCTLR_EL1.ATA = 0 at EL1: IRG returns the operand with tag 0."""
    state = MteState(el=1)
    assert irg(state, with_tag(0x1000, 7), 0) == 0x1000


def test_gmi_sets_the_bit_of_the_pointer_tag() -> None:
    """Scenario: GMI of a pointer tagged 0xC with mask 0x3."""
    assert gmi(with_tag(0x42, 0xC), 0x3) == 0x1003


@given(st.integers(0, 2**64 - 1), st.integers(0, 63), tags, masks)
def test_addg_and_subg_add_to_the_whole_pointer_then_replace_the_tag(
    ptr: int, granules: int, tag_offset: int, exclude: int
) -> None:
    """Scenario: ADDG then SUBG by the same granule offset, from any 64-bit pointer.

    Each adds to all 64 bits (a carry out of bit 55 runs through the tag field, as
    QEMU's helper_addsubg and the Arm ARM's AddWithCarry do), then overwrites bits
    59:56 with ChooseNonExcludedTag of the source tag under GCR_EL1.Exclude.
    """
    state = MteState.bare_metal_el1(TagCheckMode.SYNC)
    state.gcr = GcrEl1(exclude=exclude)
    up = addg(state, ptr, granules, tag_offset)
    up_tag = choose_non_excluded_tag(allocation_tag_from_address(ptr), tag_offset, exclude)
    assert up == with_tag((ptr + 16 * granules) % 2**64, up_tag)
    down = subg(state, up, granules, 0)
    down_tag = choose_non_excluded_tag(up_tag, 0, exclude)
    assert down == with_tag((up - 16 * granules) % 2**64, down_tag)


def test_addg_rejects_immediates_the_encoding_cannot_hold() -> None:
    """Scenario: an offset of 64 granules (uimm6 tops out at 63) and a tag offset 16."""
    state = MteState.bare_metal_el1(TagCheckMode.SYNC)
    with pytest.raises(ArchUsageError, match="uimm6"):
        addg(state, 0, 64, 0)
    with pytest.raises(ArchUsageError, match="4-bit"):
        subg(state, 0, 1, 16)
