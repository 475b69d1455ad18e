"""MRS/MSR: PSTATE fields, ID registers, the VCPU register file, the MTE registers,
and a guest that turns its own MMU and tag checks on."""

from __future__ import annotations

import struct

from tagvisor.arch import with_tag
from tagvisor.kvm.uapi import (
    CONTEXTIDR_EL1,
    CPACR_EL1,
    ESR_EL1,
    FAR_EL1,
    GCR_EL1,
    MAIR_EL1,
    RGSR_EL1,
    SCTLR_EL1,
    TFSR_EL1,
    TPIDR_EL1,
    TTBR0_EL1,
)
from tests.cpu.conftest import DATA, CpuMachine, MachineFactory

IL = 1 << 25


def test_pstate_fields_read_and_write(cpu: CpuMachine) -> None:
    """Scenario: CurrentEL, SPSel, DAIF (MSR and DAIFSet/DAIFClr), NZCV and TCO (MSR
    register and immediate) read back what was written."""
    cpu.go(
        """
        mrs x1, currentel
        mrs x2, spsel
        msr daifclr, #0xf
        msr daifset, #0x5
        mrs x3, daif
        mov x9, #0x60000000
        msr nzcv, x9
        mrs x4, nzcv
        mov x9, #0x2000000
        msr tco, x9
        mrs x5, tco
        msr tco, #0
        mrs x6, tco
        """
    )
    assert (cpu.x(1), cpu.x(2), cpu.x(3)) == (0b0100, 1, 0x5 << 6)
    assert (cpu.x(4), cpu.x(5), cpu.x(6)) == (0x6000_0000, 1 << 25, 0)
    assert cpu.nzcv == 0b0110


def test_id_registers_describe_the_modelled_cpu(make_cpu: MachineFactory) -> None:
    """Scenario: MIDR, MPIDR (0x80000000), PFR0 (AArch64 EL0/EL1, no FP/SIMD), PFR1.MTE
    (2, or 3 when the host has MTE3), ISAR0 (LSE), MMFR0 (4 KiB granule,
    40-bit PA), CTR, DCZID (64-byte blocks), GMID (BS 6), and an unallocated ID register
    (RAZ)."""
    cpu = make_cpu()
    program = """
        mrs x1, midr_el1
        mrs x2, mpidr_el1
        mrs x3, id_aa64pfr0_el1
        mrs x4, id_aa64pfr1_el1
        mrs x5, id_aa64isar0_el1
        mrs x6, id_aa64mmfr0_el1
        mrs x7, ctr_el0
        mrs x8, dczid_el0
        mrs x9, gmid_el1
        mrs x10, s3_0_c0_c4_4
        """
    cpu.go(program)
    assert cpu.x(2) == 0x8000_0000
    assert cpu.x(3) == 0x00FF_0011
    assert cpu.x(4) >> 8 & 0xF == 2
    assert (cpu.x(5) >> 20) & 0xF == 2
    assert cpu.x(6) & 0xF == 2
    assert (cpu.x(6) >> 28) & 0xF == 0
    assert (cpu.x(7) >> 16) & 0xF == 4
    assert (cpu.x(8), cpu.x(9), cpu.x(10)) == (4, 6, 0)
    mte3 = make_cpu(mte_level=3)
    mte3.go(program)
    assert mte3.x(4) >> 8 & 0xF == 3


def test_other_el1_registers_join_the_vcpu_register_file(cpu: CpuMachine) -> None:
    """Scenario: MSR TPIDR_EL1, CPACR_EL1, CONTEXTIDR_EL1 and MRS PAR_EL1 land in the
    VCPU's register file under their ONE_REG ids. PAR_EL1 reads KVM's reset value,
    0x1de7ec7edbadc0de (reset_unknown): the model VCPU now starts from Linux's
    measured register file, where it used to add PAR_EL1 at 0 on first use."""
    cpu.go(
        """
        mov x1, #0x1234
        msr tpidr_el1, x1
        mov x2, #0x300000
        msr cpacr_el1, x2
        msr contextidr_el1, x1
        mrs x3, tpidr_el1
        mrs x4, par_el1
        """
    )
    sysregs = cpu.vcpu.regs.sysregs
    assert sysregs[TPIDR_EL1] == 0x1234
    assert sysregs[CPACR_EL1] == 0x300000
    assert sysregs[CONTEXTIDR_EL1] == 0x1234
    assert (cpu.x(3), cpu.x(4)) == (0x1234, 0x1DE7EC7EDBADC0DE)


def test_unknown_and_read_only_registers_are_undefined(cpu: CpuMachine) -> None:
    """Scenario: MRS of an IMPLEMENTATION DEFINED register, MSR to MIDR_EL1 and to
    CurrentEL, and a GIC system register (no GIC is modelled): each is UNDEFINED."""
    for insn in ("mrs x1, s3_0_c15_c2_7", "msr midr_el1, x1", "msr s3_0_c4_c2_2, x1",
                 "mrs x1, icc_sre_el1"):  # fmt: skip
        cpu.load(f"{insn}\n")
        cpu.resume()
        assert cpu.sysreg(ESR_EL1) == IL, insn


def test_sp_el0_is_reachable_from_el1h_only(cpu: CpuMachine) -> None:
    """Scenario: at EL1h, MSR/MRS SP_EL0 reach the banked SP_EL0 (core[31]); after
    MSR SPSel, #0 the SP is that value and MRS SP_EL0 is UNDEFINED."""
    cpu.load(
        """
        mov x1, #0x40050000
        msr sp_el0, x1
        mrs x2, sp_el0
        msr spsel, #0
        mov x3, sp
        mrs x4, sp_el0
        """
    )
    cpu.resume()
    assert (cpu.x(2), cpu.x(3)) == (0x4005_0000, 0x4005_0000)
    assert cpu.sysreg(ESR_EL1) == IL
    assert cpu.vcpu.regs.core[31] == 0x4005_0000


def test_mte_registers_round_trip_and_reach_the_register_file(cpu: CpuMachine) -> None:
    """Scenario: MSR GCR_EL1/RGSR_EL1/TFSR_EL1, read back by MRS; after KVM_RUN returns
    the VCPU's register file holds them (KVM_GET_ONE_REG sees the guest's values)."""
    cpu.go(
        """
        ldr x1, =0x10001
        msr gcr_el1, x1
        ldr x2, =0xbeef05
        msr rgsr_el1, x2
        mov x3, #2
        msr tfsr_el1, x3
        mrs x4, gcr_el1
        mrs x5, rgsr_el1
        mrs x6, tfsr_el1
        """
    )
    assert (cpu.x(4), cpu.x(5), cpu.x(6)) == (0x10001, 0xBEEF05, 2)
    assert cpu.sysreg(GCR_EL1) == 0x10001
    assert cpu.sysreg(RGSR_EL1) == 0xBEEF05
    assert cpu.sysreg(TFSR_EL1) == 2


def test_counter_frequency_and_progress(cpu: CpuMachine) -> None:
    """Scenario: CNTFRQ_EL0 is 62.5 MHz and CNTVCT_EL0 does not go backwards across a
    busy loop."""
    cpu.go(
        """
        mrs x1, cntfrq_el0
        mrs x2, cntvct_el0
        mov x9, #2000
    1:  subs x9, x9, #1
        b.ne 1b
        mrs x3, cntvct_el0
        """
    )
    assert cpu.x(1) == 62_500_000
    assert cpu.x(3) > cpu.x(2)


def test_guest_turns_on_its_own_mmu_and_tag_checks(cpu: CpuMachine) -> None:
    """Scenario: as guests/runtime/start.S does: the guest writes MAIR_EL1, TCR_EL1,
    TTBR0_EL1 (a level-1 table it built with stores), sets SCTLR_EL1.M, ATA and TCF =
    sync with MSR + ISB, tags a granule with STG and then faults on a mismatching load,
    all in one KVM_RUN."""
    table = 0x4001_0000
    device, tagged = 0x401, 0x4000_0000 | 0x705
    cpu.write(table, struct.pack("<2Q", device, tagged))
    cpu.load(
        f"""
        mov x1, #0xf000
        msr mair_el1, x1
        ldr x1, =0x2000803519
        msr tcr_el1, x1
        ldr x1, ={table:#x}
        msr ttbr0_el1, x1
        isb
        mrs x1, sctlr_el1
        orr x1, x1, #1
        orr x1, x1, #(1 << 40)
        orr x1, x1, #(1 << 43)
        msr sctlr_el1, x1
        isb
        mov x2, #0
        msr gcr_el1, x2
        ldr x3, ={with_tag(DATA, 5):#x}
        stg x3, [x3]
        ldr x4, [x3]
        ldr x5, ={with_tag(DATA, 6):#x}
        ldr x6, [x5]
        """
    )
    cpu.resume()
    assert cpu.sysreg(TTBR0_EL1) == table
    assert cpu.sysreg(MAIR_EL1) == 0xF000
    assert cpu.sysreg(SCTLR_EL1) & (1 | 1 << 40 | 1 << 43) == 1 | 1 << 40 | 1 << 43
    assert cpu.sysreg(ESR_EL1) == 0x25 << 26 | IL | 0x11
    assert cpu.sysreg(FAR_EL1) == with_tag(DATA, 6)
