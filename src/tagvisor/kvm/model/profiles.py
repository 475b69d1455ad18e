"""Kernel profiles: how KVM's MTE ABI behaved in each Linux version, and the seed's v2.

Each profile is a subclass that overrides only what its version changed (the py-evm
pattern for protocol generations). The facts and their commits are in docs/kvm-abi.md;
each override names the Linux change it models.
"""

from __future__ import annotations

import errno
from typing import ClassVar

from tagvisor.host.mapping import BackingKind, Vma


class KernelProfile:
    """Linux 5.14: KVM_CAP_ARM_MTE and KVM_ARM_MTE_COPY_TAGS as first merged.

    arch/arm64/kvm/arm.c (cap), guest.c (COPY_TAGS), mmu.c (memslots, faults).
    """

    name: ClassVar[str] = "linux-5.14"
    version: ClassVar[tuple[int, int]] = (5, 14)
    description: ClassVar[str] = "MTE for KVM guests as first merged"

    #: MTE is a VM capability (KVM_CAP_ARM_MTE); the seed's v2 made it a VCPU feature.
    mte_is_vm_cap: ClassVar[bool] = True
    #: KVM_ARM_MTE_COPY_TAGS exists.
    has_copy_tags: ClassVar[bool] = True
    #: COPY_TAGS refuses length > INT_MAX with EINVAL (commit 2def950c63e3, 6.4).
    copy_tags_checks_int_max: ClassVar[bool] = False
    #: TO_GUEST fails with EBUSY while any memslot logs dirty pages (e0b7de4fd18c, 6.12).
    copy_tags_busy_while_logging: ClassVar[bool] = False
    #: A TO_GUEST page whose user copy fails part way gets all its tags cleared and is
    #: still marked tagged (6.2); before, the copied prefix stayed and it stayed untagged.
    partial_to_guest_clears_page: ClassVar[bool] = False
    #: hugetlbfs mappings are VM_MTE_ALLOWED ("hugetlb: arm64: add mte support", 6.13).
    hugetlb_mte_allowed: ClassVar[bool] = False
    #: A huge page's PG_mte_tagged is its folio's and is cleared as the page goes back to
    #: the hugetlb pool (arch_clear_hugetlb_flags, 25c17c4b55de, 6.13). Before, each 4 KiB
    #: page had its own and the pool kept it: a reused huge page's old tags stay valid,
    #: measured on 6.1 (docs/conformance.md "Memory").
    hugetlb_pool_clears_mte_flags: ClassVar[bool] = False
    #: KVM's change_pte notifier (kvm_set_spte_gfn) sanitises the tags of the page it is
    #: told of, in an MTE VM: clears them and sets PG_mte_tagged, even for a page the
    #: guest never touched. KSM's write_protect_page sends it, so KSM tags every page of
    #: an MTE VM's memslot it tries to merge and then refuses it (memcmp_pages): measured
    #: on 6.1, no merge in such a slot even before any KVM_RUN. 2dbf12ae132c ("KVM:
    #: arm64: Simplify the sanitise_mte_tags() logic", 6.2) leaves untagged pages alone.
    change_pte_sanitises_tags: ClassVar[bool] = True
    #: MADV_PAGEOUT's reclaim checks references (reclaim_pages -> shrink_folio_list
    #: without ignore_references), and KVM's MMU notifier answers them from stage 2: a
    #: page a live VM maps stays resident. 2864f3d0f583 ("mm: madvise: pageout: ignore
    #: references rather than clearing young", 6.10) stopped that; measured on 6.1
    #: (2 of 6 pages out, 6 once the VM is gone) and 6.12 (6 of 6).
    pageout_checks_references: ClassVar[bool] = True
    #: Tag initialisation also runs on stage-2 permission faults (seed v2 only).
    sanitise_on_permission_fault: ClassVar[bool] = False
    #: KVM promotes (initialises and keeps tags of) only memory the VMM mapped
    #: PROT_MTE: the opt-in design a reviewer asked for in the seed thread, never
    #: Linux. No profile here sets it; the ABI lab (tagvisor.lab) defines one that does.
    promotes_only_prot_mte: ClassVar[bool] = False
    #: The measured register file (tagvisor.kvm.model.regdata) this version's VCPUs
    #: have: KVM_GET_REG_LIST, reset values and SET_ONE_REG of ID registers. Only 6.1,
    #: 6.12 and 7.3 were measured; a version in between uses the last one before it.
    regfile: ClassVar[str] = "linux-6.1"
    #: ID_AA64PFR2_EL1 fields an MTE VM sees at the host's value (MTEFAR 11:8 and
    #: MTESTOREONLY 7:4 from 6.17); before, read_id_reg kept only FPMR.
    pfr2_mte_fields: ClassVar[int] = 0
    #: KVM_CAP_ARM_MTE is offered, and may be enabled, when the host runs KVM in
    #: protected mode (kvm-arm.mode=protected) for the VMs that are not protected.
    mte_cap_under_pkvm: ClassVar[bool] = True
    #: The first KVM_RUN clears the ID registers' GIC fields without an in-kernel
    #: irqchip (kvm_finalize_sys_regs, 6.7+).
    clears_gic_id_fields_at_run: ClassVar[bool] = False
    #: A VM without MTE has HCR_EL2.TID5 set, so its reads of GMID_EL1 trap to KVM (7.0+,
    #: 70a5ce4efc0e "Force trap of GMID_EL1 when the guest doesn't have MTE"), which
    #: answers as FEAT_IDST says (idst_access, d78a14decd49): EC 0x18 with the trap's
    #: syndrome when the guest's ID_AA64MMFR2_EL1.IDS is set, else UNDEF. Before, the
    #: read was not trapped at all and returned the hardware's GMID_EL1.
    traps_gmid_without_mte: ClassVar[bool] = False

    def memslot_refusal(self, vma: Vma) -> str | None:
        """Why kvm_arch_prepare_memory_region refuses this VMA for an MTE VM (EINVAL).

        5.14 to 6.1 refused only VM_SHARED mappings.
        """
        if vma.shared:
            return "MAP_SHARED memory cannot back an MTE VM's memslot before Linux 6.2"
        return None

    def fault_refusal(self, vma: Vma) -> tuple[int, str] | None:
        """Why user_mem_abort refuses to map a page of this VMA (KVM_RUN's errno).

        Up to 6.1 only a VM_SHARED VMA fails (EFAULT): "Check the VMM hasn't introduced
        a new VM_SHARED VMA" in arch/arm64/kvm/mmu.c tests ``shared`` alone and
        sanitise_mte_tags clears any other page's tags, VM_MTE_ALLOWED or not. The
        VM_MTE_ALLOWED test came with Catalin Marinas's "KVM: arm64: Simplify the
        sanitise_mte_tags() logic" (6.2). Measured: bookworm's 6.1.0-57 runs a guest
        on MAP_PRIVATE hugetlb memory (not VM_MTE_ALLOWED) in an MTE VM
        (conformance scenario memslot_backing_tags).
        """
        if vma.shared:
            return errno.EFAULT, "a MAP_SHARED page faulted into an MTE guest"
        return None

    def __repr__(self) -> str:
        return f"<{self.name}: {self.description}>"


class Linux61(KernelProfile):
    """Linux 6.1, Debian 12's kernel: the 5.14 rules (what the testbed runs)."""

    name = "linux-6.1"
    version = (6, 1)
    description = "bookworm's kernel; same MTE rules as 5.14"


class Linux62(Linux61):
    """Linux 6.2: any VM_MTE_ALLOWED mapping may back an MTE VM, checked up front.

    Peter Collingbourne's series ("KVM: arm64: permit all VM_MTE_ALLOWED mappings with
    MTE enabled"): MAP_SHARED anonymous/memfd/tmpfs memory is accepted, anything not
    VM_MTE_ALLOWED fails at memslot creation (EINVAL) or at fault time (EFAULT).
    PG_mte_lock arrives (Catalin Marinas, "arm64: mte: Lock a page for MTE tag
    initialisation").
    """

    name = "linux-6.2"
    version = (6, 2)
    description = "VM_MTE_ALLOWED memslots, MAP_SHARED allowed, PG_mte_lock"
    partial_to_guest_clears_page = True
    #: The same series' 2dbf12ae132c: kvm_set_spte_gfn leaves untagged pages unmapped
    #: for user_mem_abort instead of sanitising them (measured: KSM merges the untagged
    #: pages of an MTE VM's memslot on 6.12 and 7.3, none on 6.1).
    change_pte_sanitises_tags = False

    def _mte_allowed(self, vma: Vma) -> bool:
        if vma.backing.kind is BackingKind.HUGETLB:
            return self.hugetlb_mte_allowed
        return vma.backing.kind.ram_based

    def memslot_refusal(self, vma: Vma) -> str | None:
        """Why this kernel refuses a memslot over ``vma`` in an MTE VM, or None."""
        if not self._mte_allowed(vma):
            return f"{vma.backing.kind.value} memory is not VM_MTE_ALLOWED"
        return None

    def fault_refusal(self, vma: Vma) -> tuple[int, str] | None:
        """(errno, reason) if a stage-2 fault on ``vma`` fails in an MTE VM, or None."""
        if not self._mte_allowed(vma):
            return errno.EFAULT, f"{vma.backing.kind.value} memory is not VM_MTE_ALLOWED"
        return None


class Linux64(Linux62):
    """Linux 6.4: COPY_TAGS lengths above INT_MAX are refused (EINVAL)."""

    name = "linux-6.4"
    version = (6, 4)
    description = "COPY_TAGS length limited to INT_MAX"
    copy_tags_checks_int_max = True


class Linux612(Linux64):
    """Linux 6.12: no TO_GUEST tag copies while dirty logging (EBUSY).

    Writing tags does not mark pages in KVM's dirty bitmap, so a migration could miss
    them (e0b7de4fd18c, "KVM: arm64: Disallow copying MTE to guest memory while KVM is
    dirty logging").
    """

    name = "linux-6.12"
    version = (6, 12)
    description = "TO_GUEST refused with EBUSY while dirty logging"
    copy_tags_busy_while_logging = True
    #: Writable ID registers and KVM_ARM_GET_REG_WRITABLE_MASKS (6.7, Jing Zhang's
    #: "KVM: arm64: Enable writable sanitised ID registers" series), PTIMER and more.
    regfile = "linux-6.12"
    clears_gic_id_fields_at_run = True
    #: 2864f3d0f583 (6.10; no 6.10 profile: 6.12 is the first measured after it).
    pageout_checks_references = False


class Linux613(Linux612):
    """Linux 6.13 (the default): hugetlbfs memory may back an MTE VM.

    25c17c4b55de ("hugetlb: arm64: add mte support"): arch_calc_vm_flag_bits() gives
    hugetlbfs mappings VM_MTE_ALLOWED, and the tags of a huge page are tracked on its
    folio (sanitise_mte_tags' folio_test_hugetlb branch in arch/arm64/kvm/mmu.c).
    """

    name = "linux-6.13"
    version = (6, 13)
    description = "hugetlb MTE"
    hugetlb_mte_allowed = True
    hugetlb_pool_clears_mte_flags = True


class Linux617(Linux613):
    """Linux 6.17: FEAT_MTE_TAGGED_FAR and FEAT_MTE_STORE_ONLY reach MTE guests.

    7502bdb43aa2 and 61eae495da68 (Yeoreum Yun's series): __kvm_read_sanitised_id_reg
    keeps ID_AA64PFR2_EL1.MTEFAR and .MTESTOREONLY when the VM has MTE (cleared
    otherwise), and both are in the register's writable mask (FTR_LOWER_SAFE: a VMM
    may lower them). A host without the features (the testbed's QEMU ``-cpu max``)
    reads 0 there either way.
    """

    name = "linux-6.17"
    version = (6, 17)
    description = "ID_AA64PFR2_EL1 MTEFAR and MTESTOREONLY for MTE guests"
    pfr2_mte_fields = 0xFF0


class Linux70(Linux617):
    """Linux 7.0: pKVM refuses KVM_CAP_ARM_MTE for every VM.

    f4eee308c8f4 ("KVM: arm64: Do not allow KVM_CAP_ARM_MTE for any guest in pKVM")
    with "Check whether a VM IOCTL is allowed in pKVM" (b12b3b04f6ba): under
    kvm-arm.mode=protected, CHECK_EXTENSION(KVM_CAP_ARM_MTE) answers 0 and ENABLE_CAP
    fails with EINVAL, also for VMs that are not protected; before, those got MTE.
    The same release traps a guest's MTE register accesses and GMID_EL1 when its VM
    has no MTE (f35abcbb8a08, 5ee8ad69da07, 70a5ce4efc0e): guest-visible, see
    docs/kvm-abi.md.
    """

    name = "linux-7.0"
    version = (7, 0)
    description = "pKVM refuses KVM_CAP_ARM_MTE; GMID_EL1 traps without MTE"
    mte_cap_under_pkvm = False
    traps_gmid_without_mte = True


class Linux73(Linux70):
    """Linux 7.3, trixie-backports' kernel: 7.0's MTE rules, its own register file.

    Measured on the testbed (regdata ``linux-7.3``): 261 / 257 registers with MTE on /
    off. Against 6.12: TCR2_EL1, PIRE0_EL1 and PIR_EL1 are listed only for a CPU with
    FEAT_TCR2 / FEAT_S1PIE, KVM_REG_ARM_VENDOR_HYP_BMAP_2 is new, PSCI reads 1.3, the
    timers' CTL registers reset to 0, ID_AA64MMFR2_EL1.NV reads 0 for a VM without
    nested virtualisation, and the writable masks are wider (ID_AA64PFR2_EL1 among
    them: FPMR, GCIE, MTEFAR, MTESTOREONLY).
    """

    name = "linux-7.3"
    version = (7, 3)
    description = "trixie-backports' kernel; 7.0's MTE rules"
    regfile = "linux-7.3"


class SeedV2(KernelProfile):
    """The seed thread's v2 series (Steven Price, Sep 2020), never merged.

    MTE is a VCPU feature (bit 7 of KVM_ARM_VCPU_INIT features); any VCPU with it makes
    the VM sticky-MTE and from then every stage-2 fault (permission faults too) clears
    and flags the page's tags. There is no capability to probe, no VMA restriction and
    no ioctl to copy tags.
    """

    name = "seed-v2"
    version = (5, 9)
    description = "the seed's v2: per-VCPU MTE, no COPY_TAGS"
    mte_is_vm_cap = False
    has_copy_tags = False
    sanitise_on_permission_fault = True

    def memslot_refusal(self, vma: Vma) -> str | None:
        """Why this kernel refuses a memslot over ``vma`` in an MTE VM, or None."""
        return None

    def fault_refusal(self, vma: Vma) -> tuple[int, str] | None:
        """(errno, reason) if a stage-2 fault on ``vma`` fails in an MTE VM, or None."""
        return None


PROFILES: dict[str, type[KernelProfile]] = {
    cls.name: cls
    for cls in (
        KernelProfile,
        Linux61,
        Linux62,
        Linux64,
        Linux612,
        Linux613,
        Linux617,
        Linux70,
        Linux73,
        SeedV2,
    )
}
DEFAULT_PROFILE = Linux613.name


def profile_named(name: str) -> KernelProfile:
    """The profile called ``name`` (e.g. ``linux-6.1``)."""
    try:
        return PROFILES[name]()
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"unknown kernel profile {name!r}; known: {known}") from None
