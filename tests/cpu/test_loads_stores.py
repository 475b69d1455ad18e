"""Loads and stores: every addressing mode, sizes, sign extension, pairs, exclusives,
load-acquire/store-release and LSE atomics (MMU off: RAM is Device, so aligned)."""

from __future__ import annotations

import struct

from tests.cpu.conftest import DATA, CpuMachine

M64 = (1 << 64) - 1


def test_unsigned_offset_loads_of_every_size_and_sign_extension(cpu: CpuMachine) -> None:
    """Scenario: LDRB/LDRH/LDR W/LDR X and LDRSB/LDRSH/LDRSW into X and W registers
    from bytes with the top bit set."""
    cpu.write(DATA, bytes.fromhex("f1f2f3f4f5f6f7f8") + bytes(8))
    cpu.go(
        f"""
        mov x0, #{DATA:#x}
        ldrb w1, [x0, #1]
        ldrh w2, [x0, #2]
        ldr w3, [x0, #4]
        ldr x4, [x0]
        ldrsb x5, [x0]
        ldrsh x6, [x0, #2]
        ldrsw x7, [x0, #4]
        ldrsb w8, [x0, #7]
        ldrsh w9, [x0, #6]
        """
    )
    assert (cpu.x(1), cpu.x(2), cpu.x(3)) == (0xF2, 0xF4F3, 0xF8F7F6F5)
    assert cpu.x(4) == 0xF8F7F6F5F4F3F2F1
    assert cpu.x(5) == 0xFFFF_FFFF_FFFF_FFF1
    assert cpu.x(6) == 0xFFFF_FFFF_FFFF_F4F3
    assert cpu.x(7) == 0xFFFF_FFFF_F8F7_F6F5
    assert cpu.x(8) == 0xFFFF_FFF8
    assert cpu.x(9) == 0xFFFF_F8F7


def test_stores_of_every_size_write_only_their_bytes(cpu: CpuMachine) -> None:
    """Scenario: STRB/STRH/STR W/STR X of 0x1122334455667788 into a 0xAA-filled area."""
    cpu.write(DATA, b"\xaa" * 32)
    cpu.go(
        f"""
        mov x0, #{DATA:#x}
        ldr x1, =0x1122334455667788
        strb w1, [x0]
        strh w1, [x0, #2]
        str w1, [x0, #4]
        str x1, [x0, #8]
        str xzr, [x0, #16]
        """
    )
    assert cpu.read(DATA, 24).hex() == "88aa8877" + "88776655" + "8877665544332211" + "00" * 8


def test_pre_and_post_index_write_back_the_base(cpu: CpuMachine) -> None:
    """Scenario: STR pre-index and post-index, LDR unscaled (LDUR) with a negative
    offset, and LDR post-index: addresses and base registers after each."""
    cpu.go(
        f"""
        mov x0, #{DATA:#x}
        mov x1, #0x11
        mov x2, #0x22
        str x1, [x0, #16]!
        str x2, [x0], #-8
        ldur x3, [x0, #8]
        ldr x4, [x0, #8]!
        ldr x5, [x0], #32
        """
    )
    assert cpu.read64(DATA + 16) == 0x22
    assert cpu.x(3) == 0x22
    assert cpu.x(4) == 0x22
    assert cpu.x(5) == 0x22
    assert cpu.x(0) == DATA + 16 + 32


def test_register_offset_with_extend_and_shift(cpu: CpuMachine) -> None:
    """Scenario: LDR with LSL #3, with SXTW of a negative index, with UXTW #2, and
    STRB with a plain register offset."""
    cpu.write64(DATA, *range(100, 116))
    cpu.go(
        f"""
        ldr x0, ={DATA + 64:#x}
        mov x1, #3
        mov w2, #-2
        ldr x3, [x0, x1, lsl #3]
        ldr x4, [x0, w2, sxtw #3]
        ldr w5, [x0, w1, uxtw #2]
        mov x6, #7
        strb w6, [x0, x6]
        """
    )
    assert cpu.x(3) == 111
    assert cpu.x(4) == 106
    assert cpu.x(5) == 0  # high word of the element at index 9 (108 | 0 << 32)
    assert cpu.read(DATA + 64 + 7, 1) == b"\x07"


def test_literal_loads(cpu: CpuMachine) -> None:
    """Scenario: LDR X and W (literal) and LDRSW (literal) from the literal pool."""
    cpu.go(
        """
        ldr x1, big
        ldr w2, word
        ldrsw x3, word
        b 1f
        .balign 8
    big: .quad 0x0123456789abcdef
    word: .word 0x80000001
    1:
        """
    )
    assert cpu.x(1) == 0x0123456789ABCDEF
    assert cpu.x(2) == 0x80000001
    assert cpu.x(3) == 0xFFFF_FFFF_8000_0001


def test_pairs_in_every_mode(cpu: CpuMachine) -> None:
    """Scenario: STP/LDP offset, pre- and post-index; 32-bit pairs; LDPSW; STNP/LDNP."""
    cpu.go(
        f"""
        mov x0, #{DATA:#x}
        mov x1, #1
        mov x2, #2
        stp x1, x2, [x0, #16]
        stp x2, x1, [x0, #32]!
        ldp x3, x4, [x0], #-16
        ldp x5, x6, [x0]
        mov w7, #-3
        stp w7, w1, [x0, #64]
        ldp w8, w9, [x0, #64]
        ldpsw x10, x11, [x0, #64]
        stnp x1, x1, [x0, #80]
        ldnp x12, x13, [x0, #80]
        """
    )
    assert (cpu.x(3), cpu.x(4)) == (2, 1)
    assert (cpu.x(5), cpu.x(6)) == (1, 2)
    assert cpu.x(0) == DATA + 16
    assert (cpu.x(8), cpu.x(9)) == (0xFFFF_FFFD, 1)
    assert (cpu.x(10), cpu.x(11)) == (-3 & M64, 1)
    assert (cpu.x(12), cpu.x(13)) == (1, 1)


def test_stack_pushes_and_pops(cpu: CpuMachine) -> None:
    """Scenario: a function prologue and epilogue on SP (STP pre-index, LDP post-index)."""
    cpu.go(
        """
        mov x29, #0x29
        mov x30, #0x30
        stp x29, x30, [sp, #-16]!
        mov x29, #0
        mov x30, #0
        mov x1, sp
        ldp x29, x30, [sp], #16
        mov x2, sp
        """
    )
    assert (cpu.x(29), cpu.x(30)) == (0x29, 0x30)
    assert cpu.x(2) - cpu.x(1) == 16
    assert cpu.read(cpu.x(1), 16) == struct.pack("<2Q", 0x29, 0x30)


def test_exclusive_pair_succeeds_and_a_second_store_fails(cpu: CpuMachine) -> None:
    """Scenario: LDXR/STXR increment (status 0); a STXR without a new LDXR fails
    (status 1, memory unchanged); CLREX clears the monitor; LDAXP/STLXP on a pair."""
    cpu.write64(DATA, 41, 0, 7, 8)
    cpu.go(
        f"""
        mov x0, #{DATA:#x}
        ldxr x1, [x0]
        add x1, x1, #1
        stxr w2, x1, [x0]
        stxr w3, x1, [x0]
        ldaxr w4, [x0]
        clrex
        stlxr w5, w4, [x0]
        add x6, x0, #16
        ldaxp x7, x8, [x6]
        stlxp w9, x8, x7, [x6]
        """
    )
    assert (cpu.x(2), cpu.x(3), cpu.x(5), cpu.x(9)) == (0, 1, 1, 0)
    assert cpu.read64(DATA) == 42
    assert (cpu.read64(DATA + 16), cpu.read64(DATA + 24)) == (8, 7)


def test_acquire_release_and_lse_atomics(cpu: CpuMachine) -> None:
    """Scenario: STLR/LDAR/LDAPR, LDADD, LDCLR, LDSET, LDEOR, LDSMAX, LDUMIN, SWP, CAS
    (match and mismatch) and CASP, each returning the old value."""
    cpu.write64(DATA, 10, 0xFF, 0, 0, 5, 6)
    cpu.go(
        f"""
        mov x0, #{DATA:#x}
        mov x1, #3
        ldadd x1, x2, [x0]
        mov x1, #0x0f
        add x3, x0, #8
        ldclr x1, x4, [x3]
        ldset x1, x5, [x3]
        ldeor x1, x6, [x3]
        mov x7, #-1
        ldsmax x7, x8, [x0]
        ldumin x7, x9, [x0]
        mov x10, #99
        swp x10, x11, [x0]
        mov x12, #99
        mov x13, #77
        cas x12, x13, [x0]
        mov x14, #1
        cas x14, x13, [x0]
        add x15, x0, #32
        mov x16, #5
        mov x17, #6
        mov x18, #50
        mov x19, #60
        casp x16, x17, x18, x19, [x15]
        mov x20, #0x1234
        add x21, x0, #16
        stlr x20, [x21]
        ldar x22, [x21]
        ldapr w23, [x21]
        """
    )
    assert cpu.x(2) == 10
    assert (cpu.x(4), cpu.x(5), cpu.x(6)) == (0xFF, 0xF0, 0xFF)
    assert cpu.read64(DATA + 8) == 0xF0
    assert (cpu.x(8), cpu.x(9)) == (13, 13)
    assert cpu.x(11) == 13
    assert (cpu.x(12), cpu.x(14)) == (99, 77)
    assert cpu.read64(DATA) == 77
    assert (cpu.x(16), cpu.x(17)) == (5, 6)
    assert (cpu.read64(DATA + 32), cpu.read64(DATA + 40)) == (50, 60)
    assert (cpu.x(22), cpu.x(23)) == (0x1234, 0x1234)


def test_unprivileged_loads_and_stores_at_el1_use_el0_permissions(cpu: CpuMachine) -> None:
    """Scenario: with the MMU off, LDTR/STTR behave as LDR/STR (EL0 may access
    everything when stage 1 is off)."""
    cpu.go(
        f"""
        mov x0, #{DATA:#x}
        mov x1, #0x55
        sttr x1, [x0, #8]
        ldtrb w2, [x0, #8]
        ldtrsh x3, [x0, #8]
        """
    )
    assert (cpu.x(2), cpu.x(3)) == (0x55, 0x55)


def test_rcpc_unscaled_and_narrow_exclusives(cpu: CpuMachine) -> None:
    """Scenario: STLUR/LDAPUR with a negative offset, LDAPURSB sign extension, and
    byte/halfword exclusives (LDXRB/STXRB, LDAXRH/STLXRH) writing only their bytes."""
    cpu.write(DATA, b"\xaa" * 16)
    cpu.go(
        f"""
        ldr x0, ={DATA + 8:#x}
        mov x1, #0x81
        stlurb w1, [x0, #-8]
        ldapur x2, [x0, #-8]
        ldapursb x3, [x0, #-8]
        add x4, x0, #2
        ldxrb w5, [x4]
        stxrb w6, w1, [x4]
        add x7, x0, #4
        ldaxrh w8, [x7]
        stlxrh w9, w1, [x7]
        """
    )
    assert cpu.x(2) == 0xAAAA_AAAA_AAAA_AA81
    assert cpu.x(3) == 0xFFFF_FFFF_FFFF_FF81
    assert (cpu.x(5), cpu.x(6), cpu.x(8), cpu.x(9)) == (0xAA, 0, 0xAAAA, 0)
    assert cpu.read(DATA + 8, 8).hex() == "aaaa81aa8100aaaa"
