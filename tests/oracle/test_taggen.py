"""IRG, GMI, ADDG and SUBG: the model's results against QEMU's, bit for bit.

QEMU runs the instructions at EL0 under ``qemu-aarch64 -cpu max`` with a Linux user
state (TBI0, ATA0, GCR_EL1.RRND = 1, GCR_EL1.Exclude = ~include mask); the model runs
:mod:`tagvisor.arch.taggen` on ``MteState.linux_user`` with the same include mask.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from tagvisor.arch import MteState, TagCheckMode
from tagvisor.arch.sysregs import GcrEl1, RgsrEl1
from tagvisor.arch.taggen import addg, choose_non_excluded_tag, gmi, irg, subg
from tests.oracle.qemu_probe import QemuProbe, set_mode

U64 = (1 << 64) - 1


def user_state(include_mask: int = 0xFFFF) -> MteState:
    return MteState.linux_user(TagCheckMode.SYNC, include_mask)


def mismatch_report(mismatches: list[str], total: int) -> str:
    shown = "\n".join(mismatches[:10])
    return f"{len(mismatches)} of {total} cases differ from QEMU:\n{shown}"


# Pointers that exercise the tag bits and the carries into and out of them.
pointers = st.one_of(
    st.integers(0, U64),
    st.builds(
        lambda top, low: top << 56 | low,
        st.integers(0, 0xFF),
        st.one_of(
            st.integers(0, 1 << 12),
            st.integers((1 << 56) - (1 << 11), (1 << 56) - 1),
            st.integers(0, (1 << 56) - 1),
        ),
    ),
)
include_masks = st.one_of(
    st.integers(0, 0xFFFF),
    st.sampled_from([0, 0xFFFF, 0x0001, 0x8000, 0xFFFE, 0x7FFF, 0x0101, 0xAAAA]),
)
addsubg_cases = st.tuples(
    st.sampled_from(["addg", "subg"]),
    pointers,
    st.integers(0, 63),
    st.integers(0, 15),
    include_masks,
)


@pytest.mark.oracle
@settings(max_examples=25, deadline=None)
@given(st.lists(addsubg_cases, min_size=50, max_size=150))
def test_addg_and_subg_give_qemus_64_bit_result(
    qemu: QemuProbe, cases: list[tuple[str, int, int, int, int]]
) -> None:
    """Scenario: ADDG/SUBG Xd, Xn, #uimm6*16, #uimm4 with arbitrary 64-bit Xn (tags,
    bits 63:60, carries across bit 56 and wrap-around at 2^64) under arbitrary
    prctl include masks (GCR_EL1.Exclude). The whole 64-bit result must be QEMU's:
    the offset is added to all of Xn, then bits 59:56 are replaced by
    ChooseNonExcludedTag(tag, uimm4, Exclude)."""
    script: list[str] = []
    for op, pointer, granules, tag_offset, include in cases:
        script += [
            set_mode(TagCheckMode.SYNC, include),
            f"{op} {pointer:#x} {granules} {tag_offset}",
        ]
    replies = qemu.run(script)[1::2]
    mismatches = []
    for (op, pointer, granules, tag_offset, include), reply in zip(cases, replies, strict=True):
        fn = addg if op == "addg" else subg
        model = fn(user_state(include), pointer, granules, tag_offset)
        if model != reply.value:
            mismatches.append(
                f"{op} {pointer:#018x} #{granules * 16} #{tag_offset} include {include:#06x}: "
                f"model {model:#018x} qemu {reply.value:#018x}"
            )
    assert not mismatches, mismatch_report(mismatches, len(cases))


@pytest.mark.oracle
@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(pointers, st.integers(0, U64)), min_size=50, max_size=150))
def test_gmi_sets_the_bit_of_the_pointers_tag_like_qemu(
    qemu: QemuProbe, cases: list[tuple[int, int]]
) -> None:
    """Scenario: GMI Xd, Xn, Xm with arbitrary 64-bit Xn and Xm: Xd = Xm | 1 << tag(Xn),
    all 64 bits of Xm kept."""
    replies = qemu.run([f"gmi {xn:#x} {xm:#x}" for xn, xm in cases])
    mismatches = [
        f"gmi {xn:#x} {xm:#x}: model {gmi(xn, xm):#x} qemu {reply.value:#x}"
        for (xn, xm), reply in zip(cases, replies, strict=True)
        if gmi(xn, xm) != reply.value
    ]
    assert not mismatches, mismatch_report(mismatches, len(cases))


def exclusion_masks() -> list[int]:
    """Include masks: none, all, each single tag, all but each tag, and 200 random ones."""
    rng = random.Random(20240501)
    masks = [0, 0xFFFF]
    masks += [1 << t for t in range(16)]
    masks += [0xFFFF ^ (1 << t) for t in range(16)]
    masks += [rng.randrange(1, 0xFFFF) for _ in range(200)]
    return masks


@pytest.mark.oracle
def test_choose_non_excluded_tag_matches_qemu_for_every_tag_and_offset(qemu: QemuProbe) -> None:
    """Scenario: ADDG Xd, Xn, #0, #k for every start tag (0-15) and tag offset k (0-15)
    under 234 include masks (none, all, one tag, all but one, random). ADDG's tag is
    ChooseNonExcludedTag(tag, k, GCR_EL1.Exclude), so this compares
    taggen.choose_non_excluded_tag exhaustively in (tag, k) with QEMU's
    choose_nonexcluded_tag, including the all-excluded case (result 0)."""
    masks = exclusion_masks()
    script: list[str] = []
    for include in masks:
        script.append(set_mode(TagCheckMode.SYNC, include))
        script += [f"addg {tag << 56 | 0x1230:#x} 0 {k}" for tag in range(16) for k in range(16)]
    replies = qemu.run(script)
    mismatches = []
    for m, include in enumerate(masks):
        exclude = ~include & 0xFFFF
        block = replies[m * 257 + 1 : (m + 1) * 257]
        for (tag, k), reply in zip(
            ((t, k) for t in range(16) for k in range(16)), block, strict=True
        ):
            qemu_tag = reply.value >> 56 & 0xF
            model_tag = choose_non_excluded_tag(tag, k, exclude)
            via_addg = addg(user_state(include), tag << 56 | 0x1230, 0, k)
            if model_tag != qemu_tag or via_addg != reply.value:
                mismatches.append(
                    f"tag {tag} offset {k} exclude {exclude:#06x}: model {model_tag} "
                    f"(addg {via_addg:#x}) qemu {qemu_tag} ({reply.value:#x})"
                )
    assert not mismatches, mismatch_report(mismatches, 256 * len(masks))


# --- IRG --------------------------------------------------------------------------------

#: IRGs with nothing excluded used to recover QEMU's LFSR state; 16 give 64 bits of
#: evidence for 20 unknown bits (16-bit seed, 4-bit start tag).
RECOVERY_IRGS = 16


def lfsr_offsets(seeds: NDArray[np.uint32], steps: int) -> NDArray[np.uint8]:
    """The RandomTag() offsets of ``steps`` IRGs for every seed: shape (steps, seeds).

    The same LFSR as the Arm ARM's NextRandomTagBit (taps 5, 3, 2, 0; bit 15 in),
    written for arrays so all 2^16 seeds run at once.
    """
    s = seeds.astype(np.uint32).copy()
    out = np.zeros((steps, s.size), dtype=np.uint8)
    for step in range(steps):
        offset = np.zeros(s.size, dtype=np.uint32)
        for bit in range(4):
            top = (s >> 5 ^ s >> 3 ^ s >> 2 ^ s) & 1
            s = ((top << 15) | (s >> 1)).astype(np.uint32)
            offset |= top << bit
        out[step] = offset
    return out


def recover_lfsr(tags: list[int]) -> list[tuple[int, int]]:
    """Every (start tag, seed) that produces ``tags`` from IRGs with nothing excluded.

    With no exclusions ChooseNonExcludedTag(start, offset, 0) is (start + offset) % 16,
    so tag k is (start + offset_1 + ... + offset_k) % 16.
    """
    seeds = np.arange(1 << 16, dtype=np.uint32)
    running = np.cumsum(lfsr_offsets(seeds, len(tags)), axis=0, dtype=np.uint32)
    starts = np.arange(16, dtype=np.uint32)[:, None, None]
    predicted = (starts + running[None]) & 0xF  # (start, step, seed)
    observed = np.array(tags, dtype=np.uint32)[None, :, None]
    start_idx, seed_idx = np.nonzero((predicted == observed).all(axis=1))
    return [(int(t), int(s)) for t, s in zip(start_idx, seed_idx, strict=True)]


def irg_program(rng: random.Random, count: int) -> Iterator[tuple[str, int, int]]:
    """IRG steps with changing exclusions: ("prctl", include, 0) or ("irg", xn, xm)."""
    special_xm = [0, 0xFFFF, 0xFFFE, 0x7FFF, 0x00FF, 0xFF00, 0x5555, 1 << 16 | 3, U64]
    for _ in range(count):
        roll = rng.random()
        if roll < 0.05:
            yield (
                "prctl",
                rng.choice([0xFFFF, 0, 1 << rng.randrange(16), rng.randrange(1 << 16)]),
                0,
            )
        else:
            xm = rng.choice(special_xm) if roll < 0.3 else rng.randrange(1 << 16)
            if rng.random() < 0.1:
                xm |= rng.randrange(1 << 64) & ~0xFFFF  # bits above 15 are ignored
            yield "irg", rng.randrange(1 << 64), xm


@pytest.mark.oracle
@pytest.mark.parametrize("seed", [1, 2, 3, 42, 2024])
def test_irg_follows_the_architected_lfsr_once_qemu_has_seeded_it(
    qemu: QemuProbe, seed: int
) -> None:
    """Scenario: QEMU (GCR_EL1.RRND = 1) seeds RGSR_EL1.SEED once from its random source
    at the first IRG, then runs the architected LFSR. From 16 IRGs with nothing excluded
    the test recovers (RGSR.TAG, RGSR.SEED) by brute force over all 16 x 2^16 states,
    then predicts 1500 more IRGs EXACTLY with taggen.irg on an MteState holding that
    RGSR: random Xn (other bits must be kept), Xm exclude masks (bits above 15
    ignored) and prctl include-mask changes, including everything excluded (tag 0).
    ``-seed`` makes QEMU's draw repeat, so each parameter is one fixed LFSR stream."""
    rng = random.Random(seed)
    program = list(irg_program(rng, 1500))
    script = [set_mode(TagCheckMode.SYNC, 0xFFFF)]
    script += [f"irg {0x1000:#x} 0" for _ in range(RECOVERY_IRGS)]
    for kind, a, b in program:
        script.append(set_mode(TagCheckMode.SYNC, a) if kind == "prctl" else f"irg {a:#x} {b:#x}")
    replies = qemu.run(script, seed=seed)
    observed = [reply.value >> 56 & 0xF for reply in replies[1 : 1 + RECOVERY_IRGS]]

    candidates = recover_lfsr(observed)
    assert len(candidates) == 1, f"LFSR states consistent with {observed}: {candidates}"
    start_tag, lfsr_seed = candidates[0]
    assert lfsr_seed != 0, "QEMU never seeds the LFSR with 0"

    state = user_state(0xFFFF)
    state.rgsr = RgsrEl1(tag=start_tag, seed=lfsr_seed)
    recovered = [irg(state, 0x1000, 0) >> 56 & 0xF for _ in range(RECOVERY_IRGS)]
    assert recovered == observed

    mismatches = []
    for (kind, a, b), reply in zip(program, replies[1 + RECOVERY_IRGS :], strict=True):
        if kind == "prctl":
            assert reply.ok, reply.text
            state.gcr = GcrEl1(exclude=~a & 0xFFFF, rrnd=True)
            continue
        model = irg(state, a, b)
        if model != reply.value:
            mismatches.append(
                f"irg {a:#x} {b:#x} exclude {state.gcr.exclude:#06x}: model {model:#x} "
                f"qemu {reply.value:#x}"
            )
            break  # the LFSRs have diverged; later steps say nothing new
    assert not mismatches, mismatch_report(mismatches, len(program))


@pytest.mark.oracle
def test_irg_never_returns_an_excluded_tag_and_gives_0_when_all_are(qemu: QemuProbe) -> None:
    """Scenario: 4000 IRGs with random exclude masks (Xm and prctl include masks) in QEMU
    and in the model (seeded like QEMU, RRND = 1): neither ever returns an excluded tag,
    both return tag 0 when all 16 are excluded, and both keep Xn's other bits."""
    rng = random.Random(7)
    cases = []
    for _ in range(4000):
        include = rng.choice([0xFFFF, 0, rng.randrange(1 << 16)])
        xm = rng.choice([0, 0xFFFF, rng.randrange(1 << 16)])
        cases.append((include, rng.randrange(1 << 64), xm))
    script: list[str] = []
    for include, xn, xm in cases:
        script += [set_mode(TagCheckMode.SYNC, include), f"irg {xn:#x} {xm:#x}"]
    replies = qemu.run(script, seed=99)[1::2]
    state = user_state()
    for (include, xn, xm), reply in zip(cases, replies, strict=True):
        state.gcr = GcrEl1(exclude=~include & 0xFFFF, rrnd=True)
        exclude = (~include | xm) & 0xFFFF
        for who, result in (("qemu", reply.value), ("model", irg(state, xn, xm))):
            tag = result >> 56 & 0xF
            assert result & ~(0xF << 56) == xn & ~(0xF << 56), f"{who} changed Xn's other bits"
            if exclude == 0xFFFF:
                assert tag == 0, f"{who}: all tags excluded but IRG gave {tag}"
            else:
                assert not exclude >> tag & 1, f"{who}: tag {tag} is excluded by {exclude:#06x}"
