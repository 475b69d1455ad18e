"""The memory scenarios on the model: every backing, and tags across owners per profile.

The real kernels' answers are in docs/conformance.md (measured in the testbed); these
tests pin what each profile reproduces of them.
"""

from tagvisor.conformance.compare import TESTBED_32BIT_EL1, TESTBED_MTE_LEVEL
from tagvisor.conformance.owners import OWNER_TAG, tenancy
from tagvisor.kvm.api import Kvm
from tagvisor.kvm.model import ModelKvm

ZEROS = 1  # the mask of a page whose granules all hold tag 0
OWNERS = 1 << OWNER_TAG
PLANTED = 1 << 5  # COPY_TAGS TO_GUEST on page 1
VMM_STG = 1 << 6  # the VMM's own STG on page 2


def _kvm(profile: str) -> ModelKvm:
    return ModelKvm(
        64 << 20, profile, host_mte_level=TESTBED_MTE_LEVEL, host_32bit_el1=TESTBED_32BIT_EL1
    )


def _owners(profile: str, backing: str) -> tuple[dict, dict, dict]:  # type: ignore[type-arg]
    kvm = _kvm(profile)
    first, frames = tenancy(kvm, backing, store_tag=OWNER_TAG, vmm_stg=True)
    second, _ = tenancy(kvm, backing, store_tag=0, vmm_stg=True, frames=frames)
    third = kvm.in_child_process(
        lambda child: tenancy(child, backing, store_tag=0, vmm_stg=True, frames=frames)[0]
    )
    return first, second, third


def test_linux_6_1_hands_a_huge_pages_old_tags_to_the_next_owner() -> None:
    """Scenario: linux-6.1, MAP_PRIVATE hugetlb memfd: a guest stores tag 0xB and its VM goes;
    the next VM (this process, then a child) gets the same huge page and its guest reads
    0xB where nobody planted anything, as bookworm's 6.1 does (the pool keeps each 4 KiB
    page's PG_mte_tagged, so KVM does not clear them)."""
    first, second, third = _owners("linux-6.1", "hugetlb_memfd_private")
    assert first["guest_after"] == [OWNERS] * 4
    for later in (second, third):
        assert later["_frames_reused"] == 512
        assert later["guest_before"] == [OWNERS, PLANTED, OWNERS, OWNERS]
    assert second["from_before"]["masks"][:4] == [OWNERS] * 4
    # ...and the child finds the tag the second owner's VMM planted on page 1, too.
    assert third["from_before"]["masks"][:4] == [OWNERS, PLANTED, OWNERS, OWNERS]


def test_linux_6_1_runs_a_guest_on_private_hugetlb_memory_in_an_mte_vm() -> None:
    """Scenario: linux-6.1 accepts the slot (only VM_SHARED is refused) and the guest's faults
    (no VM_MTE_ALLOWED test before 6.2): the guest runs to its exit, status 0."""
    first, _, _ = _owners("linux-6.1", "hugetlb_anonymous_private")
    assert (first["slot"], first["state"], first["status"]) == (0, "stopped", 0)
    assert first["mmap_prot_mte"] == "EINVAL"  # MAP_HUGETLB is not VM_MTE_ALLOWED


def test_linux_7_3_clears_a_reused_huge_page_for_the_next_owner() -> None:
    """Scenario: linux-7.3 (hugetlb MTE, folio flags cleared in the pool): the same sequence on
    a shared hugetlb memfd mapped PROT_MTE: the next owners read only what was planted."""
    first, second, third = _owners("linux-7.3", "hugetlb_memfd_shared")
    assert first["guest_after"] == [OWNERS] * 4
    for later in (second, third):
        assert later["_frames_reused"] == 512
        assert later["guest_before"] == [ZEROS, PLANTED, VMM_STG, ZEROS]


def test_reused_small_frames_read_zero_tags_before_and_after_the_next_guest_touches_them() -> None:
    """Scenario: linux-6.1, private anonymous memory: a guest tags it and goes; the next VM's
    FROM_GUEST before its run reads zeros, its guest sees only the tags planted for it."""
    _, second, third = _owners("linux-6.1", "anonymous")
    for later in (second, third):
        assert later["_frames_reused"] > 0
        assert later["from_before"]["masks"] == [ZEROS] * 8
        assert later["guest_before"] == [ZEROS, PLANTED, VMM_STG, ZEROS]


def test_a_child_process_runs_on_the_parents_host_frames_and_gives_them_back() -> None:
    """Scenario: a child makes a mapping, touches it and exits: the frames it used are free."""
    kvm = _kvm("linux-7.3")
    used = kvm.in_child_process(
        lambda child: {"frames": _touch(child)}  # the child's own address space
    )
    assert all(used["frames"])
    assert not kvm.frames.in_use[used["frames"]].any()
    assert kvm.process.vmas == []


def _touch(kvm: Kvm) -> list[int] | None:
    address = kvm.user_memory.map_anonymous(8192)
    kvm.user_memory.write(address, b"\x01" * 8192)
    return kvm.user_memory.frame_numbers(address, 2)


def test_linux_7_3_copy_tags_into_one_page_of_a_reused_huge_page_shows_the_rest_stale() -> None:
    """Scenario: linux-7.3, hugetlb memfds mapped without PROT_MTE: a guest stores 0xB on a
    huge page and its VM goes; the next VM's VMM plants tag 5 on page 1 with COPY_TAGS
    TO_GUEST before the first touch. TO_GUEST marks the whole folio tagged
    (folio_set_hugetlb_mte_tagged) without clearing its other pages, so the new guest's
    first touch clears nothing and reads the old owner's 0xB on pages 0, 2 and 3: what
    trixie-backports' 7.3.4 does (docs/conformance.md)."""
    kvm = _kvm("linux-7.3")
    first, frames = tenancy(kvm, "hugetlb_memfd_shared", store_tag=OWNER_TAG, vmm_stg=False)
    second, _ = tenancy(kvm, "hugetlb_memfd_private", store_tag=0, vmm_stg=False, frames=frames)
    assert first["guest_after"] == [OWNERS] * 4
    assert second["_frames_reused"] == 512
    assert second["from_before"]["masks"] == [ZEROS] * 8  # untagged folio: FROM_GUEST zeros
    assert second["guest_before"] == [OWNERS, PLANTED, OWNERS, OWNERS]
