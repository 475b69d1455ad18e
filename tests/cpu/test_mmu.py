"""Stage-1 translation: tables, blocks and pages, faults, TBI, TLB maintenance, memory
types (the MMU helper maps RAM at 0x4000_0000; see tests/cpu/pagetables.py)."""

from __future__ import annotations

from tagvisor.kvm.uapi import ESR_EL1, FAR_EL1, TTBR0_EL1
from tests.cpu.conftest import CODE, DATA, RAM_BASE, CpuMachine
from tests.cpu.pagetables import (
    AF,
    AP_EL0,
    AP_RO,
    DEVICE,
    NORMAL,
    PXN,
    TAGGED,
    TCR,
    TCR_TBI0,
    PageTables,
    identity_ram,
)

IL = 1 << 25
HIGH_VA = 0x20_0000_0000  # level-1 index 128 of a 39-bit space


def dabt(fsc: int, *, write: bool = False, el0: bool = False) -> int:
    return (0x24 if el0 else 0x25) << 26 | IL | fsc | (1 << 6 if write else 0)


def test_identity_block_mapping_reads_and_writes_ram(cpu: CpuMachine) -> None:
    """Scenario: RAM identity-mapped by a 1 GiB block; stores and loads go through."""
    identity_ram(cpu)
    cpu.go(f"ldr x0, ={DATA:#x}\nmov x1, #0x77\nstr x1, [x0]\nldr x2, [x0]")
    assert cpu.read64(DATA) == 0x77
    assert cpu.x(2) == 0x77


def test_pages_and_2mib_blocks_translate_to_other_physical_addresses(cpu: CpuMachine) -> None:
    """Scenario: a 4 KiB page and a 2 MiB block at high VAs map onto RAM at different
    offsets; the values the guest reads are those at the physical addresses."""
    tables = identity_ram(cpu)
    tables.map(HIGH_VA, DATA + 0x3000, 0x1000, level=3)
    tables.map(HIGH_VA + (1 << 21), RAM_BASE + (1 << 21), 1 << 21, level=2)
    cpu.write64(DATA + 0x3008, 0xAB)
    cpu.write64(RAM_BASE + (1 << 21) + 0x1230, 0xCD)
    cpu.go(
        f"""
        ldr x0, ={HIGH_VA:#x}
        ldr x1, [x0, #8]
        ldr x2, ={HIGH_VA + (1 << 21) + 0x1230:#x}
        ldr x3, [x2]
        """
    )
    assert (cpu.x(1), cpu.x(3)) == (0xAB, 0xCD)


def test_translation_faults_report_the_level(cpu: CpuMachine) -> None:
    """Scenario: an unmapped level-1 entry (DFSC 0x05), a missing level-3 entry under a
    valid table (0x07), and a VA above the T0SZ range (0x04); FAR is the VA."""
    tables = identity_ram(cpu)
    tables.map(HIGH_VA, DATA, 0x1000, level=3)
    cases = [(HIGH_VA + (1 << 30), 0x05), (HIGH_VA + 0x1000, 0x07), (1 << 40, 0x04)]
    for va, fsc in cases:
        cpu.load(f"ldr x0, ={va:#x}\nldr x1, [x0]\n")
        cpu.resume()
        assert cpu.sysreg(ESR_EL1) == dabt(fsc), hex(va)
        assert cpu.sysreg(FAR_EL1) == va


def test_access_flag_and_permission_faults(cpu: CpuMachine) -> None:
    """Scenario: a page without AF faults on read (DFSC 0x0B); a read-only page reads
    but faults on write with a permission fault (0x0F, WnR set)."""
    tables = identity_ram(cpu)
    tables.map(HIGH_VA, DATA, 0x1000, extra=0)
    tables.map(HIGH_VA + 0x1000, DATA, 0x1000, extra=AF | AP_RO)
    cpu.load(f"ldr x0, ={HIGH_VA:#x}\nldr x1, [x0]\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == dabt(0x0B)
    cpu.write64(DATA, 5)
    cpu.load(f"ldr x0, ={HIGH_VA + 0x1000:#x}\nldr x1, [x0]\nstr x1, [x0, #8]\n")
    cpu.resume()
    assert cpu.x(1) == 5
    assert cpu.sysreg(ESR_EL1) == dabt(0x0F, write=True)
    assert cpu.sysreg(FAR_EL1) == HIGH_VA + 0x1008


def test_el0_cannot_touch_el1_only_memory(cpu: CpuMachine) -> None:
    """Scenario: code readable and executable at EL0 (AP = read-only for all), data
    EL1-only: an EL0 load takes a permission fault from the lower EL (EC 0x24)."""
    tables = PageTables(cpu)
    tables.map(RAM_BASE, RAM_BASE, 1 << 21, level=2, extra=AF | AP_RO | AP_EL0)
    tables.map(RAM_BASE + (1 << 21), RAM_BASE + (1 << 21), 1 << 21, level=2)
    tables.enable()
    cpu.load(
        f"""
        adr x1, user
        msr elr_el1, x1
        msr spsr_el1, xzr
        ldr x0, ={DATA:#x}
        eret
    user:
        ldr x2, [x0]
        """
    )
    cpu.resume()
    assert cpu.vector_taken() == 0x400
    assert cpu.sysreg(ESR_EL1) == dabt(0x0E, el0=True)


def test_execute_never_pages_take_an_instruction_abort(cpu: CpuMachine) -> None:
    """Scenario: a branch into a PXN page: instruction abort (EC 0x21), IFSC permission
    level 3, FAR and ELR the target."""
    tables = identity_ram(cpu)
    target = HIGH_VA + 0x2000
    tables.map(target, CODE + 0x1000, 0x1000, extra=AF | PXN)
    cpu.load(f"ldr x0, ={target:#x}\nbr x0\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == 0x21 << 26 | IL | 0x0F
    assert cpu.sysreg(FAR_EL1) == target


def test_top_byte_ignore_strips_tags_only_when_tbi0_is_set(cpu: CpuMachine) -> None:
    """Scenario: with TCR_EL1.TBI0 a pointer with 0x5A in its top byte reaches the
    same memory; with TBI0 = 0 it is outside the address range (DFSC 0x04) and FAR
    keeps the whole pointer."""
    identity_ram(cpu, attr=NORMAL, tcr=TCR | TCR_TBI0)
    cpu.write64(DATA, 0x99)
    tagged = DATA | 0x5A << 56
    cpu.go(f"ldr x0, ={tagged:#x}\nldr x1, [x0]")
    assert cpu.x(1) == 0x99
    identity_ram(cpu, attr=NORMAL, tcr=TCR)
    cpu.load(f"ldr x0, ={tagged:#x}\nldr x1, [x0]\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == dabt(0x04)
    assert cpu.sysreg(FAR_EL1) == tagged


def test_tlbi_and_ttbr_writes_make_new_tables_visible(cpu: CpuMachine) -> None:
    """Scenario: the guest reads through a page, rewrites its descriptor to another
    frame and issues TLBI VMALLE1 + DSB + ISB: the next read sees the new frame. Then a
    write to TTBR0_EL1 switches to a table where the page is absent (fault)."""
    tables = identity_ram(cpu)
    tables.map(HIGH_VA, DATA, 0x1000)
    cpu.write64(DATA, 1)
    cpu.write64(DATA + 0x1000, 2)
    # Locate the level-3 descriptor so the guest can rewrite it.
    l2 = cpu.read64(tables.root + 128 * 8) & ~0xFFF
    l3 = cpu.read64(l2) & ~0xFFF
    new_desc = cpu.read64(l3) + 0x1000
    empty = PageTables(cpu, pool=0x4018_0000)
    empty.map(RAM_BASE, RAM_BASE, 1 << 30, level=1, attr=TAGGED)
    cpu.go(
        f"""
        ldr x0, ={HIGH_VA:#x}
        ldr x1, [x0]
        ldr x2, ={l3:#x}
        ldr x3, ={new_desc:#x}
        str x3, [x2]
        dsb ishst
        tlbi vmalle1
        dsb ish
        isb
        ldr x4, [x0]
        """
    )
    assert (cpu.x(1), cpu.x(4)) == (1, 2)
    cpu.load(
        f"ldr x9, ={empty.root:#x}\nmsr ttbr0_el1, x9\nisb\nldr x0, ={HIGH_VA:#x}\nldr x1, [x0]\n"
    )
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == dabt(0x05)
    assert cpu.sysreg(TTBR0_EL1) == empty.root


def test_device_memory_faults_unaligned_accesses_normal_memory_does_not(cpu: CpuMachine) -> None:
    """Scenario: an unaligned 8-byte load with the MMU off (Device) takes an alignment
    fault (DFSC 0x21); mapped Normal, the same load, and one crossing a page boundary,
    read the bytes."""
    cpu.write(DATA, bytes(range(32)))
    cpu.write(DATA + 0xFF8, bytes(range(100, 116)))
    cpu.load(f"ldr x0, ={DATA + 3:#x}\nldr x1, [x0]\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == dabt(0x21)
    identity_ram(cpu, attr=NORMAL)
    cpu.go(f"ldr x0, ={DATA + 3:#x}\nldr x1, [x0]\nldr x2, ={DATA + 0xFFC:#x}\nldr x3, [x2]")
    assert cpu.x(1) == int.from_bytes(bytes(range(3, 11)), "little")
    assert cpu.x(3) == int.from_bytes(bytes(range(104, 112)), "little")


def test_store_across_into_an_unmapped_page_writes_nothing(cpu: CpuMachine) -> None:
    """Scenario: an 8-byte store whose second half lies in an unmapped page faults with
    FAR at the start of that page, and the first half is not written either."""
    tables = identity_ram(cpu)
    tables.map(HIGH_VA, DATA, 0x1000, attr=NORMAL)
    cpu.write(DATA + 0xFFC, b"\xee" * 4)
    cpu.load(f"ldr x0, ={HIGH_VA + 0xFFC:#x}\nmov x1, #-1\nstr x1, [x0]\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == dabt(0x07, write=True)
    assert cpu.sysreg(FAR_EL1) == HIGH_VA + 0x1000
    assert cpu.read(DATA + 0xFFC, 4) == b"\xee" * 4


def test_address_translation_instruction_fills_par(cpu: CpuMachine) -> None:
    """Scenario: AT S1E1R of a mapped page gives its PA and attributes in PAR_EL1; of an
    unmapped one, PAR_EL1.F = 1 with the fault status."""
    tables = identity_ram(cpu)
    tables.map(HIGH_VA, DATA, 0x1000, attr=DEVICE)
    cpu.go(
        f"""
        ldr x0, ={HIGH_VA + 0x123:#x}
        at s1e1r, x0
        mrs x1, par_el1
        add x0, x0, #0x1000
        at s1e1w, x0
        mrs x2, par_el1
        """
    )
    assert cpu.x(1) & 0xFFFF_FFFF_F000 == DATA
    assert cpu.x(1) & 1 == 0
    assert cpu.x(1) >> 56 == 0x00
    assert cpu.x(2) & 1 == 1
    assert (cpu.x(2) >> 1) & 0x3F == 0x07
