"""The churn guest, the load for snapshot and migration tests, under QEMU: it runs the
rounds its boot block asks for (or until stopped), finds every tag and word it wrote
intact, and its transcript is a function of its seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tagvisor.arch import TagCheckMode
from tests.oracle_system.conftest import boot, completed
from tests.support import guest_reports as rid
from tests.support.guests import DEFAULT_SEED, BootConfig

pytestmark = pytest.mark.oracle

SLOTS = 64
REGION_SIZE = 4 << 20


@pytest.mark.parametrize("mode", [TagCheckMode.SYNC, TagCheckMode.ASYNC], ids=["sync", "async"])
def test_churn_runs_the_requested_rounds_with_no_tag_fault(
    qemu_system: Path, mode: TagCheckMode
) -> None:
    """Scenario: churn with boot argument 300 (rounds), in sync and in async mode:
    more rounds than the region has stripes, so written stripes come round again and
    are verified. Each round reports its number, at most 64 live allocations and a
    clear TFSR_EL1; there is no assert, and it exits 0 after exactly 300 rounds."""
    transcript = completed("churn", BootConfig(mode=mode, arg=300))
    _region, size, rounds, seed = transcript.report(rid.CHURN_INIT)
    assert (size, rounds, seed) == (REGION_SIZE, 300, DEFAULT_SEED)
    reports = transcript.reports(rid.CHURN_ROUND)
    assert [r[0] for r in reports] == list(range(300))
    assert all(0 < live <= SLOTS and tfsr == 0 for _, live, _, _, tfsr in reports)
    assert transcript.assertions == []
    assert transcript.done == 0


def test_churn_transcript_is_a_function_of_the_seed(qemu_system: Path) -> None:
    """Scenario: churn twice with IRG seed 0x1234 and once with 0x4321, 20 rounds each.
    The two runs with the same seed print the same transcript byte for byte (what a
    restored or migrated run is compared with); the other seed changes the sums."""
    first = completed("churn", BootConfig(arg=20, seed=0x1234))
    again = completed("churn", BootConfig(arg=20, seed=0x1234))
    other = completed("churn", BootConfig(arg=20, seed=0x4321))
    assert first.text == again.text
    sums = [r[2:4] for r in first.reports(rid.CHURN_ROUND)]
    assert sums != [r[2:4] for r in other.reports(rid.CHURN_ROUND)]


def test_churn_with_zero_rounds_runs_until_stopped(qemu_system: Path) -> None:
    """Scenario: churn with boot argument 0 (run forever), stopped after 1.5 s. It has
    not powered off or made UCALL_DONE, and its round reports count up from 0 without
    a gap."""
    run = boot("churn", BootConfig(arg=0), stop_after=1.5)
    assert not run.powered_off
    rounds = [r[0] for r in run.transcript.reports(rid.CHURN_ROUND)]
    assert len(rounds) > 10
    assert rounds == list(range(len(rounds)))
    assert run.transcript.done is None
