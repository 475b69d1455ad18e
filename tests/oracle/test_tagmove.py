"""Tag stores and loads (STG, ST2G, STZG, STZ2G, STGP, LDG, DC GVA, DC GZVA, LDGM, STGM,
STZGM) in the model against QEMU.

Both sides start from the same memory: the probe's arena (untagged, tagged and untagged
regions of 64 KiB, data and tags 0) mirrored by :class:`ArenaMemory`, with the data of
the windows under test filled with a non-zero byte so that zeroing shows. After a
sequence of tag stores, every granule of the windows is read back with LDG (with a
random Xt, so the merge into bits 59:56 is checked) and every byte with an unchecked
load, and both must equal the model's.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagvisor.arch import (
    TAG_GRANULE,
    AlignmentFault,
    MteState,
    TagCheckMode,
    UndefinedInstruction,
    tagmove,
)
from tests.oracle.model_arena import ArenaMemory
from tests.oracle.qemu_probe import (
    BUS_ADRALN,
    ILL_ILLOPN,
    REGION,
    SIGBUS,
    SIGILL,
    Arena,
    QemuProbe,
    Reply,
    set_mode,
)

FILL = 0xA5
PAGE = 4096
#: (probe offset, length) of the windows under test: the untagged-to-tagged edge, a
#: 4 KiB page edge inside tagged memory, and the tagged-to-untagged edge.
WINDOWS = [
    (REGION - 64, 64 + 512),
    (REGION + PAGE - 64, 128),
    (2 * REGION - 256, 256 + 64),
]
#: Stores that straddle each edge, tried in every run besides the generated ones.
EDGE_STORES = [
    ("stz2g", REGION - 16, 0x13, 0x13, 0, 0),
    ("st2g", REGION + PAGE - 16, 0x24, 0x35, 0, 0),
    ("stz2g", 2 * REGION - 16, 0x06, 0xF6, 0, 0),
    ("stgp", 2 * REGION - 16, 0, 0x07, 0x0123456789ABCDEF, 0xFEDCBA9876543210),
    ("stzg", 2 * REGION, 0x08, 0x08, 0, 0),
]
U64 = (1 << 64) - 1


def user_state(dczid_bs: int) -> MteState:
    return MteState.linux_user(TagCheckMode.SYNC, 0xFFFF, dczid_bs=dczid_bs)


def windows(arena: Arena) -> list[tuple[int, int]]:
    """(offset, length) of the windows, checked against the probe's layout."""
    assert arena.region == REGION
    return WINDOWS


def readback(arena: Arena, rng: random.Random) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Probe commands that read every granule's tag and every byte of the windows, and
    the (offset, address top byte, Xt) of each LDG."""
    script: list[str] = []
    ldgs: list[tuple[int, int, int]] = []
    for offset, length in windows(arena):
        script.append(f"peek {offset} {length}")
        for g in range(offset, offset + length, TAG_GRANULE):
            xt = rng.randrange(1 << 64)
            address_offset = g + rng.randrange(TAG_GRANULE)  # LDG needs no alignment
            top = rng.randrange(256)  # LDG is not tag checked: any address tag works
            ldgs.append((address_offset, top, xt))
            script.append(f"ldg {address_offset} {top} {xt:#x}")
    return script, ldgs


def compare_readback(
    arena: Arena,
    state: MteState,
    memory: ArenaMemory,
    replies: list[Reply],
    ldgs: list[tuple[int, int, int]],
) -> list[str]:
    """Differences between the probe's readback replies and the model's memory."""
    problems = []
    it = iter(replies)
    ldg_it = iter(ldgs)
    for offset, length in windows(arena):
        data = next(it).data
        model_data = memory.read_data(memory.at(offset), length)
        if data != model_data:
            diff = [i for i in range(length) if data[i] != model_data[i]]
            problems.append(
                f"data differs at offsets {[offset + i for i in diff[:8]]}...: "
                f"qemu {data[diff[0]]:#x} model {model_data[diff[0]]:#x}"
            )
        for _ in range(offset, offset + length, TAG_GRANULE):
            address_offset, top, xt = next(ldg_it)
            reply = next(it)
            model = tagmove.ldg(state, memory, arena.pointer(address_offset, top), xt)
            if reply.value != model:
                problems.append(
                    f"LDG at offset {address_offset:#x} with Xt {xt:#x}: "
                    f"qemu {reply.value:#x} model {model:#x}"
                )
    return problems


def run_model_op(
    state: MteState, memory: ArenaMemory, arena: Arena, op: tuple[str, int, int, int, int, int]
) -> AlignmentFault | None:
    name, offset, src, top, d1, d2 = op
    address = arena.pointer(offset, top)
    try:
        if name == "stgp":
            tagmove.stgp(state, memory, address, d1, d2)
        elif name in ("dcgva", "dcgzva"):
            tagmove.dc_gva(state, memory, address, zero_data=name == "dcgzva")
        else:
            tagmove.stg(
                state,
                memory,
                address,
                arena.pointer(offset, src),
                granules=2 if "2" in name else 1,
                zero_data="z" in name,
            )
    except AlignmentFault as fault:
        return fault
    return None


def probe_command(op: tuple[str, int, int, int, int, int]) -> str:
    name, offset, src, top, d1, d2 = op
    if name == "stgp":
        return f"stgp {offset} {top} {d1:#x} {d2:#x}"
    if name in ("dcgva", "dcgzva"):
        return f"{name} {offset} {top}"
    return f"{name} {offset} {src} {top}"


def check_op_reply(
    op: tuple[str, int, int, int, int, int], fault: AlignmentFault | None, reply: Reply
) -> str | None:
    """Whether QEMU's reply to a tag store agrees with the model's outcome."""
    if fault is None:
        return None if reply.ok else f"{op}: model completed, qemu {reply.text}"
    signal = reply.signal
    if signal is None:
        return f"{op}: model {fault}, qemu completed"
    if (signal.signo, signal.code, signal.address) != (SIGBUS, BUS_ADRALN, fault.address):
        return f"{op}: model {fault}, qemu {reply.text}"
    return None


tag_store_ops = st.sampled_from(["stg", "st2g", "stzg", "stz2g", "stgp"])


@st.composite
def tag_store_sequences(draw: st.DrawFn) -> list[tuple[str, int, int, int, int, int]]:
    """Tag stores at granule offsets of the two windows, now and then misaligned."""
    ops = []
    for _ in range(draw(st.integers(1, 40))):
        name = draw(tag_store_ops)
        base, length = draw(st.sampled_from(WINDOWS))
        span = 32 if "2" in name else 16
        offset = base + TAG_GRANULE * draw(st.integers(0, (length - span) // TAG_GRANULE))
        if draw(st.integers(0, 9)) == 0:
            offset += draw(st.sampled_from([1, 4, 8, 15]))
        src = draw(st.integers(0, 0xFF))
        top = draw(st.one_of(st.just(src), st.integers(0, 0xFF)))
        ops.append((name, offset, src, top, draw(st.integers(0, U64)), draw(st.integers(0, U64))))
    return ops


@pytest.mark.oracle
@settings(max_examples=40, deadline=None)
@given(tag_store_sequences(), st.randoms(use_true_random=False))
def test_tag_stores_then_ldg_and_data_match_qemu(
    qemu: QemuProbe,
    arena: Arena,
    dczid_bs: int,
    ops: list[tuple[str, int, int, int, int, int]],
    rng: random.Random,
) -> None:
    """Scenario: fixed stores straddling each edge, then a random sequence of STG /
    ST2G / STZG / STZ2G (tag from Xt, which may differ from the address's tag) and
    STGP (tag from the address, data from Xt1:Xt2) at granules of the
    untagged-to-tagged edge, a page edge inside tagged memory and the
    tagged-to-untagged edge, some misaligned. Each store completes in both or raises
    an alignment fault in both (QEMU: SIGBUS BUS_ADRALN, si_addr = the tagged
    address; model: AlignmentFault with the same address); then LDG of every granule
    (Xt's other bits kept) and the data of every byte agree. Stores to untagged pages
    drop the tag but STZG/STZ2G/STGP still write data; a misaligned one writes
    nothing.

    QEMU 8.2 changed STGP to do its data as one 16-byte store before the tag store;
    with anonymous read-write memory at EL0 no ordering is observable, so this test
    cannot tell 7.2 from the newer behaviour. QEMU 8.1 fixed LDG with allocation tag
    access disabled (it wrote the address into Xt); Linux and QEMU's linux-user
    always set SCTLR_EL1.ATA0, so that path cannot be reached from here."""
    state = user_state(dczid_bs)
    memory = ArenaMemory(arena)
    script = [set_mode(TagCheckMode.SYNC)]
    for offset, length in windows(arena):
        script.append(f"fill {offset} {length} {FILL}")
        memory.fill(offset, length, FILL)
    ops = EDGE_STORES + ops
    script += [probe_command(op) for op in ops]
    check, ldgs = readback(arena, rng)
    replies = qemu.run(script + check)
    op_replies = replies[1 + len(windows(arena)) : len(script)]
    problems = []
    for op, reply in zip(ops, op_replies, strict=True):
        problem = check_op_reply(op, run_model_op(state, memory, arena, op), reply)
        if problem:
            problems.append(problem)
    problems += compare_readback(arena, state, memory, replies[len(script) :], ldgs)
    assert not problems, "\n".join(problems[:10])


@pytest.mark.oracle
def test_dc_gva_and_gzva_tag_a_whole_dczid_block(
    qemu: QemuProbe, arena: Arena, dczid_bs: int
) -> None:
    """Scenario: DC GVA and DC GZVA at 60 addresses (aligned and unaligned, tagged and
    untagged pages) with random address tags, each followed by LDG of the block and a
    granule either side and a read of its data. The block is DCZID_EL0.BS words
    (QEMU -cpu max linux-user: BS = 7, 512 bytes) aligned down from the address; DC
    GVA sets only tags, DC GZVA also zeroes the data; neither needs alignment. The
    model's MteState gets the BS QEMU reports."""
    assert dczid_bs == 7, "QEMU's linux-user CPU has 512-byte DC ZVA blocks"
    block = 4 << dczid_bs
    rng = random.Random(5)
    r = arena.region
    state = user_state(dczid_bs)
    memory = ArenaMemory(arena)
    script = [set_mode(TagCheckMode.SYNC), f"fill 0 {3 * r} {FILL}"]
    memory.fill(0, 3 * r, FILL)
    cases = []
    for i in range(60):
        name = "dcgzva" if i % 2 else "dcgva"
        region_start = rng.choice([r, r, 2 * r - 4 * block, 0])
        offset = region_start + rng.randrange(4 * block)
        top = rng.randrange(256)
        cases.append((name, offset, top))
        script.append(f"{name} {offset} {top}")
        lo = offset - offset % block - TAG_GRANULE
        script += [f"ldg {g} 0 0" for g in range(max(lo, 0), lo + block + 2 * TAG_GRANULE, 16)]
        script.append(f"peek {max(lo, 0)} {block + 2 * TAG_GRANULE}")
    replies = iter(qemu.run(script)[2:])
    problems = []
    for name, offset, top in cases:
        op = (name, offset, 0, top, 0, 0)
        problem = check_op_reply(op, run_model_op(state, memory, arena, op), next(replies))
        if problem:
            problems.append(problem)
        lo = offset - offset % block - TAG_GRANULE
        for g in range(max(lo, 0), lo + block + 2 * TAG_GRANULE, 16):
            model = tagmove.ldg(state, memory, arena.pointer(g), 0)
            reply = next(replies)
            if reply.value != model:
                problems.append(
                    f"after {name} at {offset:#x} tag {top:#x}: LDG {g:#x} qemu "
                    f"{reply.value:#x} model {model:#x}"
                )
        data = next(replies).data
        if data != memory.read_data(memory.at(max(lo, 0)), block + 2 * TAG_GRANULE):
            problems.append(f"after {name} at {offset:#x}: data differs")
    assert not problems, "\n".join(problems[:10])


def run_bulk(name: str, state: MteState, memory: ArenaMemory, address: int) -> None:
    """The model's LDGM / STGM / STZGM (Xt = 0)."""
    if name == "ldgm":
        tagmove.ldgm(state, memory, address)
    elif name == "stgm":
        tagmove.stgm(state, memory, address, 0)
    else:
        tagmove.stzgm(state, memory, address, 0)


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["ldgm", "stgm", "stzgm"])
def test_bulk_tag_instructions_are_undefined_at_el0(
    qemu: QemuProbe, arena: Arena, dczid_bs: int, name: str
) -> None:
    """Scenario: LDGM, STGM and STZGM executed by a Linux user program, on tagged and
    untagged memory. They are EL1-only: UNDEFINED at EL0, so QEMU delivers SIGILL at
    the instruction and the model raises UndefinedInstruction. QEMU's linux-user gives
    si_code ILL_ILLOPN; a real Linux kernel reports an undefined instruction as
    ILL_ILLOPC (arch/arm64/kernel/traps.c do_el0_undef): a QEMU difference that does
    not concern the model, which only says the instruction is UNDEFINED."""
    state = user_state(dczid_bs)
    memory = ArenaMemory(arena)
    offsets = [arena.tagged, arena.tagged + 0x100, 0]
    replies = qemu.run([set_mode(TagCheckMode.SYNC)] + [f"{name} {o} 3" for o in offsets])
    for offset, reply in zip(offsets, replies[1:], strict=True):
        signal = reply.fault()
        assert (signal.signo, signal.code, signal.at_syscall) == (SIGILL, ILL_ILLOPN, False)
        address = arena.pointer(offset, 3)
        with pytest.raises(UndefinedInstruction):
            run_bulk(name, state, memory, address)
