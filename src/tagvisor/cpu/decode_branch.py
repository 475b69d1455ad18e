"""Branches, exception generation and system instructions to Python source.

Arm ARM C4.1.87 ("Branches, Exception Generating and System instructions"). Every
branch ends its block with ``return <next pc>``. System instructions that change
state the translated code relies on (MSR/MRS, PSTATE writes, ISB, TLBI, IC, AT, ERET,
exception-generating instructions) end the block too; DC (cache maintenance, ZVA, GVA)
and the hints, DMB and DSB do not.
"""

from __future__ import annotations

from tagvisor.cpu.bits import M64, ReservedEncoding, bit, field, sign_extend
from tagvisor.cpu.codegen import Builder
from tagvisor.cpu.sysreg import SYSREG_BASE, encoding


def branch_system(w: int, b: Builder) -> None:
    """Append the code of a branch, exception-generating or system instruction ``w``
    (ReservedEncoding if UNDEFINED here)."""
    if (w >> 26) & 0x1F == 0b00101:
        _branch_immediate(w, b)
    elif (w >> 25) & 0x3F == 0b011010:
        _compare_branch(w, b)
    elif (w >> 25) & 0x3F == 0b011011:
        _test_branch(w, b)
    elif w >> 24 == 0x54:
        _conditional_branch(w, b)
    elif w >> 24 == 0xD4:
        _exception_generation(w, b)
    elif w >> 22 == 0b1101010100:
        _system(w, b)
    elif w >> 25 == 0b1101011:
        _branch_register(w, b)
    else:
        raise ReservedEncoding("branches, exception generating and system")


def _target(b: Builder, offset: int) -> str:
    return f"{(b.pc + offset) & M64:#x}"


def _branch_immediate(w: int, b: Builder) -> None:
    """B / BL."""
    if bit(w, 31):
        b.set(30, f"{b.next_pc:#x}")
    b.end(_target(b, sign_extend(field(w, 0, 26), 26) * 4))


def _conditional_branch(w: int, b: Builder) -> None:
    """B.cond (BC.cond, FEAT_HBC, is not implemented)."""
    if bit(w, 24) or bit(w, 4):
        raise ReservedEncoding("conditional branch")
    target = _target(b, sign_extend(field(w, 5, 19), 19) * 4)
    cond = b.cond(field(w, 0, 4))
    if cond == "True":
        b.end(target)
        return
    b.emit(f"if {cond}:")
    b.emit(f"    return {target}")
    b.end(f"{b.next_pc:#x}")


def _compare_branch(w: int, b: Builder) -> None:
    """CBZ / CBNZ."""
    value = b.r(field(w, 0, 5), bit(w, 31))
    target = _target(b, sign_extend(field(w, 5, 19), 19) * 4)
    b.emit(f"if {value} {'!=' if bit(w, 24) else '=='} 0:")
    b.emit(f"    return {target}")
    b.end(f"{b.next_pc:#x}")


def _test_branch(w: int, b: Builder) -> None:
    """TBZ / TBNZ."""
    position = bit(w, 31) << 5 | field(w, 19, 5)
    target = _target(b, sign_extend(field(w, 5, 14), 14) * 4)
    test = f"({b.x(field(w, 0, 5))} >> {position}) & 1"
    b.emit(f"if {test if bit(w, 24) else f'not {test}'}:")
    b.emit(f"    return {target}")
    b.end(f"{b.next_pc:#x}")


def _branch_register(w: int, b: Builder) -> None:
    """BR, BLR, RET, ERET (the pointer-authentication forms are not implemented)."""
    opc, rn = field(w, 21, 4), field(w, 5, 5)
    if field(w, 16, 5) != 0x1F or field(w, 10, 6) or field(w, 0, 5):
        raise ReservedEncoding("branch (register)")
    if opc in (0, 2):  # BR, RET
        b.end(b.x(rn))
    elif opc == 1:  # BLR: read the target before X30 changes
        b.emit(f"t = {b.x(rn)}")
        b.set(30, f"{b.next_pc:#x}")
        b.end("t")
    elif opc == 4 and rn == 31:
        b.end("ERET()")
    else:
        raise ReservedEncoding("branch (register)")


def _exception_generation(w: int, b: Builder) -> None:
    """SVC, HVC, SMC, BRK; HLT and DCPS are UNDEFINED outside Debug state."""
    opc, imm16, op2, ll = field(w, 21, 3), field(w, 5, 16), field(w, 2, 3), field(w, 0, 2)
    if op2:
        raise ReservedEncoding("exception generation")
    if opc == 0 and ll == 1:
        b.end_raise(f"SVC({imm16})")
    elif opc == 0 and ll in (2, 3):
        # KVM handles SMC like HVC (SMCCC, arch/arm64/kvm/hypercalls.c).
        b.end_raise(f"HVC({imm16})")
    elif opc == 1 and ll == 0:
        b.end_raise(f"BRK({imm16})")
    else:
        raise ReservedEncoding("exception generation")


def _system(w: int, b: Builder) -> None:
    read, op0, op1 = bit(w, 21), field(w, 19, 2), field(w, 16, 3)
    crn, crm, op2, rt = field(w, 12, 4), field(w, 8, 4), field(w, 5, 3), field(w, 0, 5)
    if op0 == 0:
        if read or rt != 31:
            raise ReservedEncoding("system (op0 = 0)")
        if crn == 2 and op1 == 3:
            if (crm, op2) == (0, 3):  # WFI: completes at once, but lets the host idle
                b.emit("WFI()")
                b.end(f"{b.next_pc:#x}")
            return  # other hints: NOP, YIELD, WFE, SEV, BTI, PACIASP... are NOPs
        if crn == 3 and op1 == 3:
            _barrier(crm, op2, b)
            return
        if crn == 4:
            b.emit(f"MSRI({op1}, {op2}, {crm})")
            b.end(f"{b.next_pc:#x}")
            return
        raise ReservedEncoding("system (op0 = 0)")
    if op0 == 1:
        if read:
            raise ReservedEncoding("SYSL")
        b.emit(f"SYS({op1}, {crn}, {crm}, {op2}, {rt}, {b.x(rt)})")
        if crn != 7 or (op1, crm) not in ((3, 4), (3, 10), (3, 11), (3, 12), (3, 13), (3, 14)):
            b.end(f"{b.next_pc:#x}")  # TLBI, IC, AT: translation may change
        return
    reg = SYSREG_BASE | encoding(op0, op1, crn, crm, op2)
    if read:
        if rt == 31:
            b.emit(f"MRS({reg:#x}, {rt})")
        else:
            b.set(rt, f"MRS({reg:#x}, {rt})")
    else:
        b.emit(f"MSR({reg:#x}, {b.x(rt)}, {rt})")
    b.flags_unknown()
    b.end(f"{b.next_pc:#x}")


def _barrier(crm: int, op2: int, b: Builder) -> None:
    """CLREX, DSB, DMB, ISB, SB: one PE in program order needs no ordering."""
    if op2 == 2:
        b.emit("CLREX()")
    elif op2 in (4, 5, 7):
        return
    elif op2 == 6:
        b.end(f"{b.next_pc:#x}")  # ISB: context synchronisation ends the block
    else:
        raise ReservedEncoding("barrier")
