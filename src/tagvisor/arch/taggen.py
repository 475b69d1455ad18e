"""The tag-generating instructions: IRG, GMI, ADDG, SUBG.

Semantics from the Arm ARM pseudo-code (AArch64.ChooseNonExcludedTag,
AArch64.RandomTag, NextRandomTagBit, and the IRG/GMI/ADDG/SUBG descriptions), checked
against QEMU's target/arm/tcg/mte_helper.c (choose_nonexcluded_tag, helper_irg,
helper_addsubg). These are register-only operations: no memory is touched.
"""

from __future__ import annotations

from tagvisor.arch.constants import ALL_TAGS_MASK, TAG_MASK
from tagvisor.arch.errors import ArchUsageError
from tagvisor.arch.pointer import MASK64, allocation_tag_from_address, with_tag
from tagvisor.arch.state import MteState
from tagvisor.arch.sysregs import RgsrEl1


def choose_non_excluded_tag(tag: int, offset: int, exclude: int) -> int:
    """AArch64.ChooseNonExcludedTag: step ``offset`` non-excluded tags on from ``tag``.

    With offset 0 the result is ``tag`` itself, or the next non-excluded one after it.
    When all 16 tags are excluded the result is 0.
    """
    if not (0 <= tag <= TAG_MASK and 0 <= offset <= TAG_MASK and 0 <= exclude <= ALL_TAGS_MASK):
        raise ArchUsageError(f"bad arguments tag={tag} offset={offset} exclude={exclude:#x}")
    if exclude == ALL_TAGS_MASK:
        return 0
    if offset == 0:
        while exclude >> tag & 1:
            tag = (tag + 1) & TAG_MASK
    while offset:
        tag = (tag + 1) & TAG_MASK
        while exclude >> tag & 1:
            tag = (tag + 1) & TAG_MASK
        offset -= 1
    return tag


def lfsr_random_tag(seed: int) -> tuple[int, int]:
    """AArch64.RandomTag with GCR_EL1.RRND = 0: four steps of the RGSR_EL1.SEED LFSR.

    Each step computes ``top = seed[5] ^ seed[3] ^ seed[2] ^ seed[0]``, shifts the seed
    right by one with ``top`` entering at bit 15, and yields ``top`` as the next tag bit
    (bit 0 first). Returns (tag, new seed).
    """
    tag = 0
    for i in range(4):
        top = (seed >> 5 ^ seed >> 3 ^ seed >> 2 ^ seed) & 1
        seed = (top << 15) | (seed >> 1)
        tag |= top << i
    return tag, seed


def irg(state: MteState, operand: int, exclude_register: int) -> int:
    """IRG Xd, Xn|SP, Xm: ``operand`` with a random tag not in the exclude set.

    The exclude set is Xm[15:0] OR GCR_EL1.Exclude. With GCR_EL1.RRND = 0 the tag comes
    from the RGSR_EL1 LFSR as an offset from RGSR_EL1.TAG, and RGSR_EL1 is updated;
    with RRND = 1 the choice is implementation defined (see below). With allocation
    tag access disabled the tag is 0.
    """
    exclude = (exclude_register & ALL_TAGS_MASK) | state.gcr.exclude
    if not state.allocation_tag_access_enabled():
        return with_tag(operand, 0)
    seed = state.rgsr.seed
    if state.gcr.rrnd and seed == 0:
        # RRND = 1 is IMPLEMENTATION DEFINED. Like QEMU (helper_irg), tagvisor seeds
        # the architected LFSR once from its random source and then runs it as usual.
        seed = state.random_tag.randrange(1, 1 << 16)
    offset, seed = lfsr_random_tag(seed)
    rtag = choose_non_excluded_tag(state.rgsr.tag, offset, exclude)
    state.rgsr = RgsrEl1(tag=rtag, seed=seed)
    return with_tag(operand, rtag)


def gmi(pointer: int, mask: int) -> int:
    """GMI Xd, Xn|SP, Xm: ``mask`` with the bit for the pointer's tag set."""
    return (mask | (1 << allocation_tag_from_address(pointer))) & MASK64


def _addsubg(state: MteState, pointer: int, offset: int, tag_offset: int) -> int:
    if not 0 <= tag_offset <= TAG_MASK:
        raise ArchUsageError(f"tag offset {tag_offset} is not a 4-bit immediate")
    if state.allocation_tag_access_enabled():
        rtag = choose_non_excluded_tag(
            allocation_tag_from_address(pointer), tag_offset, state.gcr.exclude
        )
    else:
        rtag = 0
    # The offset is added to the whole 64-bit pointer, then the tag is overwritten.
    return with_tag((pointer + offset) & MASK64, rtag)


def _check_uimm6(granules: int) -> None:
    if not 0 <= granules <= 63:
        raise ArchUsageError(f"ADDG/SUBG offset of {granules} granules is not a uimm6")


def addg(state: MteState, pointer: int, granules: int, tag_offset: int) -> int:
    """ADDG Xd, Xn|SP, #(granules * 16), #tag_offset."""
    _check_uimm6(granules)
    return _addsubg(state, pointer, granules * 16, tag_offset)


def subg(state: MteState, pointer: int, granules: int, tag_offset: int) -> int:
    """SUBG Xd, Xn|SP, #(granules * 16), #tag_offset."""
    _check_uimm6(granules)
    return _addsubg(state, pointer, -granules * 16, tag_offset)
