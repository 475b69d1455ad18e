"""In the testbed image: a running MTE Linux guest of tagvisor, snapshotted, restored,
live-migrated, and its own workload checking every tag after each move.

One session, on this /dev/kvm (docs/linux-guests.md, "Snapshot and migration"):

1. boot the guest (its /init runs glibc-mtag, then mte-workload on the console) and
   wait for the workload's READY; ``verify``;
2. pause it with the workload still rewriting, save a snapshot, and restore that into a
   new VM: the digests of memory and tags must be equal; the restored guest verifies
   every granule, catches both bugs and keeps ticking;
3. live-migrate that guest over TCP on the loopback into a third VM (pre-copy on the
   dirty log, the workload rewriting all the while); the digests at the switch must be
   equal; the arrived guest verifies again, catches both bugs, and exits.

Standard library plus tagvisor (image side). The machines stay in this process: the
testbed has one host; what crosses is a file and a socket, as between two hosts.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Final

from tagvisor.kvm.api import Kvm
from tagvisor.migration.destination import incoming
from tagvisor.migration.source import migrate
from tagvisor.migration.transport import Listener, TcpAddress
from tagvisor.snapshot.guestpages import memory_digest
from tagvisor.snapshot.snapshot import restore_snapshot, save_snapshot
from tagvisor.testbed.workload import WorkloadConsole, WorkloadError
from tagvisor.vmm.linux.run import console_tail, run_linux
from tagvisor.vmm.machine import Machine, RunResult

#: How long one command may take in the nested guest (TCG runs the testbed's KVM).
COMMAND_SECONDS: Final = 120.0
#: The workload prints TICK every 5 s: waiting this long must see one.
TICK_SECONDS: Final = 12.0


class GuestThread:
    """A machine running on a thread of its own, so that this one can talk to it."""

    def __init__(self, machine: Machine, deadline: float) -> None:
        self.machine = machine
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(deadline,), daemon=True)
        self.thread.start()

    def _run(self, deadline: float) -> None:
        try:
            self.result = run_linux(self.machine, deadline)
        except BaseException as error:  # reported by pause() / join() on the caller's thread
            self.error = error

    def pause(self) -> RunResult:
        """Pause the guest and wait until its VCPUs are out of KVM_RUN."""
        while self.thread.is_alive():
            self.machine.pause()
            self.thread.join(0.05)
        return self.join(0)

    def join(self, timeout: float) -> RunResult:
        """Wait for the run to end by itself (power-off); its result, or its error."""
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise WorkloadError(
                f"the guest is still running after {timeout:g} s; its console's last lines:\n"
                f"{console_tail(self.machine)}"
            )
        return self.result


def _round(value: float) -> float:
    return round(value, 3)


def check_guest(console: WorkloadConsole, *, tick: bool) -> dict[str, Any]:
    """``verify`` and ``bugs`` on the running guest, and with ``tick`` a TICK too:
    the granules it checked, its mismatches and digest, the bugs it caught."""
    seconds, verified = console.command("verify", "VERIFIED", COMMAND_SECONDS)
    out: dict[str, Any] = {
        "verify_seconds": _round(seconds),
        "verified_granules": verified.number("granules"),
        "mismatches": verified.number("mismatches"),
        "guest_digest": verified.fields.get("digest", ""),
    }
    before = len(console.log)  # a TICK may come between the BUG lines
    _, bugs = console.command("bugs", "BUGS", COMMAND_SECONDS)
    out["bugs"] = [event.fields for _, event in console.log[before:] if event.kind == "BUG"]
    out["bugs_caught"] = bugs.fields.get("caught", "")
    if tick:
        at, event = console.wait("TICK", TICK_SECONDS)
        out["tick_uptime"] = float(event.text.strip())
        out["tick_at"] = at
    return out


def last_tick(console: WorkloadConsole) -> tuple[float, float] | None:
    """(when it came, the guest's uptime in it) of the last TICK so far."""
    ticks = [(at, event) for at, event in console.log if event.kind == "TICK"]
    return None if not ticks else (ticks[-1][0], float(ticks[-1][1].text.strip()))


def snapshot_step(
    kvm: Kvm,
    guest: GuestThread,
    console: WorkloadConsole,
    sink: Any,
    workdir: Path,
    deadline: float,
) -> tuple[GuestThread, dict[str, Any]]:
    """Pause the running guest, save it, restore it into a new VM, run and check it."""
    before = last_tick(console)
    started = time.monotonic()
    guest.pause()
    paused = time.monotonic()
    path = workdir / "linux-guest.snap"
    report = save_snapshot(guest.machine, path)
    saved = time.monotonic()
    restored = restore_snapshot(path, kvm, console=sink)
    loaded = time.monotonic()
    after = memory_digest(restored)
    out: dict[str, Any] = {
        "pause_seconds": _round(paused - started),
        "save_seconds": _round(saved - paused),
        "restore_seconds": _round(loaded - saved),
        "file_bytes": report.file_bytes,
        "pages_total": report.pages_total,
        "tag_bytes": report.stats.tag_bytes,
        "data_bytes": report.stats.data_bytes,
        "digest": report.digest,
        "digests_equal": after == report.digest,
    }
    console.send = restored.console_input
    follower = GuestThread(restored, deadline)
    out.update(check_guest(console, tick=True))
    out["guest_verified_granules"] = out.pop("verified_granules")
    if before is not None:
        # The guest's clock stood still while it was saved and restored: its uptime
        # moved less than the wall clock between the two TICKs (TIMER_CNT restored).
        out["tick_before"] = before[1]
        out["tick_wall_seconds"] = _round(out["tick_at"] - before[0])
    out.pop("tick_at")
    path.unlink()
    return follower, out


def migration_step(
    kvm: Kvm,
    guest: GuestThread,
    console: WorkloadConsole,
    sink: Any,
    deadline: float,
    *,
    postcopy: bool = False,
) -> tuple[GuestThread, dict[str, Any]]:
    """Live-migrate the running guest into a new VM over the loopback, then check it.
    With ``postcopy`` the guest moves after one pre-copy pass and the new VM runs
    while its missing pages come (userfaultfd); the digests are compared once the
    last page is in."""
    listener = Listener(TcpAddress("127.0.0.1", 0))
    arrived: dict[str, Any] = {}

    def receive() -> None:
        try:
            arrived["machine"], arrived["report"] = incoming(
                kvm, listener, console=sink, timeout=COMMAND_SECONDS
            )
        except BaseException as error:
            arrived["error"] = error

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    guest.pause()  # migrate() runs the guest itself while pre-copy goes on
    passes = 1 if postcopy else 8  # post-copy: switch after the first pass
    report = migrate(guest.machine, listener.address, postcopy=postcopy, max_iterations=passes)
    source_digest = memory_digest(guest.machine)
    receiver.join(COMMAND_SECONDS)
    if "error" in arrived:
        raise arrived["error"]
    machine: Machine = arrived["machine"]
    follower = None
    if postcopy:  # the guest runs here before its last pages are in
        follower = GuestThread(machine, deadline)
        arrived["report"].postcopy.join(COMMAND_SECONDS)
    out: dict[str, Any] = {
        # After post-copy the guest has run on while pages came: only its own
        # verify can tell whether every tag arrived.
        "digests_equal": None if postcopy else memory_digest(machine) == source_digest,
        "digest": source_digest,
        "total_seconds": _round(report.total_seconds),
        "downtime_ms": _round(report.downtime_seconds * 1000),
        "send_downtime_ms": _round(report.send_downtime_seconds * 1000),
        "downtime_phases_ms": {
            name: _round(seconds * 1000) for name, seconds in report.downtime_phases.items()
        },
        "destination_apply_ms": _round(arrived["report"].apply_seconds * 1000),
        "tag_share": round(report.tag_share, 5),
        "iterations": report.iterations,
        "pages_sent": report.pages_sent,
        "uniform_tag_pages": report.uniform_tag_pages,
        "data_bytes": report.data_bytes,
        "tag_bytes": report.tag_bytes,
        "wire_bytes": report.wire_bytes,
        "dirty_per_iteration": report.dirty_per_iteration,
        "guest_share": round(report.guest_share, 3),
    }
    if postcopy:
        out["postcopy_pages"] = report.postcopy_pages
        out["postcopy_requests"] = arrived["report"].postcopy.requests
    console.send = machine.console_input
    follower = follower or GuestThread(machine, deadline)
    out.update(check_guest(console, tick=False))
    out["guest_verified_granules"] = out.pop("verified_granules")
    return follower, out
