"""The EL1-only MTE behaviour: mte-smoke's reports under QEMU against the model.

mte-smoke (guests/mte-smoke/main.c) runs at EL1 with TBI0, ATA, TCF = sync, GCR_EL1 =
{Exclude 0, RRND 0}, in a 64 KiB arena whose data and tags start at 0. Each test
replays the guest's steps for one part of the arena on the model and compares every
reported value. The constants below mirror main.c.
"""

from __future__ import annotations

import numpy as np
import pytest

from tagvisor.arch import TAG_GRANULE, FlatTaggedMemory, MteState, TagCheckFault
from tagvisor.arch.pointer import with_tag
from tagvisor.arch.sysregs import RgsrEl1, SctlrMte, TagCheckMode, TcrMte
from tagvisor.arch.tagcheck import check_access
from tagvisor.arch.taggen import addg, gmi, irg, subg
from tagvisor.arch.tagmove import dc_gva, ldg, ldgm, stg, stgm, stgp, stzgm
from tests.oracle_system.model import esr_of, guest_el1_state, predict_access, seeded
from tests.support import guest_reports as rid
from tests.support.transcript import Transcript

pytestmark = pytest.mark.oracle

IRG_SEED = 0xBEEF
WINDOW = 1024
FILL = b"\xa5"
#: (bytes, tag offset) of each ADDG / SUBG case, by case number.
ADDG_IMMEDIATES = {0: (0, 0), 1: (16, 1), 2: (1008, 1), 3: (32, 15), 4: (16, 2), 5: (16, 0)}
SUBG_IMMEDIATES = {0: (16, 1), 1: (0, 0), 2: (32, 2), 3: (1008, 15)}


def arena(smoke: Transcript) -> tuple[int, FlatTaggedMemory]:
    base, size = smoke.report(rid.SMOKE_ARENA)
    return base, FlatTaggedMemory(base, size)


def word(memory: FlatTaggedMemory, address: int) -> int:
    return int.from_bytes(memory.read_data(address, 8), "little")


def prepare_window(memory: FlatTaggedMemory, base: int) -> None:
    """prepare_window() of main.c: data 0xA5, granule g tagged (7g + 3) mod 16."""
    memory.write_data(base, FILL * WINDOW)
    tags = [(g * 7 + 3) & 0xF for g in range(WINDOW // TAG_GRANULE)]
    memory.store_tags(base, np.array(tags, dtype=np.uint8))


def window_words(state: MteState, memory: FlatTaggedMemory, base: int) -> tuple[int, ...]:
    """report_window_tags(): LDGM of each GMID block of the window (at most 4)."""
    block = state.gmid.block_size
    return tuple(
        ldgm(state, memory, base + k * block) if k * block < WINDOW else 0 for k in range(4)
    )


def window_zeros(memory: FlatTaggedMemory, base: int) -> tuple[int, int]:
    """report_window_zeros(): first zero byte (WINDOW if none) and the number of them."""
    data = memory.read_data(base, WINDOW)
    count = data.count(0)
    return (data.index(0) if count else WINDOW), count


def test_smoke_guest_passes_its_own_architectural_checks(smoke: Transcript) -> None:
    """Scenario: mte-smoke runs to the end under QEMU with the default boot block. It
    makes no UCALL_ASSERT (its built-in checks of what the architecture fixes hold)
    and ends with UCALL_DONE 0."""
    assert smoke.assertions == []
    assert smoke.done == 0


def test_cpu_has_mte3_a_256_byte_gmid_block_and_the_models_defaults(smoke: Transcript) -> None:
    """Scenario: the runtime reads ID_AA64PFR1_EL1, GMID_EL1 and DCZID_EL0 on -cpu max.
    MTE is FEAT_MTE3 (field 3), GMID_EL1.BS = 6 (LDGM/STGM move 16 tags, the model's
    default) and DCZID_EL0.BS = 4 (64-byte DC ZVA blocks, the model's default; QEMU's
    linux-user reports 7 instead)."""
    mte, gmid, dczid, usable = smoke.report(rid.CPU)
    assert (mte, usable) == (3, 1)
    state = MteState()
    assert gmid == state.gmid.bs
    assert dczid == state.dczid.bs


def test_irg_sequence_is_the_rgsr_lfsr_from_the_seed_the_guest_set(smoke: Transcript) -> None:
    """Scenario: with GCR_EL1.RRND = 0 the guest seeds RGSR_EL1 with 0xBEEF and runs 32
    IRGs with changing Xm exclude masks (including one that excludes all 16 tags
    together with GCR_EL1). Starting from that seed, the model's IRG predicts every
    result (all 64 bits) and RGSR_EL1 after each."""
    rgsr, gcr = smoke.report(rid.SMOKE_IRG_START)
    assert rgsr == IRG_SEED << 8
    state = guest_el1_state(smoke)
    assert gcr == state.gcr.raw
    seeded(state, rgsr)
    reports = smoke.reports(rid.SMOKE_IRG)
    assert [r[0] for r in reports] == list(range(32))
    for index, xn, xm, result, rgsr_after in reports:
        assert irg(state, xn, xm) == result, f"IRG {index}"
        assert state.rgsr.raw == rgsr_after, f"RGSR after IRG {index}"


def test_addg_subg_and_gmi_give_the_models_results_at_el1(smoke: Transcript) -> None:
    """Scenario: ADDG and SUBG with immediates that carry across the tag bits, wrap
    below 0, step onto the excluded tag 0, and GMI with masks that keep their top
    bits. Every 64-bit result equals the model's under the runtime's GCR_EL1."""
    state = guest_el1_state(smoke)
    for case, xn, result in smoke.reports(rid.SMOKE_ADDG):
        size, tag_offset = ADDG_IMMEDIATES[case]
        assert addg(state, xn, size // 16, tag_offset) == result, f"ADDG case {case}"
    for case, xn, result in smoke.reports(rid.SMOKE_SUBG):
        size, tag_offset = SUBG_IMMEDIATES[case]
        assert subg(state, xn, size // 16, tag_offset) == result, f"SUBG case {case}"
    gmi_cases = smoke.reports(rid.SMOKE_GMI)
    assert len(gmi_cases) == 3
    for case, xn, xm, result in gmi_cases:
        assert gmi(xn, xm) == result, f"GMI case {case}"
    assert len(smoke.reports(rid.SMOKE_ADDG)) == len(ADDG_IMMEDIATES)
    assert len(smoke.reports(rid.SMOKE_SUBG)) == len(SUBG_IMMEDIATES)


def test_single_granule_tag_stores_set_tags_and_data_as_the_model(smoke: Transcript) -> None:
    """Scenario: STG, ST2G, STGP, STZG and STZ2G on fresh granules of the arena (STZG
    and STZ2G over data 0xA5), each followed by LDGs of the granules it should and
    should not have tagged and loads of the data. The model replays the same stores
    and gives every LDG result and data word."""
    base, memory = arena(smoke)
    state = guest_el1_state(smoke)

    p, tag, next_tag = smoke.report(rid.SMOKE_STG)
    assert p == with_tag(base + 0x100, 5)
    stg(state, memory, p, p)
    assert (tag, next_tag) == (
        ldg(state, memory, base + 0x108, base + 0x108),
        ldg(state, memory, base + 0x110, base + 0x110),
    )

    p, *tags = smoke.report(rid.SMOKE_ST2G)
    stg(state, memory, p, p, granules=2)
    assert tags == [ldg(state, memory, base + o, base + o) for o in (0x200, 0x210, 0x220)]

    p, tag, lo, hi = smoke.report(rid.SMOKE_STGP)
    stgp(state, memory, p, 0x1111222233334444, 0x5555666677778888)
    assert tag == ldg(state, memory, base + 0x300, base + 0x300)
    assert (lo, hi) == (word(memory, base + 0x300), word(memory, base + 0x308))

    p, tag, data0, data16 = smoke.report(rid.SMOKE_STZG)
    memory.write_data(base + 0x400, FILL * 0x20)
    stg(state, memory, p, p, zero_data=True)
    assert tag == ldg(state, memory, base + 0x400, base + 0x400)
    assert (data0, data16) == (word(memory, base + 0x400), word(memory, base + 0x410))

    p, tag0, tag16, data24, data32 = smoke.report(rid.SMOKE_STZ2G)
    memory.write_data(base + 0x500, FILL * 0x40)
    stg(state, memory, p, p, granules=2, zero_data=True)
    assert (tag0, tag16) == (
        ldg(state, memory, base + 0x500, base + 0x500),
        ldg(state, memory, base + 0x510, base + 0x510),
    )
    assert (data24, data32) == (word(memory, base + 0x518), word(memory, base + 0x520))


def test_stgm_writes_one_tag_per_nibble_over_one_gmid_block(smoke: Transcript) -> None:
    """Scenario: STGM with Xt = 0xFEDCBA9876543210 at a 256-byte aligned address, then
    LDG of each granule. With GMID_EL1.BS = 6, granule i gets nibble i, the 17th
    granule keeps tag 0, as the model's STGM says."""
    base, memory = arena(smoke)
    state = guest_el1_state(smoke)
    address, value, packed, tag17 = smoke.report(rid.SMOKE_STGM)
    assert address == base + 0x1000
    stgm(state, memory, address, value)
    model = sum((ldg(state, memory, address + 16 * g, 0) >> 56 & 0xF) << (4 * g) for g in range(16))
    assert packed == model == value
    assert tag17 == ldg(state, memory, address + 256, 0) >> 56 == 0


def test_ldgm_packs_the_block_holding_an_unaligned_address(smoke: Transcript) -> None:
    """Scenario: granule i of a 256-byte block tagged 5i + 1 with STG, then LDGM from
    block + 0x48 (not block aligned). LDGM reads the whole aligned block, granule i
    into nibble i, like the model's LDGM."""
    base, memory = arena(smoke)
    state = guest_el1_state(smoke)
    address, result = smoke.report(rid.SMOKE_LDGM)
    block = base + 0x1100
    assert address == block + 0x48
    for g in range(16):
        granule = block + 16 * g
        stg(state, memory, granule, with_tag(granule, (5 * g + 1) & 0xF))
    assert result == ldgm(state, memory, address)


def test_stzgm_zeroes_and_tags_one_dczid_block_with_xt_low_nibble(smoke: Transcript) -> None:
    """Scenario: a 1 KiB window with data 0xA5 and patterned tags; STZGM with Xt =
    0xABCDEF07 at window + 0x48. The DCZID_EL0 block holding the address is zeroed and
    tagged 7 (Xt[3:0]); nothing else changes. LDGM of the window and the zero bytes
    match the model."""
    base, memory = arena(smoke)
    state = guest_el1_state(smoke)
    window = base + 0x1400
    address, *words = smoke.report(rid.SMOKE_STZGM)
    assert address == window + 0x48
    prepare_window(memory, window)
    stzgm(state, memory, address, 0xABCDEF07)
    assert tuple(words) == window_words(state, memory, window)
    assert smoke.report(rid.SMOKE_STZGM_DATA) == (address, *window_zeros(memory, window))


def test_dc_gva_tags_and_dc_gzva_also_zeroes_one_dczid_block(smoke: Transcript) -> None:
    """Scenario: DC GVA with a pointer tagged 9, then DC GZVA with one tagged 0xB, each
    at window + 0x124 of a freshly prepared window, at EL1. The block holding the
    address takes the pointer's tag; DC GZVA also zeroes it. LDGM of each window and
    the zero bytes match the model."""
    base, memory = arena(smoke)
    state = guest_el1_state(smoke)

    window = base + 0x2000
    pointer, *words = smoke.report(rid.SMOKE_DC_GVA)
    assert pointer == with_tag(window + 0x124, 9)
    prepare_window(memory, window)
    dc_gva(state, memory, pointer)
    assert tuple(words) == window_words(state, memory, window)

    window = base + 0x2400
    pointer, *words = smoke.report(rid.SMOKE_DC_GZVA)
    assert pointer == with_tag(window + 0x124, 0xB)
    prepare_window(memory, window)
    dc_gva(state, memory, pointer, zero_data=True)
    assert tuple(words) == window_words(state, memory, window)
    assert smoke.report(rid.SMOKE_DC_GZVA_DATA) == (pointer, *window_zeros(memory, window))


def test_tcma0_makes_only_tag_zero_pointers_match_all(smoke: Transcript) -> None:
    """Scenario: a granule tagged 9 holding 0x1122334455667788; TCR_EL1.TCMA0 set.
    A load through tag 0 is unchecked and reads the data; tag 0xF (bits 59:55 =
    0b11110, not the low-half match-all value) and tag 3 fault; a store through tag 0
    is unchecked and lands. With TCMA0 clear again a tag-0 load faults. ESR, FAR and
    values equal the model's check_access."""
    base, memory = arena(smoke)
    state = guest_el1_state(smoke)
    granule = base + 0x3000
    stg(state, memory, granule, with_tag(granule, 9))
    memory.write_data(granule, (0x1122334455667788).to_bytes(8, "little"))
    cases = {case: rest for case, *rest in smoke.reports(rid.SMOKE_TCMA)}
    assert sorted(cases) == [0, 1, 2, 3, 4]

    for case in (0, 1, 2, 3, 4):
        pointer, esr, far, value = cases[case]
        write = case == 3
        state.tcr = TcrMte(tbi0=True, tcma0=case != 4)
        outcome = predict_access(state, memory, pointer, 8, write=write)
        assert (esr, far) == (outcome.esr, outcome.far), f"TCMA case {case}"
        if not outcome.esr:
            if write:
                memory.write_data(granule + 8, (0x5A5A5A5A5A5A5A5A).to_bytes(8, "little"))
            expected = word(memory, pointer & ((1 << 56) - 1))
            assert value == expected, f"TCMA case {case}"
    assert [cases[n][1] != 0 for n in range(5)] == [False, True, True, False, True]


def test_ata_off_makes_ldg_read_zero_and_ignores_tag_writes(smoke: Transcript) -> None:
    """Scenario: a granule tagged 9; SCTLR_EL1.ATA cleared. LDG gives tag 0, IRG gives
    tag 0 and leaves RGSR_EL1 alone, ADDG gives tag 0, STG and STGP's tag write are
    ignored (STGP's data is written), and a load through a wrong tag is unchecked.
    After ATA is set again LDG reads 9 and the data is STGP's. All as the model."""
    base, memory = arena(smoke)
    state = guest_el1_state(smoke)
    h = base + 0x3100
    stg(state, memory, h, with_tag(h, 9))
    ldg_off, irg_off, rgsr_before, rgsr_after, esr = smoke.report(rid.SMOKE_ATA_OFF)

    state.sctlr = SctlrMte(tcf=TagCheckMode.SYNC, ata=False)
    state.rgsr = RgsrEl1.from_raw(rgsr_before)
    assert ldg_off == ldg(state, memory, h, with_tag(h, 5)) == h
    assert irg_off == irg(state, with_tag(h, 6), 0)
    assert rgsr_after == state.rgsr.raw == rgsr_before
    xn, addg_off = smoke.report(rid.SMOKE_ATA_ADDG)
    assert addg_off == addg(state, xn, 1, 1)
    stg(state, memory, with_tag(h, 4), with_tag(h, 4))
    stgp(state, memory, with_tag(h, 4), 0xCAFE, 0xF00D)
    assert esr == predict_access(state, memory, with_tag(h, 3), 8, write=False).esr == 0

    state.sctlr = SctlrMte(tcf=TagCheckMode.SYNC, ata=True)
    ldg_on, data = smoke.report(rid.SMOKE_ATA_ON)
    assert ldg_on == ldg(state, memory, h, h) == with_tag(h, 9)
    assert data == word(memory, h) == 0xCAFE


def test_esr_of_a_tag_check_fault_is_what_qemu_reports(smoke: Transcript) -> None:
    """Scenario: the TCMA cases' faulting loads report ESR_EL1 0x96000011 (EC 0x25
    data abort at the same EL, IL, DFSC 0x11 synchronous tag check fault, no ISV):
    the value tagvisor's CPU must deliver for a tag-mismatched load at EL1."""
    base, memory = arena(smoke)
    state = guest_el1_state(smoke)
    state.tcr = TcrMte(tbi0=True)
    pointer = with_tag(base + 0x3000, 3)
    stg(state, memory, base + 0x3000, with_tag(0, 9))
    with pytest.raises(TagCheckFault) as fault:
        check_access(state, memory, pointer, 8, write=False)
    faulting = [r for r in smoke.reports(rid.SMOKE_TCMA) if r[2]]
    assert {r[2] for r in faulting} == {esr_of(fault.value)} == {0x96000011}
