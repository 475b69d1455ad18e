"""LDG and the tag stores: STG family, STGP, LDGM/STGM/STZGM, DC GVA/GZVA."""

import numpy as np
import pytest

from tagvisor.arch import (
    AlignmentFault,
    FlatTaggedMemory,
    MteState,
    TagCheckMode,
    TrappedInstruction,
    UndefinedInstruction,
    with_tag,
)
from tagvisor.arch.sysregs import DczidEl0, GmidEl1, SctlrMte
from tagvisor.arch.tagmove import dc_gva, ldg, ldgm, stg, stgm, stgp, stzgm

BASE = 0x4000_0000


@pytest.fixture
def memory() -> FlatTaggedMemory:
    m = FlatTaggedMemory(BASE, 8192)
    m.data[:] = 0xAA
    return m


def el1() -> MteState:
    return MteState.bare_metal_el1(TagCheckMode.SYNC)


def test_stg_sets_one_granule_and_ldg_merges_it_into_xt(memory: FlatTaggedMemory) -> None:
    """Scenario: STG tag 0x6 at BASE+0x20, then LDG from an unaligned address in it.

    LDG changes only bits 59:56 of Xt; the data is untouched by STG.
    """
    state = el1()
    stg(state, memory, BASE + 0x20, with_tag(0, 6))
    assert memory.tags.get(0, 4).tolist() == [0, 0, 6, 0]
    xt = 0xF0FF_FFFF_1234_5678
    assert ldg(state, memory, BASE + 0x27, xt) == with_tag(xt, 6)
    assert memory.read_data(BASE + 0x20, 16) == b"\xaa" * 16


def test_st2g_and_stz2g_cover_two_granules_and_stz_zeroes_data(
    memory: FlatTaggedMemory,
) -> None:
    """Scenario: ST2G at granule 0, STZ2G at granule 2."""
    state = el1()
    stg(state, memory, BASE, with_tag(0, 3), granules=2)
    stg(state, memory, BASE + 32, with_tag(0, 4), granules=2, zero_data=True)
    assert memory.tags.get(0, 5).tolist() == [3, 3, 4, 4, 0]
    assert memory.read_data(BASE, 32) == b"\xaa" * 32
    assert memory.read_data(BASE + 32, 32) == bytes(32)


@pytest.mark.parametrize("offset", [1, 8, 15])
def test_tag_stores_need_granule_alignment(memory: FlatTaggedMemory, offset: int) -> None:
    """Scenario: STG and STGP at an address that is not 16-byte aligned."""
    with pytest.raises(AlignmentFault) as fault:
        stg(el1(), memory, BASE + offset, 0)
    assert fault.value.address == BASE + offset
    with pytest.raises(AlignmentFault):
        stgp(el1(), memory, with_tag(BASE + offset, 1), 1, 2)


def test_stgp_stores_data_and_the_address_own_tag(memory: FlatTaggedMemory) -> None:
    """Scenario: STGP x1, x2, [ptr] where ptr carries tag 0xB."""
    stgp(el1(), memory, with_tag(BASE + 0x40, 0xB), 0x1122334455667788, 0x99)
    assert memory.tags.tag_at(4) == 0xB
    assert memory.read_data(BASE + 0x40, 16) == bytes.fromhex("8877665544332211") + bytes(
        [0x99] + [0] * 7
    )


def test_ldgm_and_stgm_move_a_256_byte_block_through_one_register(
    memory: FlatTaggedMemory,
) -> None:
    """Scenario: GMID_EL1.BS = 6 (QEMU -cpu max): 16 tags in one 64-bit register.

    STGM from an address inside the block aligns down; nibble i is granule i.
    """
    state = el1()
    value = 0xFEDC_BA98_7654_3210
    stgm(state, memory, BASE + 0x100 + 0x37, value)
    assert memory.tags.get(16, 16).tolist() == list(range(16))
    assert ldgm(state, memory, BASE + 0x1FF) == value


def test_small_gm_block_uses_nibbles_by_address_position(memory: FlatTaggedMemory) -> None:
    """Scenario: GMID_EL1.BS = 4 (64-byte block, four tags) at BASE + 0x40.

    The four tags are nibbles 4 to 7 of Xt, chosen by address bits 7:4.
    """
    state = el1()
    state.gmid = GmidEl1(bs=4)
    stgm(state, memory, BASE + 0x40, 0x0000_0000_DCBA_0000)
    assert memory.tags.get(4, 4).tolist() == [0xA, 0xB, 0xC, 0xD]
    assert ldgm(state, memory, BASE + 0x40) == 0xDCBA_0000


def test_stzgm_zeroes_a_dczid_block_with_the_low_tag_bits(memory: FlatTaggedMemory) -> None:
    """Scenario: DCZID_EL0.BS = 4 (64 bytes); STZGM with Xt = 0x...35 uses tag 0x5."""
    state = el1()
    state.dczid = DczidEl0(bs=4)
    stzgm(state, memory, BASE + 0x80 + 5, 0x35)
    assert memory.tags.get(8, 4).tolist() == [5] * 4
    assert memory.read_data(BASE + 0x80, 64) == bytes(64)
    assert memory.read_data(BASE + 0xC0, 1) == b"\xaa"


@pytest.mark.parametrize(
    "op",
    [
        lambda s, m: ldgm(s, m, BASE),
        lambda s, m: stgm(s, m, BASE, 0),
        lambda s, m: stzgm(s, m, BASE, 0),
    ],
    ids=["LDGM", "STGM", "STZGM"],
)
def test_block_tag_instructions_are_undefined_at_el0(memory: FlatTaggedMemory, op: object) -> None:
    """Scenario: a user process tries LDGM/STGM/STZGM."""
    assert callable(op)
    with pytest.raises(UndefinedInstruction, match="EL0"):
        op(MteState.linux_user(TagCheckMode.SYNC), memory)


def test_dc_gzva_tags_and_zeroes_the_block_with_the_pointer_tag(
    memory: FlatTaggedMemory,
) -> None:
    """Scenario: EL0 with SCTLR_EL1.DZE (Linux sets it), DCZID block 512 bytes (qemu-user)."""
    state = MteState.linux_user(TagCheckMode.SYNC, dczid_bs=7)
    dc_gva(state, memory, with_tag(BASE + 0x210, 0xE), zero_data=True)
    assert memory.tags.get(32, 32).tolist() == [0xE] * 32
    assert memory.read_data(BASE + 0x200, 512) == bytes(512)
    assert memory.tags.tag_at(31) == 0


def test_dc_gva_at_el0_traps_without_dze(memory: FlatTaggedMemory) -> None:
    """Scenario: EL0 with SCTLR_EL1.DZE = 0."""
    state = MteState(el=0, sctlr=SctlrMte(ata0=True))
    with pytest.raises(TrappedInstruction, match="DZE"):
        dc_gva(state, memory, BASE)


def test_tags_are_invisible_without_allocation_tag_access(memory: FlatTaggedMemory) -> None:
    """Scenario: SCTLR_EL1.ATA = 0: STG changes nothing, STZG still zeroes, LDG reads 0.

    Arm ARM AArch64.MemTag: tag reads are 0 and tag writes ignored when access is off.
    """
    memory.tags.fill(0, 4, 9)
    state = MteState(el=1)
    stg(state, memory, BASE, with_tag(0, 3), zero_data=True)
    assert memory.tags.tag_at(0) == 9
    assert memory.read_data(BASE, 16) == bytes(16)
    assert ldg(state, memory, BASE, with_tag(0, 5)) == 0


def test_untagged_memory_reads_tag_zero_and_ignores_tag_stores() -> None:
    """Scenario: LDG/STG on memory that is not Normal Tagged."""
    memory = FlatTaggedMemory(BASE, 4096, tagged=False)
    stg(el1(), memory, BASE, with_tag(0, 3))
    assert ldg(el1(), memory, BASE, 0) == 0
    assert not np.any(memory.tags.packed)
