"""Live migration between the model and a real KVM VM in the testbed, both ways.

One boot per kernel (6.1 and 6.12, about 12 s each): the heap guest moves model ->
real and, separately, real -> model, each time paused in its use-after-free report and held
until it has arrived.
"""

from typing import Any

import pytest

from tagvisor.conformance.crossing import cross_backend_migration
from tests.support.testbed import run_or_fail

OVERFLOW = "ucall 1 211 "


@pytest.fixture(scope="module", params=["6.1", "6.12", "7.3"])
def crossing(request: pytest.FixtureRequest) -> dict[str, Any]:
    return run_or_fail(lambda: cross_backend_migration(request.param))


@pytest.mark.oracle
def test_a_guest_started_on_the_model_carries_on_in_a_real_kvm_vm(
    crossing: dict[str, Any],
) -> None:
    """Scenario: model source (host) -> real KVM destination (testbed) over TCP.

    The real VM's memory and tags equal the model's at the switch (SHA-256 of every
    page and tag); the guest then catches its overflow under real KVM and exits 0.
    """
    assert crossing["status"] == 0, crossing["error"]
    sent, arrived = crossing["host"]["model_to_real"], crossing["image"]["into_real"]
    assert arrived["arrival_digest"] == sent["source_digest"]
    assert arrived["overflow_at_destination"]
    assert any(line.startswith(OVERFLOW) for line in arrived["console"])
    assert (arrived["status"], arrived["error"]) == (0, None)


@pytest.mark.oracle
def test_a_guest_started_under_real_kvm_carries_on_in_the_model(
    crossing: dict[str, Any],
) -> None:
    """Scenario: real KVM source (testbed) -> model destination (host) over TCP.

    Registers the model lacks (FP/SIMD, timers, ID registers) are at reset values and
    are left behind; memory and tags arrive equal and the guest finishes on the model.
    """
    sent, arrived = crossing["image"]["out_of_real"], crossing["host"]["real_to_model"]
    assert arrived["arrival_digest"] == sent["source_digest"]
    assert arrived["overflow_at_destination"]
    assert (arrived["status"], arrived["error"]) == (0, None)
    assert arrived["console"] == crossing["image"]["into_real"]["console"]
