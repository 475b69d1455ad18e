"""Synchronous exceptions to the guest's vectors, ESR/ELR/FAR/SPSR, and ERET."""

from __future__ import annotations

from tagvisor.kvm.uapi import ELR_EL1, ESR_EL1, FAR_EL1, SCTLR_EL1, SPSR_EL1, ExitReason
from tests.cpu.conftest import CODE, EL0T, EL1H, HVC_DONE, CpuMachine

IL = 1 << 25


def test_svc_enters_the_spx_vector_with_the_return_address_past_it(cpu: CpuMachine) -> None:
    """Scenario: EL1h code with Z set runs SVC #0x42: the current-EL SPx vector
    (VBAR + 0x200) is taken with ESR EC 0x15 and the immediate, ELR = SVC + 4, SPSR the
    old PSTATE; PSTATE becomes EL1h with DAIF masked and TCO set."""
    cpu.load("mov x1, #0x40000000\nmsr nzcv, x1\nmsr daifclr, #0xf\nsvc #0x42\n")
    assert cpu.resume().reason == ExitReason.HYPERCALL
    assert cpu.vector_taken() == 0x200
    assert cpu.sysreg(ESR_EL1) == 0x15 << 26 | IL | 0x42
    assert cpu.sysreg(ELR_EL1) == CODE + 16
    assert cpu.sysreg(SPSR_EL1) == 0x4000_0000 | EL1H
    assert cpu.pstate & 0xF == EL1H
    assert (cpu.pstate >> 6) & 0xF == 0xF
    assert cpu.pstate >> 25 & 1 == 1


def test_undefined_instruction_takes_ec_0_after_the_preceding_ones(cpu: CpuMachine) -> None:
    """Scenario: two MOVs then UDF #7 in one block: the MOVs happen, the exception is
    EC 0x0 with ELR at the UDF; a floating-point instruction (not implemented) and an
    unallocated encoding are UNDEFINED too."""
    for bad in ("udf #7", "fadd d0, d1, d2", ".inst 0x9a800c00", ".inst 0x02000000"):
        cpu.load(f"mov x1, #1\nmov x2, #2\n{bad}\n")
        cpu.resume()
        assert cpu.vector_taken() == 0x200, bad
        assert cpu.sysreg(ESR_EL1) == IL, bad
        assert cpu.sysreg(ELR_EL1) == CODE + 8, bad
        assert (cpu.x(1), cpu.x(2)) == (1, 2)


def test_brk_reports_its_immediate_and_returns_to_itself(cpu: CpuMachine) -> None:
    """Scenario: BRK #0x3e8: EC 0x3C, ISS the immediate, ELR the BRK itself."""
    cpu.load("nop\nbrk #0x3e8\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == 0x3C << 26 | IL | 0x3E8
    assert cpu.sysreg(ELR_EL1) == CODE + 4


def test_exception_at_el1t_takes_the_sp0_vector(cpu: CpuMachine) -> None:
    """Scenario: MSR SPSel, #0 (EL1t) then SVC: VBAR + 0x000; SPSR.M = EL1t; the
    handler runs on SP_EL1 while SP_EL0 keeps its value."""
    cpu.set_x(31, 0x4005_0000)  # SP_EL0
    cpu.load("msr spsel, #0\nmov x1, sp\nsvc #1\n")
    cpu.resume()
    assert cpu.vector_taken() == 0x000
    assert cpu.sysreg(SPSR_EL1) & 0xF == 0b0100
    assert cpu.x(1) == 0x4005_0000
    assert cpu.vcpu.regs.core[31] == 0x4005_0000


def test_eret_to_el0_and_back_through_the_lower_el_vector(cpu: CpuMachine) -> None:
    """Scenario: EL1 sets ELR and SPSR (EL0t, C flag) and ERETs; EL0 code reads its SP
    (SP_EL0) and NZCV, then SVC #5: the lower-EL vector (VBAR + 0x400) with EC 0x15,
    SPSR.M = EL0t, ELR past the SVC."""
    cpu.set_x(31, 0x4005_0000)
    cpu.load(
        """
        adr x1, user
        msr elr_el1, x1
        mov x2, #0x20000000
        msr spsr_el1, x2
        eret
    user:
        mov x3, sp
        mrs x4, nzcv
        svc #5
        """
    )
    cpu.resume()
    assert cpu.vector_taken() == 0x400
    assert cpu.sysreg(ESR_EL1) == 0x15 << 26 | IL | 5
    assert cpu.sysreg(SPSR_EL1) & 0x1F == EL0T
    assert cpu.sysreg(ELR_EL1) == CODE + 32
    assert cpu.x(3) == 0x4005_0000
    assert cpu.x(4) == 0x2000_0000


def test_el0_cannot_use_el1_registers_or_hvc(cpu: CpuMachine) -> None:
    """Scenario: at EL0, MRS SCTLR_EL1 and HVC are UNDEFINED (EC 0x0)."""
    for insn in ("mrs x1, sctlr_el1", "hvc #0", "msr daifset, #2"):
        cpu.load(f"adr x1, user\nmsr elr_el1, x1\nmsr spsr_el1, xzr\neret\nuser:\n{insn}\n")
        cpu.resume()
        assert cpu.vector_taken() == 0x400, insn
        ec = cpu.sysreg(ESR_EL1) >> 26
        # DAIFSet at EL0 without SCTLR_EL1.UMA traps as a system instruction (EC 0x18).
        assert ec == (0x18 if "daif" in insn else 0), insn


def test_eret_restores_flags_masks_and_tco(cpu: CpuMachine) -> None:
    """Scenario: SPSR with N, V, TCO, D masked only and EL1h; ERET lands with that
    PSTATE; ELR with a tag in the top byte is not followed literally under TBI0 = 0 (the
    address is untranslatable, so the fetch faults)."""
    cpu.load(
        f"""
        adr x1, back
        msr elr_el1, x1
        ldr x2, ={0x9000_0000 | 1 << 25 | 1 << 9 | EL1H:#x}
        msr spsr_el1, x2
        eret
    back:
        mrs x3, nzcv
        mrs x4, daif
        mrs x5, tco
        {HVC_DONE}
        """
    )
    cpu.resume()
    assert cpu.x(3) == 0x9000_0000
    assert cpu.x(4) == 1 << 9
    assert cpu.x(5) == 1 << 25


def test_illegal_exception_return_sets_il_and_faults_with_ec_0x0e(cpu: CpuMachine) -> None:
    """Scenario: ERET with SPSR.M = EL2h (not reachable from EL1): PSTATE.IL is set and
    the next instruction takes an Illegal Execution state exception (EC 0x0E) at EL1,
    with IL visible in SPSR_EL1."""
    cpu.load("adr x1, next\nmsr elr_el1, x1\nmov x2, #0b1001\nmsr spsr_el1, x2\neret\nnext: nop\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) >> 26 == 0x0E
    assert cpu.sysreg(SPSR_EL1) >> 20 & 1 == 1
    assert cpu.sysreg(ELR_EL1) == CODE + 20
    assert cpu.pstate >> 20 & 1 == 0


def test_misaligned_branch_target_is_a_pc_alignment_fault(cpu: CpuMachine) -> None:
    """Scenario: BR to an address with bit 1 set: EC 0x22, FAR and ELR the bad PC."""
    cpu.load(f"ldr x1, ={CODE + 0x102:#x}\nbr x1\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) >> 26 == 0x22
    assert cpu.sysreg(FAR_EL1) == CODE + 0x102
    assert cpu.sysreg(ELR_EL1) == CODE + 0x102


def test_sp_alignment_check_when_sctlr_sa_is_set(cpu: CpuMachine) -> None:
    """Scenario: SCTLR_EL1.SA set, SP 8-byte aligned: LDR [SP] takes EC 0x26; with SP
    aligned again it loads."""
    cpu.set_sysreg(SCTLR_EL1, cpu.sysreg(SCTLR_EL1) | 1 << 3)
    cpu.load("sub sp, sp, #8\nldr x1, [sp]\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) >> 26 == 0x26
    assert cpu.sysreg(ELR_EL1) == CODE + 4
    cpu.go("mov x9, #0x40060000\nmov sp, x9\nldr x1, [sp, #-16]!\nadd sp, sp, #16")


def test_fault_in_the_middle_of_a_block_keeps_earlier_work(cpu: CpuMachine) -> None:
    """Scenario: ADD, STR, then a load from an address outside RAM and MMIO-less
    space... with the MMU off RAM is Device, so an unaligned LDR faults: DFSC 0x21
    with FAR the address, ELR the LDR; the ADD and the STR before it took effect."""
    cpu.load("mov x1, #0x40200000\nadd x2, x1, #1\nstr x2, [x1]\nldr x3, [x2]\nmov x4, #1\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == 0x25 << 26 | IL | 0x21
    assert cpu.sysreg(FAR_EL1) == 0x4020_0001
    assert cpu.sysreg(ELR_EL1) == CODE + 12
    assert cpu.read64(0x4020_0000) == 0x4020_0001
    assert cpu.x(4) == 0
