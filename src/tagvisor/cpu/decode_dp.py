"""Data processing (immediate and register) to Python source.

Encodings and semantics from the Arm ARM, section C4.1.86 ("Data Processing --
Immediate") and C4.1.88 ("Data Processing -- Register"), with the instruction
pseudo-code named in comments where a detail matters. Every emitted expression keeps
results inside the register width, so a 32-bit result is already zero-extended.
"""

from __future__ import annotations

from tagvisor.cpu.alu import ADD64, LOGIC64, SUB64, WIDTH32
from tagvisor.cpu.bits import M64, ReservedEncoding, bit, decode_bit_masks, field, ones, sign_extend
from tagvisor.cpu.codegen import MASK64, Builder, mask


def _kind(op: int, sf: int) -> int:
    return op | (0 if sf else WIDTH32)


def _add_sub(
    b: Builder, sub: int, setflags: int, sf: int, a: str, operand: str, rd: int, *, sp: bool
) -> None:
    """ADD/SUB/ADDS/SUBS once both operands are expressions; ``sp``: Rd 31 is SP.

    AddWithCarry(a, NOT(b), 1) for SUB is just ``a - b`` modulo 2^N; the flags follow
    lazily from the operands (see :mod:`tagvisor.cpu.alu`). ``operand`` may be an
    immediate (decimal digits), used as a constant.
    """
    m = mask(sf)
    sign = "-" if sub else "+"
    if not setflags:
        expr = f"({a} {sign} {operand}) & {m}"
        if sp:
            b.set_sp(rd, expr)
        else:
            b.set(rd, expr)
        return
    b.emit(f"fa = {a}")
    if not operand.isdigit():
        b.emit(f"fb = {operand}")
        operand = "fb"
    b.emit(f"fr = (fa {sign} {operand}) & {m}")
    b.set(rd, "fr")
    b.set_flags(_kind(SUB64 if sub else ADD64, sf), "fa", operand, "fr")


# -- immediate ------------------------------------------------------------------------------


def dp_immediate(w: int, b: Builder) -> None:
    """Append the code of a data-processing (immediate) instruction ``w``: PC-relative, add/sub,
    ADDG/SUBG, logical, move wide, bitfield, extract."""
    kind = field(w, 23, 3)
    if kind <= 1:
        _pc_relative(w, b)
    elif kind == 2:
        _add_sub_immediate(w, b)
    elif kind == 3:
        _add_sub_tags(w, b)
    elif kind == 4:
        _logical_immediate(w, b)
    elif kind == 5:
        _move_wide(w, b)
    elif kind == 6:
        _bitfield(w, b)
    else:
        _extract(w, b)


def _pc_relative(w: int, b: Builder) -> None:
    """ADR / ADRP."""
    imm = sign_extend(field(w, 5, 19) << 2 | field(w, 29, 2), 21)
    page = bool(bit(w, 31))
    value = (((b.pc & ~0xFFF) + (imm << 12)) if page else (b.pc + imm)) & M64
    b.set(field(w, 0, 5), f"{value:#x}")


def _add_sub_immediate(w: int, b: Builder) -> None:
    sf, op, s = bit(w, 31), bit(w, 30), bit(w, 29)
    imm = field(w, 10, 12) << (12 if bit(w, 22) else 0)
    rn, rd = field(w, 5, 5), field(w, 0, 5)
    _add_sub(b, op, s, sf, b.rsp(rn, sf), str(imm), rd, sp=not s)


def _add_sub_tags(w: int, b: Builder) -> None:
    """ADDG / SUBG Xd|SP, Xn|SP, #uimm6*16, #uimm4 (FEAT_MTE)."""
    if not bit(w, 31) or bit(w, 29) or bit(w, 22) or field(w, 14, 2):
        raise ReservedEncoding("add/sub immediate with tags")
    helper = "SUBG" if bit(w, 30) else "ADDG"
    rn, rd = field(w, 5, 5), field(w, 0, 5)
    b.set_sp(rd, f"{helper}(x[{rn}], {field(w, 16, 6)}, {field(w, 10, 4)})")


def _logical_immediate(w: int, b: Builder) -> None:
    sf, opc, n = bit(w, 31), field(w, 29, 2), bit(w, 22)
    if not sf and n:
        raise ReservedEncoding("logical immediate: N = 1 in a 32-bit form")
    imm, _ = decode_bit_masks(
        n, field(w, 10, 6), field(w, 16, 6), immediate=True, datasize=32 << sf
    )
    rn, rd = field(w, 5, 5), field(w, 0, 5)
    a = b.r(rn, sf)
    if opc == 3:  # ANDS
        b.emit(f"fr = {a} & {imm:#x}")
        b.set(rd, "fr")
        b.set_flags(_kind(LOGIC64, sf), "0", "0", "fr")
        return
    if opc == 0:
        expr = f"{a} & {imm:#x}"
    elif opc == 1:
        expr = f"{imm:#x}" if rn == 31 else f"{a} | {imm:#x}"
    else:
        expr = f"{a} ^ {imm:#x}"
    b.set_sp(rd, expr)


def _move_wide(w: int, b: Builder) -> None:
    sf, opc, hw = bit(w, 31), field(w, 29, 2), field(w, 21, 2)
    if opc == 1 or (not sf and hw >= 2):
        raise ReservedEncoding("move wide")
    shift = 16 * hw
    imm = field(w, 5, 16) << shift
    rd = field(w, 0, 5)
    m = M64 if sf else ones(32)
    if opc == 0:  # MOVN
        b.set(rd, f"{~imm & m:#x}")
    elif opc == 2:  # MOVZ
        b.set(rd, f"{imm:#x}")
    else:  # MOVK keeps the other bits
        b.set(rd, f"({b.x(rd)} & {~(0xFFFF << shift) & m:#x}) | {imm:#x}")


def _bitfield(w: int, b: Builder) -> None:
    """SBFM / BFM / UBFM (and their aliases ASR, LSL, LSR, SXT*, UXT*, *BFX, *BFIZ)."""
    sf, opc, n = bit(w, 31), field(w, 29, 2), bit(w, 22)
    immr, imms = field(w, 16, 6), field(w, 10, 6)
    if opc == 3 or n != sf or (not sf and (immr >= 32 or imms >= 32)):
        raise ReservedEncoding("bitfield")
    width = 32 << sf
    m = mask(sf)
    wmask, tmask = decode_bit_masks(n, imms, immr, immediate=False, datasize=width)
    rn, rd = field(w, 5, 5), field(w, 0, 5)
    src = b.r(rn, sf)
    if opc == 2:  # UBFM: ROR(src, R) AND wmask AND tmask
        if imms >= immr:
            expr = f"({src} >> {immr}) & {ones(imms - immr + 1):#x}"
        else:
            expr = f"({src} & {ones(imms + 1):#x}) << {width - immr}"
        b.set(rd, expr)
    elif opc == 0:  # SBFM: the field, then Replicate(src<S>) above it
        if imms >= immr:
            size = imms - immr + 1
            sign = 1 << (size - 1)
            expr = f"(((({src} >> {immr}) & {ones(size):#x}) ^ {sign:#x}) - {sign:#x}) & {m}"
        else:
            sign = 1 << imms
            expr = (
                f"(((({src} & {ones(imms + 1):#x}) ^ {sign:#x}) - {sign:#x}) "
                f"<< {width - immr}) & {m}"
            )
        b.set(rd, expr)
    else:  # BFM: bits outside wmask AND tmask keep the destination's value
        keep = ~(wmask & tmask) & ones(width)
        insert = wmask & tmask
        rot = src if immr == 0 else f"((({src} >> {immr}) | ({src} << {width - immr})) & {m})"
        b.set(rd, f"({b.r(rd, sf)} & {keep:#x}) | ({rot} & {insert:#x})")


def _extract(w: int, b: Builder) -> None:
    """EXTR (and ROR immediate)."""
    sf, n = bit(w, 31), bit(w, 22)
    lsb = field(w, 10, 6)
    if field(w, 29, 2) or bit(w, 21) or n != sf or (not sf and lsb >= 32):
        raise ReservedEncoding("extract")
    width = 32 << sf
    rm, rn, rd = field(w, 16, 5), field(w, 5, 5), field(w, 0, 5)
    if lsb == 0:
        b.set(rd, b.r(rm, sf))
        return
    b.set(rd, f"(({b.r(rn, sf)} << {width - lsb}) | ({b.r(rm, sf)} >> {lsb})) & {mask(sf)}")


# -- register -------------------------------------------------------------------------------


def dp_register(w: int, b: Builder) -> None:
    """Append the code of a data-processing (register) instruction ``w`` (ReservedEncoding if
    UNDEFINED here)."""
    op1, op2 = bit(w, 28), field(w, 21, 4)
    if not op1:
        if not op2 & 8:
            _logical_shifted(w, b)
        elif not op2 & 1:
            _add_sub_shifted(w, b)
        else:
            _add_sub_extended(w, b)
        return
    if op2 == 0:
        if field(w, 10, 6):
            raise ReservedEncoding("RMIF / SETF (FEAT_FlagM) are not implemented")
        _add_sub_carry(w, b)
    elif op2 == 2:
        _conditional_compare(w, b)
    elif op2 == 4:
        _conditional_select(w, b)
    elif op2 == 6:
        if bit(w, 30):
            _one_source(w, b)
        else:
            _two_source(w, b)
    elif op2 & 8:
        _three_source(w, b)
    else:
        raise ReservedEncoding("data processing (register)")


def shifted(b: Builder, rm: int, sf: int, kind: int, amount: int) -> str:
    """ShiftReg(Rm, shift_type, amount) as an expression within the register width."""
    v = b.r(rm, sf)
    if amount == 0 or rm == 31:
        return v
    width = 32 << sf
    m = mask(sf)
    if kind == 0:
        return f"(({v} << {amount}) & {m})"
    if kind == 1:
        return f"({v} >> {amount})"
    if kind == 2:
        sign = f"{1 << (width - 1):#x}"
        return f"(((({v} ^ {sign}) - {sign}) >> {amount}) & {m})"
    return f"((({v} >> {amount}) | ({v} << {width - amount})) & {m})"


def _logical_shifted(w: int, b: Builder) -> None:
    sf, opc, kind, invert = bit(w, 31), field(w, 29, 2), field(w, 22, 2), bit(w, 21)
    amount = field(w, 10, 6)
    if not sf and amount >= 32:
        raise ReservedEncoding("logical shifted register")
    rm, rn, rd = field(w, 16, 5), field(w, 5, 5), field(w, 0, 5)
    operand = shifted(b, rm, sf, kind, amount)
    if invert:
        operand = f"(~{operand} & {mask(sf)})"
    a = b.r(rn, sf)
    if opc == 3:  # ANDS / BICS
        b.emit(f"fr = {a} & {operand}")
        b.set(rd, "fr")
        b.set_flags(_kind(LOGIC64, sf), "0", "0", "fr")
        return
    if opc == 1 and rn == 31:  # MOV / MVN
        b.set(rd, operand)
        return
    b.set(rd, f"{a} {'&|^'[opc]} {operand}")


def _add_sub_shifted(w: int, b: Builder) -> None:
    sf, op, s, kind = bit(w, 31), bit(w, 30), bit(w, 29), field(w, 22, 2)
    amount = field(w, 10, 6)
    if kind == 3 or (not sf and amount >= 32):
        raise ReservedEncoding("add/sub shifted register")
    rm, rn, rd = field(w, 16, 5), field(w, 5, 5), field(w, 0, 5)
    _add_sub(b, op, s, sf, b.r(rn, sf), shifted(b, rm, sf, kind, amount), rd, sp=False)


def extended(v: str, option: int) -> str:
    """ExtendReg without the shift: UXTB/H/W/X, SXTB/H/W/X (Arm ARM ExtendReg)."""
    size = 8 << (option & 3)
    if size == 64:
        return v
    if option & 4:
        sign = 1 << (size - 1)
        return f"((({v} & {ones(size):#x}) ^ {sign:#x}) - {sign:#x})"
    return f"({v} & {ones(size):#x})"


def _add_sub_extended(w: int, b: Builder) -> None:
    sf, op, s = bit(w, 31), bit(w, 30), bit(w, 29)
    shift = field(w, 10, 3)
    if field(w, 22, 2) or shift > 4:
        raise ReservedEncoding("add/sub extended register")
    rm, rn, rd = field(w, 16, 5), field(w, 5, 5), field(w, 0, 5)
    operand = extended(b.x(rm), field(w, 13, 3))
    operand = f"(({operand} << {shift}) & {mask(sf)})" if shift else f"({operand} & {mask(sf)})"
    _add_sub(b, op, s, sf, b.rsp(rn, sf), operand, rd, sp=not s)


def _add_sub_carry(w: int, b: Builder) -> None:
    """ADC / ADCS / SBC / SBCS: AddWithCarry with PSTATE.C."""
    sf, op, s = bit(w, 31), bit(w, 30), bit(w, 29)
    rm, rn, rd = field(w, 16, 5), field(w, 5, 5), field(w, 0, 5)
    width = 32 << sf
    operand = f"(~{b.r(rm, sf)} & {mask(sf)})" if op else b.r(rm, sf)
    if s:
        b.emit(f"fr, C.flags = ADC({b.r(rn, sf)}, {operand}, CARRY(C.flags), {width})")
        b.set(rd, "fr")
        b.flags_unknown()
    else:
        b.set(rd, f"({b.r(rn, sf)} + {operand} + CARRY(C.flags)) & {mask(sf)}")


def _conditional_compare(w: int, b: Builder) -> None:
    """CCMP / CCMN (register and immediate)."""
    sf, op = bit(w, 31), bit(w, 30)
    if not bit(w, 29) or bit(w, 10) or bit(w, 4):
        raise ReservedEncoding("conditional compare")
    rn = field(w, 5, 5)
    operand = str(field(w, 16, 5)) if bit(w, 11) else b.r(field(w, 16, 5), sf)
    cond = b.cond(field(w, 12, 4))
    sign = "-" if op else "+"
    kind = _kind(SUB64 if op else ADD64, sf)
    b.emit(f"if {cond}:")
    b.emit(f"    fa = {b.r(rn, sf)}; fb = {operand}; fr = (fa {sign} fb) & {mask(sf)}")
    b.emit(f"    C.flags = ({kind}, fa, fb, fr)")
    b.emit("else:")
    b.emit(f"    C.flags = (0, {field(w, 0, 4)}, 0, 0)")
    b.flags_unknown()


def _conditional_select(w: int, b: Builder) -> None:
    """CSEL / CSINC / CSINV / CSNEG (and CSET, CINC, CNEG ...)."""
    sf, op, op2 = bit(w, 31), bit(w, 30), field(w, 10, 2)
    if bit(w, 29) or op2 > 1:
        raise ReservedEncoding("conditional select")
    rm, rn, rd = field(w, 16, 5), field(w, 5, 5), field(w, 0, 5)
    m = mask(sf)
    v = b.r(rm, sf)
    alt = [[v, f"({v} + 1) & {m}"], [f"~{v} & {m}", f"-{v} & {m}"]][op][op2]
    b.set(rd, f"{b.r(rn, sf)} if {b.cond(field(w, 12, 4))} else {alt}")


def _three_source(w: int, b: Builder) -> None:
    """MADD, MSUB, SMADDL, SMSUBL, UMADDL, UMSUBL, SMULH, UMULH."""
    sf, op31, o0 = bit(w, 31), field(w, 21, 3), bit(w, 15)
    if field(w, 29, 2):
        raise ReservedEncoding("data processing (3 source)")
    rm, ra, rn, rd = field(w, 16, 5), field(w, 10, 5), field(w, 5, 5), field(w, 0, 5)
    sign = "-" if o0 else "+"
    if op31 == 0:
        m = mask(sf)
        b.set(rd, f"({b.r(ra, sf)} {sign} {b.r(rn, sf)} * {b.r(rm, sf)}) & {m}")
        return
    if not sf:
        raise ReservedEncoding("long multiply needs sf = 1")
    if op31 in (1, 5):
        if op31 == 1:
            n, mm = extended(b.w(rn), 6), extended(b.w(rm), 6)
        else:
            n, mm = b.w(rn), b.w(rm)
        b.set(rd, f"({b.x(ra)} {sign} {n} * {mm}) & {MASK64}")
    elif op31 == 2 and not o0:
        b.set(rd, f"SMULH({b.x(rn)}, {b.x(rm)})")
    elif op31 == 6 and not o0:
        b.set(rd, f"({b.x(rn)} * {b.x(rm)}) >> 64")
    else:
        raise ReservedEncoding("data processing (3 source)")


def _sx56(v: str) -> str:
    return f"((({v} & 0xFFFFFFFFFFFFFF) ^ 0x80000000000000) - 0x80000000000000)"


def _two_source(w: int, b: Builder) -> None:
    sf, s, opcode = bit(w, 31), bit(w, 29), field(w, 10, 6)
    rm, rn, rd = field(w, 16, 5), field(w, 5, 5), field(w, 0, 5)
    width = 32 << sf
    m = mask(sf)
    if s and not (sf and opcode == 0):
        raise ReservedEncoding("data processing (2 source)")
    a, v = b.r(rn, sf), b.r(rm, sf)
    if opcode == 2:
        b.set(rd, f"({a} // {v}) if {v} else 0")
    elif opcode == 3:
        b.set(rd, f"SDIV({a}, {v}, {width})")
    elif opcode == 8:
        b.set(rd, f"({a} << ({v} & {width - 1})) & {m}")
    elif opcode == 9:
        b.set(rd, f"{a} >> ({v} & {width - 1})")
    elif opcode == 10:
        sign = f"{1 << (width - 1):#x}"
        b.set(rd, f"((({a} ^ {sign}) - {sign}) >> ({v} & {width - 1})) & {m}")
    elif opcode == 11:
        b.set(rd, f"ROR({a}, {v} & {width - 1}, {width})")
    elif sf and opcode == 0:  # SUBP / SUBPS Xd, Xn|SP, Xm|SP
        if s:
            b.emit(f"fa = {_sx56(f'x[{rn}]')} & {MASK64}")
            b.emit(f"fb = {_sx56(f'x[{rm}]')} & {MASK64}")
            b.emit(f"fr = (fa - fb) & {MASK64}")
            b.set(rd, "fr")
            b.set_flags(SUB64, "fa", "fb", "fr")
        else:
            b.set(rd, f"({_sx56(f'x[{rn}]')} - {_sx56(f'x[{rm}]')}) & {MASK64}")
    elif sf and opcode == 4:  # IRG Xd|SP, Xn|SP, Xm
        b.set_sp(rd, f"IRG(x[{rn}], {b.x(rm)})")
    elif sf and opcode == 5:  # GMI Xd, Xn|SP, Xm
        b.set(rd, f"GMI(x[{rn}], {b.x(rm)})")
    else:
        raise ReservedEncoding("data processing (2 source)")


def _one_source(w: int, b: Builder) -> None:
    sf, opcode = bit(w, 31), field(w, 10, 6)
    if bit(w, 29) or field(w, 16, 5):
        raise ReservedEncoding("data processing (1 source)")
    rn, rd = field(w, 5, 5), field(w, 0, 5)
    width = 32 << sf
    a = b.r(rn, sf)
    if opcode == 0:
        b.set(rd, f"RBIT({a}, {width})")
    elif opcode == 1:
        b.set(rd, f"REV({a}, {width}, 16)")
    elif opcode == 2:
        b.set(rd, f"REV({a}, {width}, 32)")
    elif opcode == 3 and sf:
        b.set(rd, f"REV({a}, 64, 64)")
    elif opcode == 4:
        b.set(rd, f"{width} - ({a}).bit_length()")
    elif opcode == 5:
        b.set(rd, f"CLS({a}, {width})")
    else:
        raise ReservedEncoding("data processing (1 source)")
