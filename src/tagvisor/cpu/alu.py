"""Run-time arithmetic helpers the translated blocks call, and lazy NZCV.

Flags are kept lazily as a 4-tuple ``(kind, a, b, result)`` in ``CpuState.flags``: a
flag-setting instruction stores its operands and result instead of computing N, Z, C
and V, and :func:`nzcv` works them out only when something needs the bits (an
exception entry, MRS NZCV, a condition the translator could not specialise). ``kind``
LITERAL means ``a`` already holds the 4-bit NZCV value. The C and V rules are
AddWithCarry's (Arm ARM shared/functions/integer): for ``a - b`` carry is ``a >= b``
unsigned; overflow is the sign bit of ``(a ^ b) & (a ^ result)``.
"""

from __future__ import annotations

from typing import Final

from tagvisor.cpu.bits import M32, M64

Flags = tuple[int, int, int, int]

LITERAL: Final = 0
SUB64: Final = 1
ADD64: Final = 2
LOGIC64: Final = 3
#: Bit 2 of a kind marks the 32-bit form.
WIDTH32: Final = 4
SUB32: Final = SUB64 | WIDTH32
ADD32: Final = ADD64 | WIDTH32
LOGIC32: Final = LOGIC64 | WIDTH32


def nzcv(flags: Flags) -> int:
    """The 4-bit NZCV value (N in bit 3) of a lazy flags tuple."""
    kind, a, b, r = flags
    if kind == LITERAL:
        return a
    top = 31 if kind & WIDTH32 else 63
    n = (r >> top) & 1
    z = int(r == 0)
    op = kind & 3
    if op == SUB64:
        c = int(a >= b)
        v = (((a ^ b) & (a ^ r)) >> top) & 1
    elif op == ADD64:
        c = (a + b) >> (top + 1)
        v = ((~(a ^ b) & (a ^ r)) >> top) & 1
    else:
        c = v = 0
    return n << 3 | z << 2 | c << 1 | v


def _holds(cond: int, value: int) -> bool:
    """ConditionHolds (Arm ARM shared/functions/system)."""
    n, z, c, v = value >> 3 & 1, value >> 2 & 1, value >> 1 & 1, value & 1
    base = cond >> 1
    if base == 0:
        result = z == 1
    elif base == 1:
        result = c == 1
    elif base == 2:
        result = n == 1
    elif base == 3:
        result = v == 1
    elif base == 4:
        result = c == 1 and z == 0
    elif base == 5:
        result = n == v
    elif base == 6:
        result = n == v and z == 0
    else:
        return True  # AL and NV both always hold in A64
    return not result if cond & 1 else result


#: COND_TABLE[cond][nzcv] is whether condition ``cond`` holds for flags ``nzcv``.
COND_TABLE: Final = tuple(tuple(_holds(cond, value) for value in range(16)) for cond in range(16))


def add_with_carry(a: int, b: int, carry: int, width: int) -> tuple[int, Flags]:
    """AddWithCarry for ADC(S)/SBC(S): (result, literal flags). ``b`` already inverted for SBC."""
    mask = M64 if width == 64 else M32
    top = width - 1
    unsigned_sum = a + b + carry
    result = unsigned_sum & mask
    n = (result >> top) & 1
    z = int(result == 0)
    c = int(unsigned_sum > mask)
    v = ((~(a ^ b) & (a ^ result)) >> top) & 1
    return result, (LITERAL, n << 3 | z << 2 | c << 1 | v, 0, 0)


def carry_flag(flags: Flags) -> int:
    """PSTATE.C of the lazy ``flags`` (what ADC, SBC and CARRY read)."""
    return (nzcv(flags) >> 1) & 1


def sdiv(a: int, b: int, width: int) -> int:
    """SDIV: signed division rounding towards zero; divide by zero gives 0."""
    if b == 0:
        return 0
    sign = 1 << (width - 1)
    sa = (a ^ sign) - sign
    sb = (b ^ sign) - sign
    q = abs(sa) // abs(sb)
    if (sa < 0) != (sb < 0):
        q = -q
    return q & ((1 << width) - 1)


def clz(value: int, width: int) -> int:
    """CLZ: leading zero bits of the ``width``-bit ``value``."""
    return width - value.bit_length()


def cls(value: int, width: int) -> int:
    """CountLeadingSignBits: leading bits equal to the sign bit, not counting it."""
    return clz((value >> 1) ^ (value & ((1 << (width - 1)) - 1)), width - 1)


def rbit(value: int, width: int) -> int:
    """RBIT: ``value`` with its ``width`` bits in reverse order."""
    return int(format(value, f"0{width}b")[::-1], 2)


def rev_bytes(value: int, width: int, container: int) -> int:
    """REV / REV16 / REV32: reverse the bytes inside each ``container``-bit lane."""
    out = 0
    nbytes = container // 8
    for lane in range(0, width, container):
        chunk = (value >> lane) & ((1 << container) - 1)
        swapped = int.from_bytes(chunk.to_bytes(nbytes, "little"), "big")
        out |= swapped << lane
    return out


def signed64(value: int) -> int:
    """A 64-bit register value read as two's complement."""
    return value - ((value >> 63) << 64)


def smulh(a: int, b: int) -> int:
    """SMULH: the high 64 bits of the signed 128-bit product, as a register value."""
    return ((signed64(a) * signed64(b)) >> 64) & M64
