"""Question 5's invariants, on the quick lab's figures."""

from tagvisor.lab import Outcome
from tagvisor.lab.designs import DESIGNS


def test_the_dirty_log_repairs_torn_pairs_for_every_design(outcomes: dict[str, Outcome]) -> None:
    """Scenario: each design migrates the versioned churner pre-copy while it runs;
    the destination holds exactly the paused source's pages and tags."""
    for design in DESIGNS:
        assert outcomes["consistency"].figures["precopy"][design]["pages_differing"] == 0


def test_reading_while_the_guest_churns_tears_some_pairs(outcomes: dict[str, Outcome]) -> None:
    """Scenario: the VMM reads random pages of the churned range in two steps; the guest
    runs between them; over all designs and orders some pairs come out torn."""
    sampled = outcomes["consistency"].figures["sampled"]
    assert sum(sampled[d]["data-then-tags"] + sampled[d]["tags-then-data"] for d in DESIGNS)


def test_postcopy_without_atomic_placement_shows_zeroed_tags(outcomes: dict[str, Outcome]) -> None:
    """Scenario: post-copy places data (UFFDIO_COPY) then tags (COPY_TAGS); another VCPU
    touching a page in between sees it torn; the uffdio-copy-mte proposal has no window."""
    post = outcomes["consistency"].figures["postcopy"]
    plain, atomic = post["uffdio-copy + copy-tags"], post["uffdio-copy-mte"]
    assert plain["windows"] > 0
    assert plain["torn"] == plain["windows"]
    assert atomic["windows"] == atomic["torn"] == 0
    assert plain["pages_differing"] == atomic["pages_differing"] == 0
