"""The MTE instructions and tag checks through the CPU, held against tagvisor.arch."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tagvisor.arch import FlatTaggedMemory, MteState, TagCheckFault, check_access, taggen, with_tag
from tagvisor.arch.sysregs import GcrEl1, RgsrEl1, SctlrMte, TagCheckMode, TcrMte
from tagvisor.kvm.uapi import ESR_EL1, FAR_EL1, GCR_EL1, RGSR_EL1, SCTLR_EL1, TCR_EL1, TFSR_EL1
from tests.cpu.asm import assemble
from tests.cpu.conftest import DATA, VECTORS, CpuMachine, MachineFactory
from tests.cpu.pagetables import (
    NORMAL,
    SCTLR_ATA,
    SCTLR_TCF_ASYMM,
    SCTLR_TCF_ASYNC,
    SCTLR_TCF_SYNC,
    TCR,
    TCR_TBI0,
    identity_ram,
)

IL = 1 << 25
TAG_CHECK_READ = 0x25 << 26 | IL | 0x11
TAG_CHECK_WRITE = TAG_CHECK_READ | 1 << 6


def mte_on(cpu: CpuMachine, tcf: int = SCTLR_TCF_SYNC, *, attr: int = 1, tcr: int = 0) -> None:
    """MMU on with RAM Normal Tagged (or ``attr``), TBI0, ATA and the given TCF."""
    identity_ram(cpu, attr=attr, sctlr=SCTLR_ATA | tcf, tcr=TCR | TCR_TBI0 | tcr)
    cpu.set_sysreg(GCR_EL1, 0)
    cpu.set_sysreg(RGSR_EL1, RgsrEl1(tag=3, seed=0xACE1).raw)
    cpu.set_sysreg(TFSR_EL1, 0)


def tags_at(cpu: CpuMachine, gpa: int, count: int) -> list[int]:
    return [int(t) for t in cpu.vm.stage2.load_tags(gpa, count)]


def set_tags(cpu: CpuMachine, gpa: int, tags: list[int]) -> None:
    cpu.vm.stage2.store_tags(gpa, np.array(tags, np.uint8))


def arch_state(cpu: CpuMachine) -> MteState:
    state = MteState(
        el=1,
        sctlr=SctlrMte.from_raw(cpu.sysreg(SCTLR_EL1)),
        tcr=TcrMte.from_raw(cpu.sysreg(TCR_EL1)),
    )
    state.gcr = GcrEl1.from_raw(cpu.sysreg(GCR_EL1))
    state.rgsr = RgsrEl1.from_raw(cpu.sysreg(RGSR_EL1))
    return state


def test_irg_follows_the_arch_lfsr_and_exclude_masks(cpu: CpuMachine) -> None:
    """Scenario: GCR_EL1 excludes tags 0 and 5, RGSR seeded; eight IRGs with a changing
    Xm exclude mask give the tags (and final RGSR_EL1) tagvisor.arch computes."""
    mte_on(cpu)
    cpu.set_sysreg(GCR_EL1, 0b10_0001)
    reference = arch_state(cpu)
    excludes = [0, 0x2, 0xF0F0, 0x8000, 0, 0x7FFE, 0x1, 0xFFFF]
    body = "\n".join(f"mov x9, #{m:#x}\nirg x{i + 1}, x0, x9" for i, m in enumerate(excludes))
    cpu.go(f"ldr x0, ={DATA:#x}\n{body}\nmrs x10, rgsr_el1")
    expected = [taggen.irg(reference, DATA, m) for m in excludes]
    assert [cpu.x(i + 1) for i in range(8)] == expected
    assert cpu.x(10) == reference.rgsr.raw
    assert cpu.sysreg(RGSR_EL1) == reference.rgsr.raw


def test_gmi_addg_subg_match_the_arch_model(cpu: CpuMachine) -> None:
    """Scenario: GMI, ADDG and SUBG (carry into the tag bits, excluded tags skipped,
    SP as base) against tagvisor.arch."""
    mte_on(cpu)
    cpu.set_sysreg(GCR_EL1, 0b1000_0000_0000_0100)
    reference = arch_state(cpu)
    ptr = with_tag(0x40FF_FFF0, 0xE)
    cpu.go(
        f"""
        ldr x0, ={ptr:#x}
        mov x1, #0x10
        gmi x2, x0, x1
        addg x3, x0, #0x3f0, #1
        subg x4, x0, #0x10, #15
        addg x5, x0, #0, #0
        mov x6, sp
        addg sp, sp, #32, #2
        mov x7, sp
        mov sp, x6
        """
    )
    assert cpu.x(2) == taggen.gmi(ptr, 0x10)
    assert cpu.x(3) == taggen.addg(reference, ptr, 0x3F, 1)
    assert cpu.x(4) == taggen.subg(reference, ptr, 1, 15)
    assert cpu.x(5) == taggen.addg(reference, ptr, 0, 0)
    assert cpu.x(7) == taggen.addg(reference, 0x4006_0000, 2, 2)


def test_tag_stores_and_ldg(cpu: CpuMachine) -> None:
    """Scenario: STG (post-index), ST2G (pre-index), STZG and STZ2G (offset) set tags
    in stage 2's storage and zero data as they should; STGP stores data and tag; LDG
    reads a granule's tag into bits 59:56 of Xt without touching the other bits."""
    mte_on(cpu)
    cpu.write(DATA, b"\xaa" * 256)
    cpu.go(
        f"""
        ldr x0, ={with_tag(DATA, 0x3):#x}
        stg x0, [x0], #16
        ldr x1, ={with_tag(DATA + 0x20, 0x4):#x}
        st2g x1, [x1, #-16]!
        ldr x2, ={with_tag(DATA + 0x40, 0x5):#x}
        stzg x2, [x2]
        stz2g x2, [x2, #32]
        ldr x3, ={with_tag(DATA + 0x80, 0x6):#x}
        mov x4, #0x1111
        mov x5, #0x2222
        stgp x4, x5, [x3]
        ldr x6, ={DATA + 0x88:#x}
        mov x7, #-1
        ldg x7, [x6]
        """
    )
    assert tags_at(cpu, DATA, 9) == [3, 4, 4, 0, 5, 0, 5, 5, 6]
    assert cpu.x(0) == with_tag(DATA + 16, 3)
    assert cpu.x(1) == with_tag(DATA + 0x10, 4)
    assert cpu.read(DATA, 0x40) == b"\xaa" * 0x40
    assert cpu.read(DATA + 0x40, 16) == bytes(16)
    assert cpu.read(DATA + 0x50, 16) == b"\xaa" * 16
    assert cpu.read(DATA + 0x60, 32) == bytes(32)
    assert cpu.read(DATA + 0x80, 16) == (0x1111).to_bytes(8, "little") + (0x2222).to_bytes(
        8, "little"
    )
    assert cpu.x(7) == with_tag((1 << 64) - 1, 6)


def test_misaligned_tag_store_is_an_alignment_fault(cpu: CpuMachine) -> None:
    """Scenario: STG to an address 8 bytes into a granule: data abort, DFSC 0x21,
    WnR set, FAR the address."""
    mte_on(cpu)
    cpu.load(f"ldr x0, ={DATA + 8:#x}\nstg x0, [x0]\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == 0x25 << 26 | IL | 0x21 | 1 << 6
    assert cpu.sysreg(FAR_EL1) == DATA + 8


def test_block_tag_instructions(cpu: CpuMachine) -> None:
    """Scenario: STGM stores 16 tags from the nibbles of Xt over a 256-byte block,
    LDGM reads them back, STZGM zeroes a 64-byte block with one tag, and DC GVA / DC
    GZVA tag a 64-byte block with the address's tag (GZVA also zeroes it)."""
    mte_on(cpu)
    cpu.write(DATA, b"\xbb" * 0x400)
    cpu.go(
        f"""
        ldr x0, ={DATA:#x}
        ldr x1, =0xfedcba9876543210
        stgm x1, [x0]
        add x2, x0, #0x48
        ldgm x3, [x2]
        add x4, x0, #0x100
        mov x5, #7
        stzgm x5, [x4]
        ldr x6, ={with_tag(DATA + 0x208, 9):#x}
        dc gva, x6
        ldr x7, ={with_tag(DATA + 0x300, 0xA):#x}
        dc gzva, x7
        """
    )
    assert tags_at(cpu, DATA, 16) == list(range(16))
    assert cpu.x(3) == 0xFEDC_BA98_7654_3210
    assert tags_at(cpu, DATA + 0x100, 5) == [7, 7, 7, 7, 0]
    assert cpu.read(DATA + 0x100, 0x48) == bytes(0x40) + b"\xbb" * 8
    assert tags_at(cpu, DATA + 0x200, 4) == [9] * 4
    assert cpu.read(DATA + 0x200, 0x40) == b"\xbb" * 0x40
    assert tags_at(cpu, DATA + 0x300, 4) == [0xA] * 4
    assert cpu.read(DATA + 0x300, 0x40) == bytes(0x40)


@pytest.mark.parametrize(
    ("insn", "offset", "far_offset", "write"),
    [
        ("ldr x1, [x0, #16]", 16, 16, False),
        ("str x1, [x0, #24]", 24, 24, True),
        ("ldp x1, x2, [x0, #8]", 8, 16, False),  # second granule: FAR is its start
        ("ldrb w1, [x0, #31]", 31, 31, False),
    ],
)
def test_sync_tag_check_fault_reaches_the_guest_vector(
    cpu: CpuMachine, insn: str, offset: int, far_offset: int, write: bool
) -> None:
    """Scenario: granule 0 tagged 0x3, granule 1 tagged 0x4; an access with pointer tag
    0x3 touching granule 1 takes a data abort to VBAR + 0x200 with DFSC 0x11, WnR for
    stores, and FAR the faulting address with the pointer tag kept (the granule start
    when the access began in a matching granule)."""
    mte_on(cpu)
    set_tags(cpu, DATA, [3, 4])
    ptr = with_tag(DATA, 3)
    cpu.load(f"ldr x0, ={ptr:#x}\nldr x1, [x0]\n{insn}\n")
    cpu.resume()
    assert cpu.vector_taken() == 0x200
    assert cpu.sysreg(ESR_EL1) == (TAG_CHECK_WRITE if write else TAG_CHECK_READ)
    assert cpu.sysreg(FAR_EL1) == ptr + far_offset
    del offset


def test_async_fault_sets_tfsr_tf0_and_the_guest_clears_it(cpu: CpuMachine) -> None:
    """Scenario: TCF async; a mismatching store completes (data written), no exception,
    TFSR_EL1.TF0 = 1 readable by MRS; MSR TFSR_EL1, XZR clears it."""
    mte_on(cpu, SCTLR_TCF_ASYNC)
    set_tags(cpu, DATA, [2])
    cpu.go(
        f"""
        ldr x0, ={with_tag(DATA, 9):#x}
        mov x1, #0x5a
        str x1, [x0]
        mrs x2, tfsr_el1
        msr tfsr_el1, xzr
        isb
        mrs x3, tfsr_el1
        str x1, [x0, #8]
        """
    )
    assert cpu.read64(DATA) == 0x5A
    assert (cpu.x(2), cpu.x(3)) == (1, 0)
    assert cpu.sysreg(TFSR_EL1) == 1


def test_asymmetric_mode_faults_loads_and_records_stores(cpu: CpuMachine) -> None:
    """Scenario: TCF asymmetric: a mismatching store sets TFSR_EL1.TF0 and completes;
    a mismatching load then faults synchronously."""
    mte_on(cpu, SCTLR_TCF_ASYMM)
    set_tags(cpu, DATA, [2])
    cpu.load(f"ldr x0, ={with_tag(DATA, 9):#x}\nstr x0, [x0]\nldr x1, [x0]\n")
    cpu.resume()
    assert cpu.sysreg(TFSR_EL1) == 1
    assert cpu.sysreg(ESR_EL1) == TAG_CHECK_READ
    assert cpu.read64(DATA) == with_tag(DATA, 9)


def test_tco_and_exception_entry_turn_checks_off(cpu: CpuMachine) -> None:
    """Scenario: with PSTATE.TCO set by MSR TCO, #1 a mismatching load succeeds; after
    MSR TCO, #0 it faults, and the handler (entered with TCO = 1) can read the same
    memory unchecked."""
    mte_on(cpu)
    set_tags(cpu, DATA, [2])
    cpu.write64(DATA, 0x77)
    handler = f"ldr x9, ={with_tag(DATA, 9):#x}\nldr x10, [x9]\nmrs x11, tco\nhvc #0x999\n"
    cpu.write(VECTORS + 0x200, assemble(handler, VECTORS + 0x200))
    cpu.core.flush_translations()
    cpu.load(
        f"""
        ldr x0, ={with_tag(DATA, 9):#x}
        msr tco, #1
        ldr x1, [x0]
        msr tco, #0
        ldr x2, [x0]
        """
    )
    cpu.resume()
    assert cpu.x(1) == 0x77
    assert cpu.sysreg(ESR_EL1) == TAG_CHECK_READ
    assert (cpu.x(10), cpu.x(11)) == (0x77, 1 << 25)


@pytest.mark.parametrize("where", ["normal_untagged", "mmu_off"])
def test_memory_that_is_not_normal_tagged_is_never_checked(cpu: CpuMachine, where: str) -> None:
    """Scenario: tags in stage 2 disagree with the pointer, but RAM is mapped Normal
    untagged (MAIR 0xFF) or the MMU is off (Device): loads and stores succeed, STG
    does not change the tags, and LDG reads tag 0."""
    if where == "mmu_off":
        cpu.set_sysreg(SCTLR_EL1, cpu.sysreg(SCTLR_EL1) | SCTLR_ATA | SCTLR_TCF_SYNC)
        cpu.set_sysreg(TCR_EL1, TCR | TCR_TBI0)
    else:
        mte_on(cpu, attr=NORMAL)
    set_tags(cpu, DATA, [2, 2])
    cpu.go(
        f"""
        ldr x0, ={with_tag(DATA, 9):#x}
        str x0, [x0]
        ldr x1, [x0]
        {"" if where == "mmu_off" else "stg x0, [x0, #16]"}
        mov x2, x0
        ldg x2, [x0]
        """
    )
    assert cpu.x(1) == with_tag(DATA, 9)
    assert tags_at(cpu, DATA, 2) == [2, 2]
    assert cpu.x(2) == with_tag(DATA, 0)


def test_tcma_makes_match_all_tags_unchecked(cpu: CpuMachine) -> None:
    """Scenario: TCR_EL1.TCMA0 set: a pointer with tag 0 (bits 59:55 all zero) is
    unchecked against a granule tagged 5; tag 1 still faults."""
    mte_on(cpu, tcr=1 << 57)
    set_tags(cpu, DATA, [5])
    cpu.go(f"ldr x0, ={DATA:#x}\nldr x1, [x0]")
    cpu.load(f"ldr x0, ={with_tag(DATA, 1):#x}\nldr x1, [x0]\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == TAG_CHECK_READ


def test_dc_zva_is_checked_and_reports_the_register_operand(cpu: CpuMachine) -> None:
    """Scenario: DC ZVA with a matching tag zeroes 64 bytes; with a mismatch in the
    third granule it faults with FAR = Xt itself (Arm ARM) and zeroes nothing."""
    mte_on(cpu)
    cpu.write(DATA, b"\xcc" * 128)
    set_tags(cpu, DATA, [6, 6, 6, 6, 6, 6, 1, 6])
    cpu.load(
        f"""
        ldr x0, ={with_tag(DATA + 0x10, 6):#x}
        dc zva, x0
        ldr x1, ={with_tag(DATA + 0x48, 6):#x}
        dc zva, x1
        """
    )
    cpu.resume()
    assert cpu.read(DATA, 64) == bytes(64)
    assert cpu.read(DATA + 64, 64) == b"\xcc" * 64
    assert cpu.sysreg(ESR_EL1) == TAG_CHECK_WRITE
    assert cpu.sysreg(FAR_EL1) == with_tag(DATA + 0x48, 6)


def test_without_vm_mte_tags_are_unreachable(make_cpu: MachineFactory) -> None:
    """Scenario: a VM without KVM_CAP_ARM_MTE (HCR_EL2.ATA = 0): ID_AA64PFR1_EL1.MTE
    reads 0, IRG gives tag 0, mismatching accesses are unchecked, and MRS GCR_EL1 is
    UNDEFINED."""
    cpu = make_cpu(mte=False)
    mte_on(cpu)
    cpu.go(
        f"""
        mrs x1, id_aa64pfr1_el1
        ldr x0, ={with_tag(DATA, 9):#x}
        irg x2, x0
        ldr x3, [x0]
        """
    )
    assert cpu.x(1) >> 8 & 0xF == 0
    assert cpu.x(2) == DATA
    cpu.load("mrs x1, gcr_el1\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == IL


def test_fast_and_slow_paths_agree_with_check_access(cpu: CpuMachine) -> None:
    """Scenario: 64 granules with random tags; the guest loads and stores (1 to 16
    bytes, some unaligned, some pairs) through random pointer tags, twice each so the
    second goes through the fast path; a handler logs each fault's FAR and skips the
    instruction. The log equals what arch.check_access says for each access."""
    rng = random.Random(5)
    mte_on(cpu)
    tags = [rng.randrange(16) for _ in range(64)]
    set_tags(cpu, DATA, tags)
    log = 0x4030_0000
    handler = """
        mrs x20, far_el1
        str x20, [x21], #8
        mrs x20, elr_el1
        add x20, x20, #4
        msr elr_el1, x20
        eret
    """
    cpu.write(VECTORS + 0x200, assemble(handler, VECTORS + 0x200))
    cpu.core.flush_translations()
    memory = FlatTaggedMemory(DATA, 64 * 16)
    memory.tags.set(0, np.array(tags, np.uint8))
    state = MteState.bare_metal_el1(TagCheckMode.SYNC)
    forms = [
        ("ldrb w1, [x0]", 1, False, 1), ("ldrh w1, [x0]", 2, False, 2),
        ("ldr w1, [x0]", 4, False, 4), ("ldr x1, [x0]", 8, False, 8),
        ("ldp x1, x2, [x0]", 16, False, 8), ("str x1, [x0]", 8, True, 8),
        ("stp x1, x2, [x0]", 16, True, 8), ("strh w1, [x0]", 2, True, 2),
    ]  # fmt: skip
    lines = [f"ldr x21, ={log:#x}"]
    expected: list[int] = []
    for _ in range(150):
        form, size, write, align = rng.choice(forms)
        offset = rng.randrange(0, 64 * 16 - size)
        if rng.random() < 0.8:
            offset -= offset % align
        ptr = with_tag(DATA + offset, rng.choice([tags[offset // 16], rng.randrange(16)]))
        lines.append(f"ldr x0, ={ptr:#x}")
        for _ in range(2):
            lines.append(form)
            try:
                check_access(state, memory, ptr, size, write=write)
            except TagCheckFault as fault:
                expected.append(fault.address)
    cpu.go("\n".join(lines))
    logged = (cpu.x(21) - log) // 8
    assert [cpu.read64(log + 8 * i) for i in range(logged)] == expected
    # Every fault flushes the fast paths (exception entry and return change PSTATE.TCO),
    # but the second of each non-faulting pair is served by them.
    literal_loads, handler_stores = 150, len(expected)
    assert cpu.core.memory.slow_accesses < 300 + literal_loads + handler_stores - 50


def test_repeated_checked_accesses_stay_on_the_fast_path(cpu: CpuMachine) -> None:
    """Scenario: 1000 iterations of a checked LDR/STR/LDP/STP loop on one granule touch
    the slow path only for the first access of each kind."""
    mte_on(cpu)
    set_tags(cpu, DATA, [7, 7])
    cpu.go(
        f"""
        ldr x0, ={with_tag(DATA, 7):#x}
        mov x3, #1000
    1:  ldr x1, [x0]
        add x1, x1, #1
        str x1, [x0]
        ldp x4, x5, [x0]
        stp x5, x4, [x0, #16]
        subs x3, x3, #1
        b.ne 1b
        """
    )
    assert cpu.read64(DATA) == 1000
    assert cpu.core.memory.slow_accesses <= 6
