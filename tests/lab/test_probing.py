"""Question 1's invariants, on the quick lab's figures."""

from tagvisor.lab import Outcome
from tagvisor.lab.q1_probing import HOSTS


def _results(outcomes: dict[str, Outcome]) -> dict[str, dict[str, dict[str, object]]]:
    results: dict[str, dict[str, dict[str, object]]] = outcomes["probing"].figures["results"]
    return results


def test_the_capability_is_one_ioctl_and_cannot_tell_the_level(
    outcomes: dict[str, Outcome],
) -> None:
    """Scenario: KVM_CHECK_EXTENSION on hosts without MTE, with MTE2 and with MTE3:
    one ioctl each, presence always right upstream, the level never told."""
    for host, _, _ in HOSTS:
        figures = _results(outcomes)["capability"][f"linux-6.13 / {host}"]
        assert figures["ioctls"] == 1
        assert figures["presence_right"]
        assert not figures["level_right"]


def test_only_a_vcpus_id_register_tells_mte3_from_mte2(outcomes: dict[str, Outcome]) -> None:
    """Scenario: the capability plus a scratch VCPU's ID_AA64PFR1_EL1 on an MTE3 host
    reads level 3 (asymmetric mode available) at several ioctls' cost."""
    figures = _results(outcomes)["cap + ID register"]["linux-6.13 / MTE3"]
    assert figures["answer_level"] == 3
    assert int(str(figures["ioctls"])) > 1


def test_the_seed_feature_bit_misleads_on_upstream_and_the_cap_on_seed_v2(
    outcomes: dict[str, Outcome],
) -> None:
    """Scenario: feature bit 7 on an upstream MTE host (it is HAS_EL2 there) and the
    capability on a seed-v2 MTE host: both say there is no MTE."""
    results = _results(outcomes)
    assert not results["scratch VCPU feature"]["linux-6.13 / MTE2"]["presence_right"]
    assert not results["capability"]["seed-v2 / MTE2"]["presence_right"]
    assert results["scratch VCPU feature"]["seed-v2 / MTE3"]["answer_level"] == 3
