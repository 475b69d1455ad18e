"""Loads and stores to Python source.

Arm ARM C4.1.89 ("Loads and Stores"): load/store register (unsigned offset, unscaled,
pre- and post-indexed, unprivileged, register offset, literal), pairs (including
LDNP/STNP, LDPSW and STGP), exclusives and load-acquire/store-release, LSE atomics,
LDAPR/LDAPUR/STLUR, and the MTE tag loads and stores. SIMD&FP registers are not
implemented (those encodings are UNDEFINED here).

Every access is a call to a memory path that may raise; register writes - the loaded
value and any base writeback - come after it, so an instruction that faults (or exits
for MMIO and is replayed) has changed no register.
"""

from __future__ import annotations

from tagvisor.cpu.bits import M64, ReservedEncoding, bit, field, ones, sign_extend
from tagvisor.cpu.codegen import MASK32, MASK64, Builder
from tagvisor.cpu.decode_dp import extended


def load_store(w: int, b: Builder) -> None:
    """Append the code of a load or store ``w``, MTE tag loads and stores included
    (ReservedEncoding if UNDEFINED here)."""
    if field(w, 24, 6) == 0b001000:
        _exclusive_ordered(w, b)
    elif w >> 24 == 0xD9 and bit(w, 21):
        _memory_tags(w, b)
    elif field(w, 24, 6) == 0b011001 and not bit(w, 21) and not field(w, 10, 2):
        _rcpc_unscaled(w, b)
    elif field(w, 27, 3) == 0b011 and not field(w, 24, 2):
        _literal(w, b)
    elif field(w, 27, 3) == 0b101:
        _pair(w, b)
    elif field(w, 27, 3) == 0b111:
        _single(w, b)
    else:
        raise ReservedEncoding("loads and stores")


# -- shared pieces ----------------------------------------------------------------------------


def _base(b: Builder, rn: int) -> str:
    """Xn|SP as a base; an SP base is checked for 16-byte alignment (SCTLR_EL1.SA/SA0)."""
    if rn == 31:
        b.emit("if x[31] & 15: SPCHK()")
    return f"x[{rn}]"


def _address(b: Builder, base: str, offset: int) -> None:
    b.emit(f"a = ({base} + {offset & M64:#x}) & {MASK64}" if offset else f"a = {base}")


def _sign_extend(expr: str, bits: int, to64: bool) -> str:
    sign = 1 << (bits - 1)
    return f"(({expr} ^ {sign:#x}) - {sign:#x}) & {MASK64 if to64 else MASK32}"


def _store_value(b: Builder, rt: int, size: int) -> str:
    if size == 8 or rt == 31:
        return b.x(rt)
    return f"x[{rt}] & {ones(8 * size):#x}"


# -- single registers -------------------------------------------------------------------------


def _single(w: int, b: Builder) -> None:
    size, opc = field(w, 30, 2), field(w, 22, 2)
    if bit(w, 26):
        raise ReservedEncoding("SIMD&FP loads and stores are not implemented")
    rn, rt = field(w, 5, 5), field(w, 0, 5)
    nbytes = 1 << size
    if bit(w, 24):  # unsigned offset, scaled
        mode, offset = "offset", field(w, 10, 12) << size
    elif not bit(w, 21):
        mode = ("unscaled", "post", "unprivileged", "pre")[field(w, 10, 2)]
        offset = sign_extend(field(w, 12, 9), 9)
    elif field(w, 10, 2) == 2:
        mode, offset = "register", 0
    elif field(w, 10, 2) == 0:
        _atomic(w, b)
        return
    else:
        raise ReservedEncoding("LDRAA/LDRAB (pointer authentication) are not implemented")
    # (size, opc): 0 store, 1 load, 2 signed load to X or PRFM, 3 signed load to W.
    if opc == 2 and size == 3:
        if mode in ("offset", "register", "unscaled"):
            return  # PRFM / PRFUM: a hint, no access, no fault
        raise ReservedEncoding("PRFM with writeback")
    if opc == 3 and size >= 2:
        raise ReservedEncoding("load/store register")
    base = _base(b, rn)
    if mode == "register":
        option, shift = field(w, 13, 3), size if bit(w, 12) else 0
        if not option & 2:
            raise ReservedEncoding("register offset extend")
        index = extended(b.x(field(w, 16, 5)), option)
        b.emit(f"a = ({base} + ({index} << {shift})) & {MASK64}")
    elif mode == "post":
        b.emit(f"a = {base}")
    else:
        _address(b, base, offset)
    if mode == "unprivileged":
        load, store = f"RU(a, {nbytes})", f"WU(a, {nbytes}, {{}})"
    else:
        load, store = f"R{nbytes}(a)", f"W{nbytes}(a, {{}})"
    writeback = None
    if mode == "post":
        writeback = f"(a + {offset & M64:#x}) & {MASK64}"
    elif mode == "pre":
        writeback = "a"
    if opc == 0:
        b.emit(store.format(_store_value(b, rt, nbytes)))
        if writeback:
            b.set_sp(rn, writeback)
        return
    if opc == 2:
        value = _sign_extend(load, 8 * nbytes, True)
    elif opc == 3:
        value = _sign_extend(load, 8 * nbytes, False)
    else:
        value = load
    if writeback:
        b.emit(f"v = {value}")
        b.set_sp(rn, writeback)
        value = "v"
    b.result(rt, value)


def _literal(w: int, b: Builder) -> None:
    """LDR (literal) W/X, LDRSW (literal), PRFM (literal)."""
    opc = field(w, 30, 2)
    if bit(w, 26):
        raise ReservedEncoding("SIMD&FP literal loads are not implemented")
    if opc == 3:
        return  # PRFM
    address = (b.pc + sign_extend(field(w, 5, 19), 19) * 4) & M64
    rt = field(w, 0, 5)
    nbytes = 8 if opc == 1 else 4
    value = f"R{nbytes}({address:#x})"
    if opc == 2:
        value = _sign_extend(value, 32, True)
    b.result(rt, value)


# -- pairs ------------------------------------------------------------------------------------


def _pair(w: int, b: Builder) -> None:
    """LDP, STP, LDNP, STNP, LDPSW, STGP."""
    opc, kind, load = field(w, 30, 2), field(w, 23, 2), bit(w, 22)
    if bit(w, 26):
        raise ReservedEncoding("SIMD&FP pairs are not implemented")
    rt2, rn, rt = field(w, 10, 5), field(w, 5, 5), field(w, 0, 5)
    imm7 = sign_extend(field(w, 15, 7), 7)
    if opc == 1 and not load:  # STGP: offsets in granules; no LDNP-style form
        if kind == 0:
            raise ReservedEncoding("STGP")
        scale = 16
    elif opc == 3 or (opc == 1 and kind == 0):
        raise ReservedEncoding("load/store pair")
    else:
        scale = 8 if opc == 2 else 4
    offset = imm7 * scale
    base = _base(b, rn)
    if kind == 1:
        b.emit(f"a = {base}")
    else:
        _address(b, base, offset)
    writeback = None
    if kind == 1:
        writeback = f"(a + {offset & M64:#x}) & {MASK64}"
    elif kind == 3:
        writeback = "a"
    if scale == 16:
        b.emit(f"STGP(a, {b.x(rt)}, {b.x(rt2)})")
    elif not load:
        b.emit(f"WP{scale}(a, {_store_value(b, rt, scale)}, {_store_value(b, rt2, scale)})")
    else:
        b.emit(f"v, u = RP{scale}(a)")
        if writeback:
            b.set_sp(rn, writeback)
            writeback = None
        if opc == 1:  # LDPSW
            b.set(rt, _sign_extend("v", 32, True))
            b.set(rt2, _sign_extend("u", 32, True))
        else:
            b.set(rt, "v")
            b.set(rt2, "u")
    if writeback:
        b.set_sp(rn, writeback)


# -- exclusives, acquire/release, atomics ---------------------------------------------------------


def _exclusive_ordered(w: int, b: Builder) -> None:
    size, o2, load, o1 = field(w, 30, 2), bit(w, 23), bit(w, 22), bit(w, 21)
    rs, rt2, rn, rt = field(w, 16, 5), field(w, 10, 5), field(w, 5, 5), field(w, 0, 5)
    nbytes = 1 << size
    base = _base(b, rn)
    b.emit(f"a = {base}")
    if not o2 and not o1:  # LDXR, LDAXR, STXR, STLXR
        if load:
            b.result(rt, f"LDX(a, {nbytes})")
        else:
            call = f"STX(a, {nbytes}, {_store_value(b, rt, nbytes)})"
            b.result(rs, call)
    elif not o2:
        if size >= 2:  # LDXP, LDAXP, STXP, STLXP
            esize = 4 if size == 2 else 8
            if load:
                b.emit(f"v, u = LDXP(a, {esize})")
                b.set(rt, "v")
                b.set(rt2, "u")
            else:
                first, second = _store_value(b, rt, esize), _store_value(b, rt2, esize)
                call = f"STXP(a, {esize}, {first}, {second})"
                b.result(rs, call)
        else:  # CASP, CASPA, CASPL, CASPAL
            if rs & 1 or rt & 1 or rt2 != 31:
                raise ReservedEncoding("CASP needs even registers")
            esize = 4 if size == 0 else 8
            values = [_store_value(b, r, esize) if r != 31 else "0" for r in (rs, rs + 1)]
            news = [_store_value(b, r, esize) if r != 31 else "0" for r in (rt, rt + 1)]
            b.emit(f"v, u = CASP(a, {esize}, ({values[0]}, {values[1]}), ({news[0]}, {news[1]}))")
            b.set(rs, "v")
            b.set(rs + 1, "u")
    elif not o1:  # LDAR, LDLAR, STLR, STLLR
        if load:
            b.result(rt, f"LDA(a, {nbytes})")
        else:
            b.emit(f"STL(a, {nbytes}, {_store_value(b, rt, nbytes)})")
    else:  # CAS, CASA, CASL, CASAL
        if rt2 != 31:
            raise ReservedEncoding("CAS")
        call = f"CAS(a, {nbytes}, {_store_value(b, rs, nbytes)}, {_store_value(b, rt, nbytes)})"
        b.result(rs, call)


def _atomic(w: int, b: Builder) -> None:
    """LDADD, LDCLR, LDEOR, LDSET, LD{S,U}{MAX,MIN}, SWP, LDAPR (FEAT_LSE, FEAT_LRCPC)."""
    size, acquire, release = field(w, 30, 2), bit(w, 23), bit(w, 22)
    rs, o3, opc = field(w, 16, 5), bit(w, 15), field(w, 12, 3)
    rn, rt = field(w, 5, 5), field(w, 0, 5)
    nbytes = 1 << size
    if o3 and opc == 4 and acquire and not release and rs == 31:  # LDAPR
        b.emit(f"a = {_base(b, rn)}")
        b.result(rt, f"LDA(a, {nbytes})")
        return
    if o3 and opc != 0:
        raise ReservedEncoding("atomic memory operation")
    op = 8 if o3 else opc
    b.emit(f"a = {_base(b, rn)}")
    call = f"RMW({op}, a, {nbytes}, {_store_value(b, rs, nbytes)})"
    b.result(rt, call)


def _rcpc_unscaled(w: int, b: Builder) -> None:
    """STLUR, LDAPUR, LDAPURS* (FEAT_LRCPC2)."""
    size, opc = field(w, 30, 2), field(w, 22, 2)
    rn, rt = field(w, 5, 5), field(w, 0, 5)
    nbytes = 1 << size
    if (opc == 2 and size == 3) or (opc == 3 and size >= 2):
        raise ReservedEncoding("LDAPUR")
    _address(b, _base(b, rn), sign_extend(field(w, 12, 9), 9))
    if opc == 0:
        b.emit(f"STL(a, {nbytes}, {_store_value(b, rt, nbytes)})")
        return
    value = f"LDA(a, {nbytes})"
    if opc >= 2:
        value = _sign_extend(value, 8 * nbytes, opc == 2)
    b.result(rt, value)


# -- MTE ------------------------------------------------------------------------------------------


def _memory_tags(w: int, b: Builder) -> None:
    """STG, STZG, ST2G, STZ2G (post, pre, offset), LDG, STGM, STZGM, LDGM."""
    opc, op2 = field(w, 22, 2), field(w, 10, 2)
    imm9 = field(w, 12, 9)
    rn, rt = field(w, 5, 5), field(w, 0, 5)
    offset = sign_extend(imm9, 9) << 4
    base = _base(b, rn)
    if op2 == 0:
        if opc == 1:  # LDG Xt, [Xn|SP, #simm]
            _address(b, base, offset)
            b.result(rt, f"LDG(a, {b.x(rt)})")
            return
        if imm9:
            raise ReservedEncoding("STZGM/STGM/LDGM with an offset")
        b.emit(f"a = {base}")
        if opc == 0:
            b.emit(f"STZGM(a, {b.x(rt)})")
        elif opc == 2:
            b.emit(f"STGM(a, {b.x(rt)})")
        else:
            b.result(rt, "LDGM(a)")
        return
    granules = 2 if opc & 2 else 1
    zero = "True" if opc & 1 else "False"
    if op2 == 1:
        b.emit(f"a = {base}")
    else:
        _address(b, base, offset)
    # The tag comes from Xt|SP: register 31 is the stack pointer here.
    b.emit(f"STG(a, x[{rt}], {granules}, {zero})")
    if op2 == 1:
        b.set_sp(rn, f"(a + {offset & M64:#x}) & {MASK64}")
    elif op2 == 3:
        b.set_sp(rn, "a")
