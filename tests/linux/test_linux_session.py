"""A running MTE Linux guest, snapshotted, restored and live-migrated with every tag.

The oracle test boots the testbed once (Debian's 6.1 under QEMU's TCG) and, inside it,
the same kernel as tagvisor's guest on the real /dev/kvm with its MTE workload
(guests/linux/mte-workload.c, 64 MiB, 4,194,304 granules each with its own IRG tag).
The session (tagvisor.testbed.linux_session) saves the running guest to a file and
restores it into a new VM, then migrates that one over TCP into a third, in a process
of its own, while the workload keeps rewriting data and tags, and post-copies it back
into a fourth in the first process. About 1.5 minutes on this machine (87 s on
2026-12-03; 3.5 minutes before the migrations' two sides were two processes)
(docs/linux-guests.md has the figures). The other tests check the report's logic.
"""

from __future__ import annotations

from typing import Any

import pytest

from tagvisor.testbed.boot import SuiteRun
from tagvisor.testbed.linux_guest import linux_session
from tagvisor.testbed.session_report import failures, summary
from tests.support.testbed import run_or_fail

GRANULES = 64 << 16  # 64 MiB of 16-byte granules


def passing_step(**extra: Any) -> dict[str, Any]:
    step = {
        "digests_equal": True,
        "guest_verified_granules": GRANULES,
        "mismatches": 0,
        "bugs_caught": "2/2",
    }
    return {**step, **extra}


def passing_result() -> dict[str, Any]:
    return {
        "ready": {"granules": str(GRANULES), "mib": "64"},
        "snapshot": passing_step(save_seconds=20.0),
        "migration": passing_step(total_seconds=20.0, downtime_ms=380.0, tag_share=0.018),
        "postcopy": passing_step(digests_equal=None, postcopy_pages=100, mismatches=2),
        "exit": {"exit_status": 0, "system_event": 1},
        "boot_seconds": 6.0,
    }


def test_a_session_that_kept_every_tag_passes_and_reports_the_issues_keys() -> None:
    """Scenario: a session where both moves kept memory and tags, the guest verified
    every granule and caught both bugs each time, then powered off: no failures, and
    the summary has boot_seconds and the snapshot's and migration's figures."""
    result = passing_result()
    assert failures(result) == []
    figures = summary(result)
    assert figures["boot_seconds"] == 6.0
    assert figures["snapshot"]["digests_equal"] is True
    assert figures["snapshot"]["guest_verified_granules"] == GRANULES
    assert figures["migration"]["downtime_ms"] == 380.0
    assert figures["migration"]["tag_share"] == 0.018


@pytest.mark.parametrize(
    ("step", "change", "words"),
    [
        ("snapshot", {"digests_equal": False}, "memory and tags differ"),
        ("migration", {"mismatches": 3}, "3 mismatches"),
        ("migration", {"guest_verified_granules": 10}, "verified 10 of"),
        ("snapshot", {"bugs_caught": "1/2"}, "caught 1/2 bugs"),
    ],
)
def test_each_lost_tag_or_missed_bug_is_a_named_failure(
    step: str, change: dict[str, Any], words: str
) -> None:
    """Scenario: one thing wrong after one move (digests differ, a granule mismatched,
    fewer granules verified, a bug not caught): the failure names the step and what."""
    result = passing_result()
    result[step].update(change)
    problems = failures(result)
    assert len(problems) == 1
    assert step in problems[0]
    assert words in problems[0]


def test_a_session_that_stopped_says_why() -> None:
    """Scenario: the session ended early with an error: that error is the failure."""
    assert failures({"error": "WorkloadError: no READY"}) == [
        "the session stopped: WorkloadError: no READY"
    ]


@pytest.fixture(scope="module")
def session() -> SuiteRun:
    """One testbed boot on 6.1 running the whole session."""
    return run_or_fail(lambda: linux_session("6.1", say=print))


@pytest.mark.oracle
def test_a_running_linux_guest_keeps_every_tag_through_a_snapshot_and_a_migration(
    session: SuiteRun,
) -> None:
    """Scenario: in the testbed, tagvisor boots Debian's 6.1 with MTE and the workload
    (64 MiB, every granule tagged), snapshots it while the workload rewrites memory and
    restores it into a new VM, then live-migrates it into a third, in another process,
    with pre-copy, and from there into a fourth with post-copy. After the snapshot and
    the pre-copy the digests of memory and tags equal the source's at the switch; after
    each move the guest verifies all 4,194,304 granules with no mismatch, catches the
    use-after-free and the overflow with SEGV_MTESERR, and at the end exits and powers
    off."""
    assert session.status == 0, session.error
    result = session.result
    assert isinstance(result, dict)
    print({key: value for key, value in summary(result).items() if key != "glibc_mtag"})
    assert failures(result) == []
    assert result["ready"]["granules"] == str(GRANULES)


@pytest.mark.oracle
def test_the_restored_guests_timers_keep_ticking(session: SuiteRun) -> None:
    """Scenario: after the restore the workload's 5-second TICK (its uptime, read from
    the virtual counter) still comes, later in the guest's time than the last TICK
    before the pause; and the guest's clock stood still while it was saved and
    restored (KVM_REG_ARM_TIMER_CNT written back): its uptime moved by less than the
    wall-clock time between those two TICKs, which includes some 30 s of saving and
    restoring."""
    snapshot = session.result["snapshot"]
    guest_seconds = snapshot["tick_uptime"] - snapshot["tick_before"]
    assert guest_seconds > 0
    assert guest_seconds < snapshot["tick_wall_seconds"] - snapshot["save_seconds"]


@pytest.mark.oracle
def test_migration_sends_tags_at_most_one_32nd_of_the_page_bytes(session: SuiteRun) -> None:
    """Scenario: the tag bytes the migration sent are at most 1/32 of its page bytes
    (a page of 256 granules has 128 bytes of tags) and pages whose granules share a tag
    were sent as one byte each (uniform_tag_pages)."""
    migration = session.result["migration"]
    assert migration["tag_bytes"] <= migration["data_bytes"] / 32
    assert migration["uniform_tag_pages"] > 0


@pytest.mark.oracle
def test_glibcs_heap_tagging_catches_both_bugs_in_the_guest(session: SuiteRun) -> None:
    """Scenario: before the workload, /init ran glibc-mtag: with glibc.mem.tagging=3
    the nested guest's use-after-free ends in SIGSEGV with SEGV_MTESERR (9), with 1 in
    SEGV_MTEAERR (8), and with 0 nothing is caught."""
    lines = session.result["glibc_mtag"]
    assert any("tagging=3 BUG kind=uaf signal=11 code=9" in line for line in lines), lines
    assert any("tagging=1 BUG kind=uaf signal=11 code=8" in line for line in lines), lines
    assert any("tagging=0 BUG kind=uaf signal=0" in line for line in lines), lines


@pytest.mark.oracle
def test_qemu_refuses_to_migrate_the_mte_guest_and_migrates_it_without_mte(
    session: SuiteRun,
) -> None:
    """Scenario: in the same testbed boot, QEMU 10 + KVM boots the same kernel with
    mte=on to the /init marker (its guest lists mte); QMP migrate answers that MTE
    blocks migration, verbatim; with mte=off the same guest, its workload running
    untagged, migrates to a second QEMU and query-migrate reports the times."""
    qemu = session.result["qemu"]
    moved = session.result["qemu_nomte_migration"]
    print(f"QEMU {qemu['qemu_version']}: /init after {qemu['boot_seconds']} s; {moved}")
    assert qemu["boot_seconds"] > qemu["guest_uptime"] > 0
    assert " mte" in qemu["guest_features"]
    assert qemu["migrate"] == {
        "error": {"class": "GenericError", "desc": "Live migration disabled due to MTE enabled"}
    }
    assert moved["status"] == "completed"
    assert moved["workload"] is True
    assert moved["total_seconds"] > 0
    assert moved["downtime_ms"] >= 0
    # What each side's process spent of the two CPUs, as for tagvisor's migration.
    for figures in (moved, session.result["migration"]):
        assert figures["cpu_seconds"]["source"] > 0
        assert figures["cpu_seconds"]["destination"] > 0
    # And what the kernel's tag copies alone cost of tagvisor's (timed again after).
    copies = session.result["migration"]["tag_copies"]
    assert copies["from_guest_pages"] >= copies["to_guest_pages"] > 0
