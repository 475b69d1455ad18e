"""Integer instruction semantics held against QEMU (qemu-aarch64, user mode).

About 900 random instances of the data-processing instructions (immediate, shifted,
extended, logical with bitmask immediates, moves, bitfields, EXTR, carry arithmetic,
conditional compare and select, multiply, divide, shifts, bit and byte reversal) each
run once on random operands and a random NZCV, in one program: under qemu-aarch64 as a
Linux process and on tagvisor's A64 core at EL1. The registers and NZCV after every
instance must be equal.
"""

from __future__ import annotations

import random
import struct
import subprocess

import pytest

from tagvisor.cpu.bits import ReservedEncoding, decode_bit_masks
from tests.cpu.asm import link
from tests.cpu.conftest import CODE, HVC_DONE, CpuMachine
from tests.support.cross import QEMU_USER, require_toolchain

pytestmark = pytest.mark.oracle

M64 = (1 << 64) - 1
SPECIAL = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000,
           0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, M64 - 1, M64]  # fmt: skip
CONDS = ["eq", "ne", "cs", "cc", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al"]
RECORD = 40  # x0..x3 and NZCV, 8 bytes each


def operand(rng: random.Random) -> int:
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(SPECIAL)
    if pick < 0.5:
        return rng.getrandbits(32)
    if pick < 0.6:
        return (rng.choice(SPECIAL) + rng.randrange(-2, 3)) & M64
    return rng.getrandbits(64)


def bitmask_immediate(rng: random.Random, width: int) -> int:
    while True:
        n = rng.randrange(2) if width == 64 else 0
        try:
            value, _ = decode_bit_masks(
                n, rng.randrange(64), rng.randrange(64), immediate=True, datasize=width
            )
        except ReservedEncoding:
            continue
        return value


def instruction(rng: random.Random) -> str:
    """One random data-processing instruction writing x0/w0 from x1..x3."""
    sf = rng.randrange(2)
    r = "x" if sf else "w"
    width = 64 if sf else 32
    d, n, m, a = (f"{r}{i}" for i in range(4))
    kind = rng.randrange(16)
    shift = rng.choice(["lsl", "lsr", "asr"])
    amount = rng.randrange(width)
    cond = rng.choice(CONDS)
    if kind == 0:
        op = rng.choice(["add", "adds", "sub", "subs"])
        return f"{op} {d}, {n}, #{rng.randrange(4096)}, lsl #{rng.choice([0, 12])}"
    if kind == 1:
        op = rng.choice(["add", "adds", "sub", "subs", "cmp", "cmn", "neg", "negs"])
        if op in ("cmp", "cmn"):
            return f"{op} {n}, {m}, {shift} #{amount}"
        if op.startswith("neg"):
            return f"{op} {d}, {m}, {shift} #{amount}"
        return f"{op} {d}, {n}, {m}, {shift} #{amount}"
    if kind == 2:
        op = rng.choice(["add", "adds", "sub", "subs"])
        ext = rng.choice(["uxtb", "uxth", "uxtw", "sxtb", "sxth", "sxtw", "uxtx", "sxtx"])
        src = "x2" if sf and ext in ("uxtx", "sxtx") else "w2"
        if not sf and ext in ("uxtx", "sxtx"):
            ext = "uxtw"
        return f"{op} {d}, {n}, {src}, {ext} #{rng.randrange(5)}"
    if kind == 3:
        op = rng.choice(["and", "orr", "eor", "ands", "bic", "orn", "eon", "bics", "tst", "mvn"])
        shift = rng.choice(["lsl", "lsr", "asr", "ror"])
        if op == "tst":
            return f"tst {n}, {m}, {shift} #{amount}"
        if op == "mvn":
            return f"mvn {d}, {m}, {shift} #{amount}"
        return f"{op} {d}, {n}, {m}, {shift} #{amount}"
    if kind == 4:
        op = rng.choice(["and", "orr", "eor", "ands", "tst"])
        imm = bitmask_immediate(rng, width)
        return f"tst {n}, #{imm:#x}" if op == "tst" else f"{op} {d}, {n}, #{imm:#x}"
    if kind == 5:
        op = rng.choice(["movz", "movn", "movk"])
        return f"{op} {d}, #{rng.randrange(65536):#x}, lsl #{16 * rng.randrange(width // 16)}"
    if kind == 6:
        op = rng.choice(["sbfm", "ubfm", "bfm"])
        return f"{op} {d}, {n}, #{rng.randrange(width)}, #{rng.randrange(width)}"
    if kind == 7:
        return f"extr {d}, {n}, {m}, #{rng.randrange(width)}"
    if kind == 8:
        return f"{rng.choice(['adc', 'adcs', 'sbc', 'sbcs', 'ngc', 'ngcs'])} {d}, {n}, {m}".replace(
            f"ngc {d}, {n}", f"ngc {d}"
        ).replace(f"ngcs {d}, {n}", f"ngcs {d}")
    if kind == 9:
        op = rng.choice(["ccmp", "ccmn"])
        other = f"#{rng.randrange(32)}" if rng.randrange(2) else m
        return f"{op} {n}, {other}, #{rng.randrange(16)}, {cond}"
    if kind == 10:
        op = rng.choice(["csel", "csinc", "csinv", "csneg"])
        return f"{op} {d}, {n}, {m}, {cond}"
    if kind == 11:
        if sf and rng.randrange(2):
            op = rng.choice(["smaddl", "umaddl", "smsubl", "umsubl"])
            return f"{op} x0, w1, w2, x3"
        if sf and rng.randrange(2):
            return f"{rng.choice(['smulh', 'umulh'])} x0, x1, x2"
        return f"{rng.choice(['madd', 'msub'])} {d}, {n}, {m}, {a}"
    if kind == 12:
        return f"{rng.choice(['udiv', 'sdiv'])} {d}, {n}, {m}"
    if kind == 13:
        return f"{rng.choice(['lslv', 'lsrv', 'asrv', 'rorv'])} {d}, {n}, {m}"
    if kind == 14:
        ops = ["rbit", "rev", "rev16", "clz", "cls"] + (["rev32"] if sf else [])
        return f"{rng.choice(ops)} {d}, {n}"
    return f"{rng.choice(['cset', 'csetm'])} {d}, {cond}" if cond != "al" else f"mov {d}, {n}"


def program(cases: list[tuple[str, list[int], int]], tail: str) -> str:
    lines = ["adr x20, inputs", "adr x21, outputs"]
    for insn, _, _ in cases:
        lines += [
            "ldp x0, x1, [x20]",
            "ldp x2, x3, [x20, #16]",
            "ldr x9, [x20, #32]",
            "msr nzcv, x9",
            insn,
            "mrs x9, nzcv",
            "stp x0, x1, [x21]",
            "stp x2, x3, [x21, #16]",
            "str x9, [x21, #32]",
            "add x20, x20, #40",
            "add x21, x21, #40",
        ]
    lines.append(tail)
    lines.append(".data\n.balign 16\ninputs:")
    for _, values, nzcv in cases:
        lines.append(".quad " + ", ".join(f"{v:#x}" for v in [*values, nzcv << 28]))
    lines.append(f"outputs:\n.skip {RECORD * len(cases)}")
    return "\n".join(lines)


def test_integer_instructions_match_qemu(cpu: CpuMachine) -> None:
    """Scenario: ~900 random data-processing instructions on random operands and NZCV:
    X0-X3 and NZCV after each are what qemu-aarch64 computes."""
    require_toolchain()
    rng = random.Random(20240607)
    cases = [
        (instruction(rng), [operand(rng) for _ in range(4)], rng.randrange(16)) for _ in range(900)
    ]
    size = RECORD * len(cases)
    linux_tail = (
        f"mov x0, #1\nsub x1, x21, #{size % 4096}\nsub x1, x1, #{size // 4096}, lsl #12\n"
        f"ldr x2, ={size}\nmov x8, #64\nsvc #0\nmov x0, #0\nmov x8, #93\nsvc #0"
    )
    elf = link(program(cases, linux_tail), 0x40_0000)
    done = subprocess.run(
        [QEMU_USER, "-cpu", "max", str(elf)], capture_output=True, timeout=120, check=True
    )
    assert len(done.stdout) == size
    cpu.load(program(cases, HVC_DONE))
    cpu.resume()
    out = cpu.x(21) - size
    for index, (insn, values, nzcv) in enumerate(cases):
        want = struct.unpack_from("<5Q", done.stdout, RECORD * index)
        got = struct.unpack("<5Q", cpu.read(out + RECORD * index, RECORD))
        assert got == want, (insn, [hex(v) for v in values], bin(nzcv), want, got)
    assert out >= CODE
