"""The VCPU throttle (tagvisor.vmm.throttle): slices ended by kicks, rests owed per VCPU."""

from __future__ import annotations

import threading

import pytest

from tagvisor.vmm.throttle import Throttle


def test_a_throttled_machine_is_kicked_each_slice_and_each_vcpu_owes_one_rest() -> None:
    """Scenario: two VCPUs at a share of 0.5. The pacer marks both as owing a rest and
    kicks them (held there, so it marks nothing more); VCPU 0 takes its rest once (a
    pause cuts it short), a second call owes nothing, VCPU 1 still owes its own."""
    kicked, release = threading.Event(), threading.Event()

    def kick_all() -> None:
        kicked.set()
        release.wait(5.0)

    throttle = Throttle(2, kick_all)
    throttle.set(0.5)
    try:
        assert kicked.wait(5.0)
        assert throttle._owed == {0, 1}
        paused = threading.Event()
        paused.set()
        throttle.rest(0, paused)
        assert throttle._owed == {1}
        throttle.rest(0, paused)
        assert throttle._owed == {1}
    finally:
        throttle.set(1.0)
        release.set()


def test_at_full_speed_no_vcpu_rests_and_the_pacer_ends() -> None:
    """Scenario: throttled, then back to 1: the pacer thread ends and a VCPU's rest
    returns without sleeping (its event is never set, so a sleep would hang)."""
    throttle = Throttle(1, lambda: None)
    throttle.set(0.2)
    pacer = throttle._pacer
    assert pacer is not None
    throttle.set(1.0)
    pacer.join(5.0)
    assert not pacer.is_alive()
    throttle._owed.add(0)
    throttle.rest(0, threading.Event())  # share 1: no sleep
    assert throttle.share == 1.0


def test_a_share_outside_zero_to_one_is_refused() -> None:
    """Scenario: 0, a negative share and more than 1 are ValueErrors naming the range."""
    throttle = Throttle(1, lambda: None)
    for share in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            throttle.set(share)
