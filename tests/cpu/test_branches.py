"""Branches: immediate, conditional, compare/test and branch, register, and blocks."""

from __future__ import annotations

from tagvisor.kvm.uapi import ExitReason
from tests.cpu.conftest import CODE, HVC_DONE, CpuMachine, MachineFactory


def test_branch_and_link_and_return(cpu: CpuMachine) -> None:
    """Scenario: BL to a function that returns with RET; B over a trap; the link
    register holds the address after the BL."""
    cpu.go(
        """
        mov x1, #0
        bl func
        add x1, x1, #10
        b over
        udf #0
    func:
        add x1, x1, #1
        mov x2, x30
        ret
    over:
        """
    )
    assert cpu.x(1) == 11
    assert cpu.x(2) == CODE + 8


def test_register_branches_blr_and_br(cpu: CpuMachine) -> None:
    """Scenario: BLR through a register (link set, target read before X30 changes:
    BLR X30), BR to an address built with ADR."""
    cpu.go(
        """
        adr x30, target
        blr x30
        adr x3, done
        br x3
        udf #1
    target:
        mov x2, x30
        ret
    done:
        """
    )
    assert cpu.x(2) == CODE + 8


def test_compare_and_test_branches(cpu: CpuMachine) -> None:
    """Scenario: CBZ/CBNZ on W and X registers (W ignores the upper half) and TBZ/TBNZ
    on bit 0 and bit 63."""
    cpu.go(
        """
        mov x1, #0x100000000
        mov x9, #0
        cbz w1, 1f
        orr x9, x9, #1
    1:  cbnz x1, 2f
        orr x9, x9, #2
    2:  mov x2, #0x8000000000000000
        tbnz x2, #63, 3f
        orr x9, x9, #4
    3:  tbz x2, #0, 4f
        orr x9, x9, #8
    4:  tbnz w2, #0, 5f
        orr x9, x9, #16
    5:
        """
    )
    assert cpu.x(9) == 16


def test_conditional_branch_loop_counts(cpu: CpuMachine) -> None:
    """Scenario: a counted loop with B.NE and a nested signed comparison with B.LT."""
    cpu.go(
        """
        mov x0, #0
        mov x1, #-5
    1:  add x0, x0, #1
        add x1, x1, #1
        cmp x1, #3
        b.lt 1b
        """
    )
    assert cpu.x(0) == 8


def test_block_budget_returns_intr_and_resumes(make_cpu: MachineFactory) -> None:
    """Scenario: an instruction budget of 100 on a 3000-instruction loop: KVM_RUN
    returns INTR repeatedly, and resuming finishes with the right result."""
    cpu = make_cpu(budget=100)
    cpu.load(f"mov x0, #1000\nmov x1, #0\n1: add x1, x1, #2\nsubs x0, x0, #1\nb.ne 1b\n{HVC_DONE}")
    intr = 0
    while True:
        exit_ = cpu.core.run(cpu.vcpu.context())
        if exit_.reason != ExitReason.INTR:
            break
        intr += 1
    assert exit_.reason == ExitReason.HYPERCALL
    assert cpu.x(1) == 2000
    assert intr >= 25
