"""The switchover handshake: whichever message is lost, the guest never runs on both
sides, and it runs on the destination only after the source committed."""

from __future__ import annotations

import pytest

from tagvisor.migration import (
    IncomingError,
    MigrationCommitted,
    MigrationError,
    PostcopyError,
    migrate,
)
from tagvisor.vmm import RunState
from tests.migration.conftest import Destination, source_machine
from tests.migration.faults import LoseSection


def test_a_lost_ready_leaves_the_guest_at_the_source_and_none_at_the_destination(
    destination: Destination,
) -> None:
    """Scenario: the destination's REDY (it has everything, paused) never arrives.
    The source has not committed: migrate() fails saying the guest is intact, and the
    guest runs on here; the destination never got CMIT and discards its copy."""
    source = source_machine()
    destination.start()
    proxy = LoseSection(destination.address, b"REDY", toward="source")
    with pytest.raises(MigrationError, match="intact"):
        migrate(source, proxy.address, run_guest=False)
    destination.join()
    assert proxy.lost.is_set()
    assert destination.machine is None
    assert isinstance(destination.error, IncomingError)
    assert "never committed" in str(destination.error)
    assert source.run(max_exits=3).state is RunState.PAUSED  # it carries on here


def test_a_lost_commit_leaves_the_guest_paused_at_the_source_and_never_run_twice(
    destination: Destination,
) -> None:
    """Scenario: the source's CMIT is lost with the link. The source committed, so
    it reports an unconfirmed migration and keeps the guest paused, never resumed;
    the destination, without the commit, discards its copy: the guest runs nowhere
    twice (and is still whole, paused, at the source)."""
    source = source_machine()
    destination.start()
    proxy = LoseSection(destination.address, b"CMIT", toward="destination")
    report = migrate(source, proxy.address, run_guest=False)
    destination.join()
    assert proxy.lost.is_set()
    assert not report.confirmed
    assert any("must not be resumed" in note for note in report.notes)
    assert source.state is RunState.PAUSED
    assert destination.machine is None
    assert "never committed" in str(destination.error)


def test_a_lost_done_leaves_the_guest_running_at_the_destination_only(
    destination: Destination,
) -> None:
    """Scenario: the destination's DONE, sent after the commit, is lost. The guest is
    the destination's and runs there; the source knows it committed and reports the
    missing confirmation instead of claiming the guest is intact here."""
    source = source_machine()
    destination.start()
    proxy = LoseSection(destination.address, b"DONE", toward="source")
    report = migrate(source, proxy.address, run_guest=False)
    destination.join()
    assert not report.confirmed
    assert destination.error is None
    machine = destination.resume_guest()
    assert machine.run(max_exits=5).state is RunState.PAUSED


def test_a_whole_migration_is_confirmed(destination: Destination) -> None:
    """Scenario: nothing is lost: REDY, CMIT and DONE all pass, and the report says
    the destination confirmed."""
    destination.start()
    report = migrate(source_machine(), destination.address, run_guest=False)
    destination.join()
    assert report.confirmed
    assert not report.notes
    assert destination.machine is not None


def test_a_postcopy_whose_source_vanishes_fails_by_name_and_ends_its_thread(
    destination: Destination,
) -> None:
    """Scenario: post-copy commits, then the link goes down before the first pushed
    page. The source, having committed, says the guest is the destination's now
    (MigrationCommitted), not that it is intact; the destination's receiver fails
    with a PostcopyError that names the cause's type, and its thread has ended."""
    source = source_machine()
    destination.start()
    proxy = LoseSection(destination.address, b"PAGE", toward="destination", after=b"CMIT")
    with pytest.raises(MigrationCommitted):
        migrate(source, proxy.address, run_guest=True, max_iterations=1, postcopy=True)
    destination.join()
    assert destination.report is not None
    receiver = destination.report.postcopy
    assert receiver is not None
    with pytest.raises(PostcopyError, match=r"\((FormatError|TransportError)\)"):
        receiver.join(10)
    assert not receiver.thread.is_alive()
