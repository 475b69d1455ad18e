"""Question 3's invariants, on the quick lab's figures."""

from tagvisor.lab import Outcome
from tagvisor.lab.q3_promotion import MOVES


def test_promoted_memory_keeps_its_tags_through_every_host_move(
    outcomes: dict[str, Outcome],
) -> None:
    """Scenario: a filled MTE guest is swapped out and in, migrated and CoW-copied by
    the host; no page's data or tags change, and swap keeps 128 bytes per page."""
    figures = outcomes["promotion"].figures
    moves = figures["moves"]["mte"]
    for move in MOVES:
        assert moves[f"{move}_pages_wrong"] == 0, move
    assert moves["swap_tag_bytes"] == 128 * figures["first_touch"]["pages"]


def test_first_touch_initialises_every_page_of_an_mte_vm_only(
    outcomes: dict[str, Outcome],
) -> None:
    """Scenario: a guest writes each page once; with MTE every page's tags are
    initialised once, without MTE none are."""
    touch = outcomes["promotion"].figures["first_touch"]
    assert touch["mte"]["pages_initialised"] > 0
    assert touch["plain"]["pages_initialised"] == 0


def test_opting_in_leaks_stale_tags_loses_them_or_faults_the_vmm(
    outcomes: dict[str, Outcome],
) -> None:
    """Scenario: under the opt-in profile, RAM the VMM forgot to map PROT_MTE shows a
    previous owner's tags and loses the guest's on swap; RAM it mapped PROT_MTE makes
    its plain DMA fault; Linux's promotion has none of the three."""
    risk = outcomes["promotion"].figures["hazards"]
    forgot, opted, linux = (
        risk["opt-in, forgotten"],
        risk["opt-in, PROT_MTE"],
        risk["promotion (Linux)"],
    )
    assert forgot["stale_pages"] == forgot["pages_lost_on_swap"] == forgot["pages"]
    assert opted["vmm_tag_faults_per_dma"] >= 1
    assert opted["stale_pages"] == opted["pages_lost_on_swap"] == 0
    assert linux["stale_pages"] == linux["pages_lost_on_swap"] == 0
    assert linux["vmm_tag_faults_per_dma"] == 0
