"""Integer data processing: results and NZCV, checked against the Arm ARM definitions."""

from __future__ import annotations

import pytest

from tests.cpu.conftest import CpuMachine

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


def sx(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def add_with_carry(a: int, b: int, carry: int, bits: int) -> tuple[int, int]:
    """The Arm ARM's AddWithCarry, literally: (result, NZCV)."""
    mask = (1 << bits) - 1
    unsigned_sum = (a & mask) + (b & mask) + carry
    signed_sum = sx(a, bits) + sx(b, bits) + carry
    result = unsigned_sum & mask
    n = result >> (bits - 1)
    z = int(result == 0)
    c = int(result != unsigned_sum)
    v = int(sx(result, bits) != signed_sum)
    return result, n << 3 | z << 2 | c << 1 | v


def holds(cond: int, nzcv: int) -> bool:
    """ConditionHolds, written out independently of tagvisor.cpu.alu."""
    n, z, c, v = (nzcv >> 3) & 1, (nzcv >> 2) & 1, (nzcv >> 1) & 1, nzcv & 1
    table = [
        z == 1, z == 0, c == 1, c == 0, n == 1, n == 0, v == 1, v == 0,
        c == 1 and z == 0, not (c == 1 and z == 0), n == v, n != v,
        z == 0 and n == v, not (z == 0 and n == v), True, True,
    ]  # fmt: skip
    return table[cond]


def load_regs(values: dict[int, int]) -> str:
    lines = []
    for reg, value in values.items():
        for half in range(4):
            chunk = (value >> (16 * half)) & 0xFFFF
            op = "movz" if half == 0 else "movk"
            lines.append(f"{op} x{reg}, #{chunk:#x}, lsl #{16 * half}")
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("a", "b"),
    [(0x7FFF_FFFF_FFFF_FFFF, 1), (M64, 1), (M64, M64), (0, 0), (0x8000_0000_0000_0000, M64)],
)
def test_adds_flags_follow_add_with_carry(cpu: CpuMachine, a: int, b: int) -> None:
    """Scenario: ADDS at the signed and unsigned limits (overflow, carry, zero)."""
    cpu.go(f"{load_regs({1: a, 2: b})}\nadds x0, x1, x2")
    result, nzcv = add_with_carry(a, b, 0, 64)
    assert (cpu.x(0), cpu.nzcv) == (result, nzcv)


@pytest.mark.parametrize(
    ("a", "b"),
    [(0, 1), (0x8000_0000_0000_0000, 1), (5, 5), (1, M64), (0x7FFF_FFFF_FFFF_FFFF, M64)],
)
def test_subs_flags_follow_add_with_carry_of_the_inverse(cpu: CpuMachine, a: int, b: int) -> None:
    """Scenario: SUBS with borrow, signed overflow and equal operands (C set, Z set)."""
    cpu.go(f"{load_regs({1: a, 2: b})}\nsubs x0, x1, x2")
    result, nzcv = add_with_carry(a, ~b & M64, 1, 64)
    assert (cpu.x(0), cpu.nzcv) == (result, nzcv)


def test_ands_sets_n_and_z_and_clears_c_and_v(cpu: CpuMachine) -> None:
    """Scenario: flags all set by MSR NZCV, then ANDS with a negative result, then a
    zero one: C and V end up clear, N then Z follow the results."""
    cpu.go(
        """
        mov x9, #0xf0000000
        msr nzcv, x9
        mov x1, #-1
        ands x2, x1, #0x8000000000000000
        mrs x3, nzcv
        ands x4, x1, xzr
        """
    )
    assert cpu.x(3) >> 28 == 0b1000
    assert cpu.nzcv == 0b0100
    assert cpu.x(2) == 0x8000_0000_0000_0000


@pytest.mark.parametrize(("a", "b"), [(0x7FFF_FFFF, 1), (M32, 1), (0, 1), (0x8000_0000, 1)])
def test_32_bit_flags_use_bit_31(cpu: CpuMachine, a: int, b: int) -> None:
    """Scenario: ADDS and SUBS on W registers whose X halves hold garbage."""
    cpu.go(
        f"{load_regs({1: a | 0xDEAD << 40, 2: b})}\nadds w0, w1, w2\nmrs x5, nzcv\nsubs w3, w1, w2"
    )
    assert (cpu.x(0), cpu.x(5) >> 28) == add_with_carry(a, b, 0, 32)
    assert (cpu.x(3), cpu.nzcv) == add_with_carry(a, ~b & M32, 1, 32)


@pytest.mark.parametrize("nzcv", range(16))
def test_every_condition_matches_the_truth_table(cpu: CpuMachine, nzcv: int) -> None:
    """Scenario: NZCV set with MSR, then CSET for each of the 16 conditions (generic path)."""
    names = ["eq", "ne", "cs", "cc", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le"]
    body = "\n".join(f"cset x{i}, {name}" for i, name in enumerate(names))
    cpu.go(f"mov x20, #{nzcv << 28:#x}\nmsr nzcv, x20\nisb\n{body}")
    assert [cpu.x(i) for i in range(14)] == [int(holds(c, nzcv)) for c in range(14)]


EDGE = [0, 1, 2, 0x7F, 0x80, 0x7FFF_FFFF, 0x8000_0000, M32, 0x7FFF_FFFF_FFFF_FFFF,
        0x8000_0000_0000_0000, M64 - 1, M64]  # fmt: skip


@pytest.mark.parametrize("op", ["cmp", "cmn", "tst"])
@pytest.mark.parametrize("width", [64, 32])
def test_conditions_after_a_compare_in_the_same_block(cpu: CpuMachine, op: str, width: int) -> None:
    """Scenario: CMP/CMN/TST then CSET of every condition in the same block (the
    translator's specialised conditions) over edge-case operand pairs."""
    names = ["eq", "ne", "cs", "cc", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le"]
    r = "x" if width == 64 else "w"
    data = 0x4020_0000
    pairs = [(a, b) for a in EDGE for b in EDGE[::3]]
    cpu.write64(data, *[v for pair in pairs for v in pair])
    body = "\n".join(f"cset x{i}, {name}" for i, name in enumerate(names))
    store = "\n".join(f"strb w{i}, [x22, #{i}]" for i in range(14))
    cpu.go(
        f"""
        mov x21, #0x40200000
        mov x22, #0x40300000
        mov x23, #{len(pairs)}
    1:  ldp x15, x16, [x21], #16
        {op} {r}15, {r}16
        {body}
        {store}
        add x22, x22, #16
        subs x23, x23, #1
        b.ne 1b
        """
    )
    for index, (a, b) in enumerate(pairs):
        mask = (1 << width) - 1
        if op == "cmp":
            _, nzcv = add_with_carry(a, ~b & mask, 1, width)
        elif op == "cmn":
            _, nzcv = add_with_carry(a, b, 0, width)
        else:
            result = a & b & mask
            nzcv = (result >> (width - 1)) << 3 | int(result == 0) << 2
        got = list(cpu.read(0x4030_0000 + 16 * index, 14))
        assert got == [int(holds(c, nzcv)) for c in range(14)], (hex(a), hex(b))


def test_add_sub_shifted_and_extended_register_forms(cpu: CpuMachine) -> None:
    """Scenario: ADD/SUB with LSL/LSR/ASR shifts and with UXTB/SXTH/SXTW/UXTX extends."""
    cpu.go(
        f"""
        {load_regs({1: 0x1000, 2: 0x8000_0000_0000_00F0, 3: 0xFFFF_FFFF_8000_FF80})}
        add x4, x1, x2, lsl #4
        sub x5, x1, x2, lsr #60
        add x6, x1, x2, asr #60
        add x7, x1, w3, uxtb #2
        add x8, x1, w3, sxth
        sub x9, x1, w3, sxtw #1
        add x10, x1, x3, uxtx #0
        add w11, w1, w3, lsl #1
        """
    )
    assert cpu.x(4) == (0x1000 + (0x8000_0000_0000_00F0 << 4)) & M64
    assert cpu.x(5) == 0x1000 - 8
    assert cpu.x(6) == (0x1000 - 8) & M64
    assert cpu.x(7) == 0x1000 + (0x80 << 2)
    assert cpu.x(8) == (0x1000 - 0x80) & M64
    assert cpu.x(9) == (0x1000 - 2 * sx(0x8000_FF80, 32)) & M64
    assert cpu.x(10) == (0x1000 + 0xFFFF_FFFF_8000_FF80) & M64
    assert cpu.x(11) == (0x1000 + (0x8000_FF80 << 1)) & M32


def test_stack_pointer_operands(cpu: CpuMachine) -> None:
    """Scenario: ADD/SUB immediates and extended forms use SP for register 31; the
    shifted and logical forms use XZR; CMP SP compares the stack pointer."""
    cpu.go(
        """
        mov x1, sp
        sub sp, sp, #0x40
        mov x2, sp
        add x3, sp, x1, uxtx
        orr x4, xzr, #0xff
        cmp sp, x2
        cset x5, eq
        add sp, sp, #0x40
        """
    )
    assert cpu.x(1) == 0x4006_0000
    assert cpu.x(2) == 0x4006_0000 - 0x40
    assert cpu.x(3) == (0x4006_0000 - 0x40) * 2 + 0x40
    assert (cpu.x(4), cpu.x(5)) == (0xFF, 1)
    assert cpu.vcpu.regs.core[34] == 0x4006_0000


def test_logical_immediates_and_shifted_logic(cpu: CpuMachine) -> None:
    """Scenario: bitmask immediates (replicated elements, rotations) and
    BIC/ORN/EON/ROR-shifted operands."""
    cpu.go(
        f"""
        {load_regs({1: 0x0123_4567_89AB_CDEF, 2: 0xFF00_FF00_FF00_FF00})}
        and x3, x1, #0x00ff00ff00ff00ff
        orr w4, w1, #0x3c3c3c3c
        eor x5, x1, #0xaaaaaaaaaaaaaaaa
        mov x6, #0xfffffffffffffffe
        bic x7, x1, x2
        orn x8, xzr, x2, ror #8
        eon w9, w1, w2, lsl #4
        """
    )
    v = 0x0123_4567_89AB_CDEF
    assert cpu.x(3) == v & 0x00FF_00FF_00FF_00FF
    assert cpu.x(4) == (v | 0x3C3C_3C3C) & M32
    assert cpu.x(5) == v ^ 0xAAAA_AAAA_AAAA_AAAA
    assert cpu.x(6) == 0xFFFF_FFFF_FFFF_FFFE
    assert cpu.x(7) == v & ~0xFF00_FF00_FF00_FF00 & M64
    rotated = ((0xFF00_FF00_FF00_FF00 >> 8) | (0xFF00_FF00_FF00_FF00 << 56)) & M64
    assert cpu.x(8) == ~rotated & M64
    assert cpu.x(9) == (v ^ ~((0xFF00_FF00 << 4) & M32)) & M32


def test_move_wide_and_pc_relative_addresses(cpu: CpuMachine) -> None:
    """Scenario: MOVZ/MOVN/MOVK in both widths; ADR and ADRP relative to the PC."""
    cpu.go(
        """
        movz x1, #0x1234, lsl #48
        movn x2, #0x1, lsl #16
        movn w3, #0
        mov x4, #-1
        movk x4, #0xbeef, lsl #32
        movk w5, #0xcafe, lsl #16
    here:
        adr x6, here
        adrp x7, here + 0x5000
        """
    )
    assert cpu.x(1) == 0x1234 << 48
    assert cpu.x(2) == ~(1 << 16) & M64
    assert cpu.x(3) == M32
    assert cpu.x(4) == 0xFFFF_BEEF_FFFF_FFFF
    assert cpu.x(5) == 0xCAFE_0000
    assert cpu.x(6) == 0x4008_0018
    assert cpu.x(7) == 0x4008_5000


def test_bitfield_moves_and_their_aliases(cpu: CpuMachine) -> None:
    """Scenario: LSL, LSR, ASR, UBFX, SBFX, UBFIZ, SBFIZ, BFI, BFXIL, SXTB, UXTH, SXTW."""
    v = 0x8123_4567_89AB_CDEF
    cpu.go(
        f"""
        {load_regs({1: v, 2: 0x5555_5555_5555_5555})}
        lsl x3, x1, #12
        lsr x4, x1, #60
        asr x5, x1, #56
        ubfx x6, x1, #8, #12
        sbfx x7, x1, #12, #8
        ubfiz x8, x1, #4, #8
        sbfiz x9, x1, #60, #4
        mov x10, x2
        bfi x10, x1, #8, #16
        mov x11, x2
        bfxil x11, x1, #4, #12
        sxtb x12, w1
        uxth w13, w1
        sxtw x14, w1
        asr w15, w1, #4
        """
    )
    assert cpu.x(3) == (v << 12) & M64
    assert cpu.x(4) == 8
    assert cpu.x(5) == 0xFFFF_FFFF_FFFF_FF81
    assert cpu.x(6) == (v >> 8) & 0xFFF
    assert cpu.x(7) == sx((v >> 12) & 0xFF, 8) & M64
    assert cpu.x(8) == (v & 0xFF) << 4
    assert cpu.x(9) == (sx(v & 0xF, 4) << 60) & M64
    assert cpu.x(10) == (0x5555_5555_5555_5555 & ~(0xFFFF << 8)) | ((v & 0xFFFF) << 8)
    assert cpu.x(11) == (0x5555_5555_5555_5555 & ~0xFFF) | ((v >> 4) & 0xFFF)
    assert cpu.x(12) == sx(0xEF, 8) & M64
    assert cpu.x(13) == 0xCDEF
    assert cpu.x(14) == sx(0x89AB_CDEF, 32) & M64
    assert cpu.x(15) == (sx(0x89AB_CDEF, 32) >> 4) & M32


def test_extract_and_rotate(cpu: CpuMachine) -> None:
    """Scenario: EXTR of two registers, ROR immediate (EXTR with Rn = Rm), 32-bit EXTR."""
    cpu.go(
        f"""
        {load_regs({1: 0x0011_2233_4455_6677, 2: 0x8899_AABB_CCDD_EEFF})}
        extr x3, x1, x2, #16
        ror x4, x1, #8
        extr w5, w1, w2, #4
        """
    )
    assert cpu.x(3) == 0x6677_8899_AABB_CCDD
    assert cpu.x(4) == 0x7700_1122_3344_5566
    assert cpu.x(5) == ((0x4455_6677 << 28) | (0xCCDD_EEFF >> 4)) & M32


def test_conditional_compare_and_select(cpu: CpuMachine) -> None:
    """Scenario: CCMP taken and not taken (flags from #nzcv), CCMN immediate, and
    CSEL/CSINC/CSINV/CSNEG/CINC/CNEG on both outcomes."""
    cpu.go(
        """
        mov x1, #5
        mov x2, #7
        cmp x1, #5
        ccmp x1, x2, #0b0010, eq
        mrs x3, nzcv
        cmp x1, #4
        ccmp x1, x2, #0b0110, eq
        mrs x4, nzcv
        cmp x1, x1
        ccmn x1, #5, #0, ne
        mrs x5, nzcv
        cmp x1, x2
        csel x6, x1, x2, lt
        csinc x7, x1, x2, ge
        csinv x8, x1, x2, ge
        csneg x9, x1, x2, ge
        cinc x10, x1, lt
        cneg w11, w1, lt
        """
    )
    assert cpu.x(3) >> 28 == add_with_carry(5, ~7 & M64, 1, 64)[1]
    assert cpu.x(4) >> 28 == 0b0110
    assert cpu.x(5) >> 28 == 0b0000
    assert cpu.x(6) == 5
    assert cpu.x(7) == 8
    assert cpu.x(8) == ~7 & M64
    assert cpu.x(9) == -7 & M64
    assert cpu.x(10) == 6
    assert cpu.x(11) == -5 & M32


def test_multiply_divide_and_high_halves(cpu: CpuMachine) -> None:
    """Scenario: MADD/MSUB, SMADDL/UMADDL/SMSUBL/UMSUBL, SMULH/UMULH with negative
    operands, UDIV/SDIV including divide by zero (0) and INT64_MIN / -1 (INT64_MIN)."""
    a, b = 0xFFFF_FFFF_FFFF_FFF0, 0x0000_0001_0000_0003
    cpu.go(
        f"""
        {load_regs({1: a, 2: b, 3: 100, 4: 0x8000_0000_0000_0000})}
        madd x5, x1, x2, x3
        msub x6, x1, x2, x3
        smaddl x7, w1, w2, x3
        umaddl x8, w1, w2, x3
        smsubl x9, w1, w2, x3
        umsubl x10, w1, w2, x3
        smulh x11, x1, x2
        umulh x12, x1, x2
        udiv x13, x3, xzr
        sdiv x14, x1, x2
        mov x15, #-1
        sdiv x16, x4, x15
        sdiv w17, w1, w3
        mul w18, w1, w2
        """
    )
    assert cpu.x(5) == (100 + a * b) & M64
    assert cpu.x(6) == (100 - a * b) & M64
    assert cpu.x(7) == (100 + sx(a, 32) * sx(b, 32)) & M64
    assert cpu.x(8) == (100 + (a & M32) * (b & M32)) & M64
    assert cpu.x(9) == (100 - sx(a, 32) * sx(b, 32)) & M64
    assert cpu.x(10) == (100 - (a & M32) * (b & M32)) & M64
    assert cpu.x(11) == ((sx(a, 64) * sx(b, 64)) >> 64) & M64
    assert cpu.x(12) == (a * b) >> 64
    assert cpu.x(13) == 0
    assert cpu.x(14) == 0  # -16 / 4294967299 truncates to 0
    assert cpu.x(16) == 0x8000_0000_0000_0000
    assert cpu.x(17) == int(-16 / 100) & M32
    assert cpu.x(18) == (a * b) & M32


def test_bit_and_byte_reversal_and_counting(cpu: CpuMachine) -> None:
    """Scenario: RBIT, REV, REV16, REV32, CLZ (zero and non-zero), CLS in both widths."""
    v = 0x0102_0304_0506_0780
    cpu.go(
        f"""
        {load_regs({1: v})}
        rbit x2, x1
        rev x3, x1
        rev16 x4, x1
        rev32 x5, x1
        rev w6, w1
        clz x7, x1
        clz x8, xzr
        cls x9, x1
        mov x10, #-2
        cls x11, x10
        clz w12, w1
        rbit w13, w1
        """
    )
    assert cpu.x(2) == int(f"{v:064b}"[::-1], 2)
    assert cpu.x(3) == 0x8007_0605_0403_0201
    assert cpu.x(4) == 0x0201_0403_0605_8007
    assert cpu.x(5) == 0x0403_0201_8007_0605
    assert cpu.x(6) == 0x8007_0605
    assert (cpu.x(7), cpu.x(8), cpu.x(9), cpu.x(11)) == (7, 64, 6, 62)
    assert cpu.x(12) == 5
    assert cpu.x(13) == int(f"{0x0506_0780:032b}"[::-1], 2)


def test_variable_shifts_use_the_amount_modulo_width(cpu: CpuMachine) -> None:
    """Scenario: LSLV/LSRV/ASRV/RORV with amounts above the register width."""
    v = 0x8000_0000_0000_00F1
    cpu.go(
        f"""
        {load_regs({1: v, 2: 68, 3: 36})}
        lsl x4, x1, x2
        lsr x5, x1, x2
        asr x6, x1, x2
        ror x7, x1, x2
        asr w8, w1, w3
        ror w9, w1, w3
        """
    )
    assert cpu.x(4) == (v << 4) & M64
    assert cpu.x(5) == v >> 4
    assert cpu.x(6) == (sx(v, 64) >> 4) & M64
    assert cpu.x(7) == ((v >> 4) | (v << 60)) & M64
    assert cpu.x(8) == 0xF
    assert cpu.x(9) == ((0xF1 >> 4) | (0xF1 << 28)) & M32


def test_add_and_subtract_with_carry(cpu: CpuMachine) -> None:
    """Scenario: a 128-bit addition and subtraction with ADDS/ADC and SUBS/SBC, and
    ADCS/SBCS flags."""
    cpu.go(
        f"""
        {load_regs({1: M64, 2: 1, 3: 0, 4: 5})}
        adds x5, x1, x1
        adc x6, x2, x4
        subs x7, x3, x2
        sbc x8, x4, x3
        mov x9, #0x20000000
        msr nzcv, x9
        adcs w10, w1, w2
        mrs x11, nzcv
        sbcs x12, x3, x3
        """
    )
    assert (cpu.x(5), cpu.x(6)) == ((2 * M64) & M64, 7)
    assert (cpu.x(7), cpu.x(8)) == (M64, 4)
    assert cpu.x(10) == 1
    assert cpu.x(11) >> 28 == add_with_carry(M32, 1, 1, 32)[1]
    # SBCS 0 - 0 with C = 1 from ADCS: AddWithCarry(0, ~0, 1) = 0, C set
    assert (cpu.x(12), cpu.nzcv) == add_with_carry(0, M64, 1, 64)
