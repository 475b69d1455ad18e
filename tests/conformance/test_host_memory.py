"""The host-memory scenarios on the model: swap, soft-offline migration and KSM of a
guest's tagged pages, per profile.

The real kernels' answers are in docs/conformance.md ("Host memory", measured in the
testbed with zram swap); these tests pin what each profile reproduces of them.
"""

from typing import Any

from tagvisor.conformance.compare import (
    TESTBED_32BIT_EL1,
    TESTBED_MTE_LEVEL,
    TESTBED_SWAP_PAGES,
)
from tagvisor.conformance.host_memory import (
    ksm_skips_tagged_pages,
    migration_keeps_guest_tags,
    swap_keeps_guest_tags,
)
from tagvisor.conformance.owners import COPY_TAG, OWNER_TAG
from tagvisor.kvm.model import ModelKvm

GUEST = 1 << OWNER_TAG  # the writer guest's STG on pages 0-3
PLANTED = 1 << COPY_TAG  # COPY_TAGS TO_GUEST on page 4
ZEROS = 1  # page 5: never tagged
MASKS = [GUEST] * 4 + [PLANTED, ZEROS]


def _kvm(profile: str, swap_pages: int = TESTBED_SWAP_PAGES) -> ModelKvm:
    return ModelKvm(
        64 << 20,
        profile,
        host_mte_level=TESTBED_MTE_LEVEL,
        host_32bit_el1=TESTBED_32BIT_EL1,
        swap_pages=swap_pages,
    )


def _variant(result: dict[str, Any], name: str) -> dict[str, Any]:
    prefix = f"{name}."
    return {k.removeprefix(prefix): v for k, v in result.items() if k.startswith(prefix)}


def test_swapped_out_guest_pages_come_back_with_their_tags() -> None:
    """Scenario: linux-6.12, a guest tags pages 0-3, the VMM page 4; MADV_PAGEOUT sends all
    six to swap; a second guest's LDG and FROM_GUEST read every tag back, and the data
    (mteswap.c saves the tags at swap-out and restores them at swap-in)."""
    result = swap_keeps_guest_tags(_kvm("linux-6.12"))
    for name in ("vmm_plain", "vmm_prot_mte"):
        seen = _variant(result, name)
        assert seen["from_guest_before"]["masks"] == MASKS
        assert seen["move.in_swap"] == 6
        assert seen["reader.before"] == [GUEST] * 4
        assert seen["from_guest_after"]["masks"] == MASKS
        assert seen["data_kept"] == [True] * 6


def test_linux_6_1_keeps_the_pages_a_live_vm_maps_resident_under_pageout() -> None:
    """Scenario: linux-6.1, the same pages; with the writer's VM alive only pages 4 and 5
    (never in its stage 2) go to swap, as bookworm's kernel does (reclaim checks
    references before 2864f3d0f583); once the VM is closed all six go."""
    result = swap_keeps_guest_tags(_kvm("linux-6.1"))
    seen = _variant(result, "vmm_plain")
    assert seen["move.in_swap"] == 2
    assert seen["move_writer_gone.in_swap"] == 6
    assert seen["from_guest_after"]["masks"] == MASKS


def test_pageout_without_a_swap_device_leaves_every_page_resident() -> None:
    """Scenario: a host with no swap: MADV_PAGEOUT succeeds and nothing goes out; the tags
    stay where they were."""
    seen = _variant(swap_keeps_guest_tags(_kvm("linux-6.12", swap_pages=0)), "vmm_plain")
    assert seen["move.in_swap"] == 0
    assert seen["from_guest_after"]["masks"] == MASKS


def test_soft_offline_moves_every_page_and_its_tags() -> None:
    """Scenario: MADV_SOFT_OFFLINE of pages 0-5: each lands on a new frame, and its tags
    and data come with it (copy_highpage copies the tags of a PG_mte_tagged page)."""
    result = migration_keeps_guest_tags(_kvm("linux-7.3"))
    for name in ("vmm_plain", "vmm_prot_mte"):
        seen = _variant(result, name)
        assert seen["move.outcome"] == 0
        assert seen["move.pages_moved"] == 6
        assert seen["reader.before"] == [GUEST] * 4
        assert seen["from_guest_after"]["masks"] == MASKS
        assert seen["data_kept"] == [True] * 6


def test_ksm_merges_equal_pages_only_when_neither_is_tagged() -> None:
    """Scenario: MADV_MERGEABLE and ksmd's passes over equal pairs: the guest-tagged pair and
    the PROT_MTE pair (PG_mte_tagged from their first fault) stay apart, the untagged
    pair in the slot and the plain pair merge; the guest still reads its tags."""
    result = ksm_skips_tagged_pages(_kvm("linux-7.3"))
    assert result["ksm"] == 0
    assert result["merged.slot_guest_tagged_0_1"] is False
    assert result["merged.prot_mte_pair"] is False
    assert result["merged.slot_untagged_4_5"] is True
    assert result["merged.plain_pair"] is True
    assert result["reader.before"] == [GUEST] * 4
    assert result["data_kept"] == [True] * 6


def test_linux_6_1_ksm_merges_nothing_in_an_mte_vms_memslot() -> None:
    """Scenario: linux-6.1, the same equal pairs: KSM's write-protect reaches KVM's
    change_pte notifier, which before 2dbf12ae132c sanitised the page (tags cleared,
    PG_mte_tagged set) in an MTE VM, so even the slot's never-touched untagged pair stays
    apart, also once the VM is gone; memory outside any memslot merges as usual."""
    result = ksm_skips_tagged_pages(_kvm("linux-6.1"))
    assert result["merged.slot_untagged_4_5"] is False
    assert result["merged_writer_gone.slot_untagged_4_5"] is False
    assert result["merged.plain_pair"] is True
    assert result["from_guest_after"]["masks"][4:] == [ZEROS, ZEROS]  # cleared, not stale
