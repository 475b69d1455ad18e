"""In the testbed image: a running MTE Linux guest of tagvisor, snapshotted, restored,
live-migrated, and its own workload checking every tag after each move.

One session, on this /dev/kvm (docs/linux-guests.md, "Snapshot and migration"):

1. boot the guest (its /init runs glibc-mtag, then mte-workload on the console) and
   wait for the workload's READY; ``verify``;
2. pause it with the workload still rewriting, save a snapshot, and restore that into a
   new VM: the digests of memory and tags must be equal; the restored guest verifies
   every granule, catches both bugs and keeps ticking;
3. live-migrate that guest over TCP on the loopback into a third VM, in a process of
   its own (tagvisor.testbed.vm_process), pre-copy on the dirty log with the workload
   rewriting all the while; the digests at the switch must be equal; the arrived
   guest verifies again and catches both bugs;
4. post-copy it back into a fourth VM in this process, which runs the guest while its
   missing pages come; it verifies every granule again, catches both bugs, and exits.

Standard library plus tagvisor (image side). What crosses between VMs is a file and a
socket, as between two hosts; the migrations' two sides are two processes, as two
VMMs on two hosts (and QEMU's pair) are.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from tagvisor.kvm.api import Kvm
from tagvisor.migration.destination import incoming
from tagvisor.migration.source import migrate
from tagvisor.migration.transport import Listener, TcpAddress
from tagvisor.snapshot.guestpages import memory_digest
from tagvisor.snapshot.snapshot import restore_snapshot, save_snapshot
from tagvisor.testbed.cpu_time import cpu_seconds
from tagvisor.testbed.guest_thread import COMMAND_SECONDS, GuestThread
from tagvisor.testbed.session_report import migration_figures, rounded
from tagvisor.testbed.tag_costs import tag_copy_costs
from tagvisor.testbed.vm_process import START_SECONDS, VmProcess
from tagvisor.testbed.workload import WorkloadConsole

#: The workload prints TICK every 5 s: waiting this long must see one.
TICK_SECONDS: Final = 12.0


def check_guest(console: WorkloadConsole, *, tick: bool) -> dict[str, Any]:
    """``verify`` and ``bugs`` on the running guest, and with ``tick`` a TICK too:
    the granules it checked, its mismatches and digest, the bugs it caught."""
    seconds, verified = console.command("verify", "VERIFIED", COMMAND_SECONDS)
    out: dict[str, Any] = {
        "verify_seconds": rounded(seconds),
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
        "pause_seconds": rounded(paused - started),
        "save_seconds": rounded(saved - paused),
        "restore_seconds": rounded(loaded - saved),
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
        out["tick_wall_seconds"] = rounded(out["tick_at"] - before[0])
    out.pop("tick_at")
    path.unlink()
    return follower, out


def precopy_step(guest: GuestThread, console: WorkloadConsole, vm: VmProcess) -> dict[str, Any]:
    """Live-migrate the running guest (pre-copy) into the VM of ``vm``'s process over
    the loopback, compare the digests at the switch, then check the guest there."""
    port = vm.wait("listening", START_SECONDS)
    guest.pause()  # migrate() runs the guest itself while pre-copy goes on
    cpu_before = cpu_seconds()
    report = migrate(guest.machine, TcpAddress("127.0.0.1", port), max_iterations=8)
    cpu_spent = cpu_seconds() - cpu_before
    source_digest = memory_digest(guest.machine)
    arrived = vm.wait("arrived", COMMAND_SECONDS)
    out = migration_figures(report)
    cpu = {"source": cpu_spent, "destination": arrived["cpu_seconds"]}
    out["cpu_seconds"] = {side: round(seconds, 2) for side, seconds in cpu.items()}
    out["tag_copies"] = tag_copy_costs(guest.machine)  # paused here, moved: a rerun
    out["digests_equal"] = arrived["digest"] == source_digest
    out["digest"] = source_digest
    out["destination_apply_ms"] = rounded(arrived["apply_seconds"] * 1000)
    return _checked_after_move(out, console, vm.console_input)


def postcopy_step(
    kvm: Kvm, vm: VmProcess, console: WorkloadConsole, sink: Any, deadline: float
) -> tuple[GuestThread, dict[str, Any]]:
    """Move the guest from ``vm``'s process back into a new VM here, post-copy after
    one pre-copy pass: the guest runs here while its missing pages come
    (userfaultfd); once the last is in, it verifies every granule."""
    listener = Listener(TcpAddress("127.0.0.1", 0))
    vm.migrate_to(listener.address.port, postcopy=True, passes=1)
    machine, report = incoming(kvm, listener, console=sink, timeout=COMMAND_SECONDS)
    follower = GuestThread(machine, deadline)  # before its last pages are here
    assert report.postcopy is not None
    report.postcopy.join(COMMAND_SECONDS)
    out = vm.wait("migrated", COMMAND_SECONDS)
    vm.close()
    # The guest has run on while its pages came: only its own verify can tell whether
    # every tag arrived.
    out["digests_equal"] = None
    out["destination_apply_ms"] = rounded(report.apply_seconds * 1000)
    out["postcopy_requests"] = report.postcopy.requests
    return follower, _checked_after_move(out, console, machine.console_input)


def _checked_after_move(
    out: dict[str, Any], console: WorkloadConsole, send: Callable[[bytes], None]
) -> dict[str, Any]:
    """``out`` with the moved guest's own check (verify, bugs): ``send`` reaches its
    console now."""
    console.send = send
    out.update(check_guest(console, tick=False))
    out["guest_verified_granules"] = out.pop("verified_granules")
    return out
