"""The memory scenarios on the model: every backing, and tags across owners per profile.

The real kernels' answers are in docs/conformance.md (measured in the testbed); these
tests pin what each profile reproduces of them.
"""

from tagvisor.conformance.compare import TESTBED_32BIT_EL1, TESTBED_MTE_LEVEL
from tagvisor.conformance.owners import OWNER_TAG, mask_of, tenancy
from tagvisor.conformance.scenarios import add_slot, copy_tags
from tagvisor.kvm.api import Kvm
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.uapi import KVM_ARM_TAGS_TO_GUEST, Cap

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


def _stale_huge_page_after_to_guest(profile: str) -> list[int]:
    """A private hugetlb slot whose frames hold a previous owner's tag 3 with no
    PG_mte_tagged (flags cleared, tags left in memory); TO_GUEST of tag 5 into page 1,
    then FROM_GUEST of pages 0-2: each page's mask."""
    kvm = _kvm(profile)
    vm = kvm.create_vm()
    vm.enable_cap(Cap.ARM_MTE)
    user = kvm.user_memory
    ram = user.map_hugetlb(2 << 20, shared=False)
    assert add_slot(vm, 0, 0x4000_0000, 2 << 20, ram) == 0
    user.write(ram, b"\0")  # the VMM's own fault: the huge page is allocated
    pfns = user.frame_numbers(ram, 512)
    kvm.frames.packed_pages[pfns] = 0x33
    buffer = user.map_anonymous(4096)
    user.write(buffer, bytes([5]) * 256)
    assert copy_tags(vm, 0x4000_0000 + 4096, 4096, buffer, KVM_ARM_TAGS_TO_GUEST) == 4096
    assert copy_tags(vm, 0x4000_0000, 3 * 4096, buffer) == 3 * 4096
    tags = user.read(buffer, 3 * 256)
    return [mask_of(tags[i * 256 : (i + 1) * 256]) for i in range(3)]


def test_linux_6_1_to_guest_tags_only_its_page_of_a_huge_page_the_rest_reads_zero() -> None:
    """Scenario: the earlier model bug ("FROM_GUEST returned tag 3 on never-tagged reused
    frames" on linux-6.1): 6.1's flags are per 4 KiB page, so TO_GUEST into page 1 leaves
    pages 0 and 2 untagged and FROM_GUEST reads zeros there; 7.3's flag is the folio's,
    so there the stale 3s show (what the real 7.3 does, memslot_backing_tags)."""
    assert _stale_huge_page_after_to_guest("linux-6.1") == [ZEROS, PLANTED, ZEROS]
    assert _stale_huge_page_after_to_guest("linux-7.3") == [1 << 3, PLANTED, 1 << 3]
