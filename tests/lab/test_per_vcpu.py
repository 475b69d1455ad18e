"""Question 2's invariants, on the quick lab's figures."""

from tagvisor.lab import Outcome


def test_the_heap_guest_boots_on_seed_v2_as_upstream(outcomes: dict[str, Outcome]) -> None:
    """Scenario: the heap guest built by the builder on seed-v2 (per-VCPU MTE) and on
    linux-6.13 (the VM cap): both end with status 0 and the same ucalls."""
    boot = outcomes["per-vcpu"].figures["boot"]
    assert boot["seed-v2"]["exit_status"] == boot["linux-6.13"]["exit_status"] == 0
    assert boot["seed-v2"]["ucalls"] == boot["linux-6.13"]["ucalls"]


def test_a_thread_is_protected_only_on_the_mte_vcpu(outcomes: dict[str, Outcome]) -> None:
    """Scenario: MTE on VCPU 0 only; use-after-free is caught on VCPU 0 every time, on
    VCPU 1 never, and memory tagged on VCPU 1 faults when used on VCPU 0."""
    thread = outcomes["per-vcpu"].figures["thread"]
    assert thread["uaf_caught_on_mte_vcpu"] == thread["allocations"]
    assert thread["uaf_caught_on_plain_vcpu"] == 0
    assert thread["false_faults"] == thread["allocations"]


def test_memory_is_promoted_as_soon_as_any_vcpu_has_mte(outcomes: dict[str, Outcome]) -> None:
    """Scenario: the VCPU without MTE first-touches pages; they are tag-initialised in
    a VM where another VCPU has MTE, and not in a VM where none has."""
    promotion = outcomes["per-vcpu"].figures["promotion"]
    assert promotion["some VCPU has MTE"] > 0
    assert promotion["no VCPU has MTE"] == 0


def test_the_migration_stream_loses_which_vcpus_had_mte(outcomes: dict[str, Outcome]) -> None:
    """Scenario: the machine shape a migration sends rebuilds MTE on every VCPU, and a
    seed-v2 destination refuses the VM (its admission asks for the VM cap)."""
    moved = outcomes["per-vcpu"].figures["migration"]["prot-mte+tco"]
    assert moved["source_vcpu_mte"] == [True, False]
    assert moved["rebuilt_vcpu_mte"] == [True, True]
    assert not moved["migrated"]
