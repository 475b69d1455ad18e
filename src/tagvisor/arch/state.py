"""The processing-element state that MTE consults and updates.

The registers are held as the typed views of :mod:`tagvisor.arch.sysregs`; an MSR goes
through ``from_raw`` so a bad value is refused. The state is mutable because IRG
advances RGSR_EL1 and asynchronous faults set TFSR bits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tagvisor.arch.sysregs import (
    DczidEl0,
    GcrEl1,
    GmidEl1,
    RgsrEl1,
    SctlrMte,
    TagCheckMode,
    TcrMte,
    Tfsr,
)


@dataclass
class MteState:
    """What MTE needs to know about a PE: exception level, PSTATE.TCO and registers.

    ``hcr_ata`` is HCR_EL2.ATA: a hypervisor (KVM, when the VM has MTE) sets it so that
    EL1 and EL0 may reach allocation tags at all. ``random_tag`` is the implementation's
    source for IRG when GCR_EL1.RRND is set; it is seeded so runs repeat.
    """

    el: int = 1
    tco: bool = False
    sctlr: SctlrMte = field(default_factory=SctlrMte)
    tcr: TcrMte = field(default_factory=TcrMte)
    gcr: GcrEl1 = field(default_factory=GcrEl1)
    rgsr: RgsrEl1 = field(default_factory=RgsrEl1)
    tfsr_el1: Tfsr = field(default_factory=Tfsr)
    tfsre0_el1: Tfsr = field(default_factory=Tfsr)
    gmid: GmidEl1 = field(default_factory=GmidEl1)
    dczid: DczidEl0 = field(default_factory=DczidEl0)
    hcr_ata: bool = True
    random_tag: random.Random = field(default_factory=lambda: random.Random(0))

    @classmethod
    def linux_user(
        cls, mode: TagCheckMode, include_mask: int = 0xFFFF, dczid_bs: int = 4
    ) -> MteState:
        """The EL0 state Linux sets up after prctl(PR_SET_TAGGED_ADDR_CTRL).

        Linux sets TBI0, ATA0, DZE and GCR_EL1.RRND (TCMA0 stays 0), and makes
        GCR_EL1.Exclude the complement of the prctl include mask (arch/arm64/kernel/
        mte.c, set_mte_ctrl). QEMU's linux-user does the same (target/arm/cpu.c
        arm_cpu_reset_hold; linux-user/aarch64/mte_user_helper.c). ``dczid_bs`` is the
        CPU's DC ZVA block: 4 (64 bytes) is common on hardware, QEMU's linux-user
        reports 7 (512 bytes).
        """
        return cls(
            el=0,
            sctlr=SctlrMte(tcf0=mode, ata0=True, ata=True, dze=True),
            tcr=TcrMte(tbi0=True),
            gcr=GcrEl1(exclude=~include_mask & 0xFFFF, rrnd=True),
            dczid=DczidEl0(bs=dczid_bs),
        )

    @classmethod
    def bare_metal_el1(cls, mode: TagCheckMode) -> MteState:
        """An EL1 guest kernel that turned MTE on for itself, TBI0 on, TCMA off."""
        return cls(
            el=1,
            sctlr=SctlrMte(tcf=mode, ata=True, ata0=True),
            tcr=TcrMte(tbi0=True),
        )

    def allocation_tag_access_enabled(self, el: int | None = None) -> bool:
        """AArch64.AllocationTagAccessIsEnabled for the EL1&0 regime under a hypervisor.

        Secure state and EL3 are not modelled: SCR_EL3.ATA is taken as 1.
        """
        el = self.el if el is None else el
        if el in (0, 1) and not self.hcr_ata:
            return False
        if el == 0:
            return self.sctlr.ata0
        return self.sctlr.ata

    def tag_check_mode(self, el: int | None = None) -> TagCheckMode:
        """SCTLR_EL1.TCF0 for EL0, SCTLR_EL1.TCF for EL1."""
        el = self.el if el is None else el
        return self.sctlr.tcf0 if el == 0 else self.sctlr.tcf

    def store_only(self, el: int | None = None) -> bool:
        """Whether only stores are checked at ``el`` (SCTLR_EL1.TCSO0 / TCSO,
        FEAT_MTE_STORE_ONLY)."""
        el = self.el if el is None else el
        return self.sctlr.tcso0 if el == 0 else self.sctlr.tcso
