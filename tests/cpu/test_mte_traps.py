"""What a guest sees when it touches MTE registers: the VCPU's ID register, GMID_EL1's trap
by kernel version, and the bits an MSR keeps (the model side of the mte_traps scenario)."""

from __future__ import annotations

import pytest

from tagvisor.kvm.uapi import ESR_EL1, ID_AA64MMFR2_EL1, ID_AA64PFR1_EL1
from tests.cpu.conftest import MachineFactory

IL = 1 << 25
#: MRS x1, GMID_EL1 trapped with EC 0x18: Op0 3, Op2 4, Op1 1, CRn 0, Rt 1, CRm 0, read.
GMID_TRAP_X1 = 0x18 << 26 | IL | 3 << 20 | 4 << 17 | 1 << 14 | 1 << 5 | 1


@pytest.mark.parametrize("mte", [True, False])
def test_the_guest_reads_id_aa64pfr1_as_the_vcpu_holds_it(
    make_cpu: MachineFactory, mte: bool
) -> None:
    """Scenario: a guest's MRS ID_AA64PFR1_EL1 in a VM with and without MTE returns what
    KVM_GET_ONE_REG reads for its VCPU: BT and SSBS as the register file has them, MTE at
    the host's level or 0, not a value of the core's own."""
    cpu = make_cpu(mte=mte, mte_level=3)
    cpu.go("mrs x1, id_aa64pfr1_el1")
    assert cpu.x(1) == cpu.vcpu.get_one_reg(ID_AA64PFR1_EL1)
    assert cpu.x(1) >> 8 & 0xF == (3 if mte else 0)
    assert cpu.x(1) & 0xFF != 0  # BT and SSBS: the VCPU's, which the core did not report


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.12", "linux-6.17"])
def test_gmid_el1_without_mte_reads_the_hardware_before_7_0(
    make_cpu: MachineFactory, profile: str
) -> None:
    """Scenario: before Linux 7.0 nothing traps GMID_EL1 in a VM without MTE (HCR_EL2.TID5
    clear, and HCR_EL2.ATA does not cover ID registers): the guest reads the host's BS,
    6, while GCR_EL1 is still UNDEFINED."""
    cpu = make_cpu(mte=False, profile=profile)
    cpu.go("mrs x1, gmid_el1")
    assert cpu.x(1) == 6
    cpu.load("mrs x1, gcr_el1\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == IL


@pytest.mark.parametrize("profile", ["linux-7.0", "linux-7.3"])
def test_gmid_el1_without_mte_traps_with_its_syndrome_from_7_0(
    make_cpu: MachineFactory, profile: str
) -> None:
    """Scenario: from 7.0 a VM without MTE has HCR_EL2.TID5 set and KVM answers the trap as
    FEAT_IDST says (the VCPU's ID_AA64MMFR2_EL1.IDS is 1): the guest takes EC 0x18 with
    the MRS's own ISS, not an UNDEF."""
    cpu = make_cpu(mte=False, profile=profile)
    cpu.load("mrs x1, gmid_el1\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == GMID_TRAP_X1


def test_gmid_el1_with_mte_is_never_trapped(make_cpu: MachineFactory) -> None:
    """Scenario: with MTE the 7.3 VM reads GMID_EL1 (BS 6) like every earlier version."""
    cpu = make_cpu(profile="linux-7.3")
    cpu.go("mrs x1, gmid_el1")
    assert cpu.x(1) == 6


def test_msr_of_all_ones_keeps_only_the_mte_registers_fields(make_cpu: MachineFactory) -> None:
    """Scenario: MSR of all ones to GCR, RGSR, TFSR and TFSRE0_EL1 then MRS of each reads
    back Exclude|RRND (0x1ffff), TAG|SEED (0xffff0f) and TF0|TF1 (0x3): RES0 bits read 0,
    as on hardware."""
    cpu = make_cpu()
    cpu.go(
        """
        mov x0, #-1
        msr gcr_el1, x0
        msr rgsr_el1, x0
        msr tfsr_el1, x0
        msr tfsre0_el1, x0
        mrs x1, gcr_el1
        mrs x2, rgsr_el1
        mrs x3, tfsr_el1
        mrs x4, tfsre0_el1
        """
    )
    assert [cpu.x(n) for n in (1, 2, 3, 4)] == [0x1FFFF, 0xFFFF0F, 0x3, 0x3]


def test_gmid_el1_traps_as_undef_on_7_3_without_feat_idst(make_cpu: MachineFactory) -> None:
    """Scenario: a 7.3 VM without MTE on a host whose CPU lacks FEAT_IDST, so the VM's
    ID_AA64MMFR2_EL1.IDS (39:36) reads 0 (7.3 does not let a VMM write that field:
    the measured table refuses it); idst_access then injects an UNDEF (EC 0) for the
    GMID_EL1 read."""
    cpu = make_cpu(mte=False, profile="linux-7.3")
    mmfr2 = cpu.vcpu.get_one_reg(ID_AA64MMFR2_EL1)
    cpu.vm.id_regs[ID_AA64MMFR2_EL1] = mmfr2 & ~(0xF << 36)  # the host's sanitised value
    cpu.load("mrs x1, gmid_el1\n")
    cpu.resume()
    assert cpu.sysreg(ESR_EL1) == IL
