"""Question 6's invariants, on the quick lab's figures."""

from tagvisor.lab import Outcome


def test_a_logging_destination_on_6_12_gets_ebusy_for_every_tag_write(
    outcomes: dict[str, Outcome],
) -> None:
    """Scenario: a destination places tagged pages with logging on: 6.11 takes every
    tag write, 6.12 refuses each with EBUSY; placing first or toggling gets them in."""
    plans = outcomes["later-kernels"].figures["placing"]
    assert plans["6.11: place while logging"]["refused"] == 0
    busy = plans["6.12: place while logging"]
    assert busy["refused"] == busy["batches"]
    assert busy["pages_placed_with_tags"] == 0
    for plan in ("6.12: stop logging per batch", "6.12: place first, then log"):
        assert plans[plan]["pages_placed_with_tags"] == plans[plan]["pages"], plan
    assert plans["6.12: stop logging per batch"]["log_starts"] > busy["batches"]


def test_without_the_int_max_check_ioctl_reports_a_big_copy_wrongly(
    outcomes: dict[str, Outcome],
) -> None:
    """Scenario: one COPY_TAGS FROM_GUEST of 4 GiB: 6.1 fills the whole 256 MiB buffer
    but ioctl(2)'s int shows 0; 6.4 refuses with EINVAL and leaves the buffer alone."""
    copies = outcomes["later-kernels"].figures["big_copies"]
    old, new = copies["linux-6.1"][-1], copies["linux-6.4"][-1]
    assert old["length"] == 4 << 30
    assert old["buffer_bytes_written"] == old["buffer_bytes"]
    assert old["vmm_sees"] == 0
    assert new["vmm_sees"] == -22
    assert new["buffer_bytes_written"] == 0
