"""The sending side of live migration: pre-copy on the dirty log, tags with every page.

1. Connect, send HELO; the destination accepts or refuses before any page moves.
2. Turn on dirty logging and send every non-zero page (the destination starts zeroed).
3. While the guest runs, send what the dirty log (KVM's, OR the VMM's own writes) says
   changed, until little is left or the iterations run out. A tag store dirties its
   page like a data store, so retagged pages are resent with their new tags.
4. Pause the guest, send the last dirty pages, the VCPUs and the devices, END!, and
   wait for DONE. Downtime runs from the pause to DONE.

On any failure (refusal, a cut connection, a FAIL from the destination) the guest is
left as it was before the final pause, dirty logging off, and migrate() raises: the
caller resumes it and nothing is lost. On success the guest stays paused here: it now
lives on the destination.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.errors import TagvisorError
from tagvisor.migration import protocol
from tagvisor.migration.postcopy import encode_pending, final_reply, serve
from tagvisor.migration.transport import Connection, TcpAddress, connect
from tagvisor.snapshot import pages
from tagvisor.snapshot.container import END_TAG, write_header, write_section
from tagvisor.snapshot.guestpages import iter_runs, runs_of
from tagvisor.snapshot.pages import EncodeStats, Kind, PageRun
from tagvisor.snapshot.state import capture_devices, capture_machine, capture_vcpu
from tagvisor.vmm.machine import Machine, RunResult, RunState

#: Called with (iteration, pages sent so far, dirty pages left) after each batch.
Progress = Callable[[int, int, int], None]


class MigrationError(TagvisorError):
    """Migration did not complete; the source guest is intact and can be resumed."""


class MigrationRefused(MigrationError):
    """The destination refused before anything was sent (the reason is its words)."""


@dataclass
class MigrationReport:
    """What a migration did, for people (``summary``) and scripts (``as_dict``)."""

    iterations: int = 0
    pages_sent: int = 0
    zero_pages: int = 0
    uniform_tag_pages: int = 0
    data_bytes: int = 0
    tag_bytes: int = 0
    wire_bytes: int = 0
    compressed: bool = False
    postcopy: bool = False
    postcopy_pages: int = 0
    dirty_per_iteration: list[int] = field(default_factory=list)
    total_seconds: float = 0.0
    downtime_seconds: float = 0.0
    guest_exits_during: int = 0

    @property
    def throughput(self) -> float:
        """Bytes on the wire per second over the whole migration."""
        return self.wire_bytes / self.total_seconds if self.total_seconds else 0.0

    @property
    def tag_share(self) -> float:
        """Tag bytes as a share of page data bytes (at most 1/32 by construction)."""
        return self.tag_bytes / self.data_bytes if self.data_bytes else 0.0

    def add(self, stats: EncodeStats) -> None:
        self.pages_sent += stats.pages
        self.zero_pages += stats.zero_pages
        self.uniform_tag_pages += stats.uniform_tag_pages
        self.data_bytes += stats.data_bytes
        self.tag_bytes += stats.tag_bytes
        self.wire_bytes += stats.wire_bytes

    def as_dict(self) -> dict[str, Any]:
        value = asdict(self)
        value.update(throughput_bytes_per_second=self.throughput, tag_share=self.tag_share)
        return value


class _GuestRunner:
    """Runs the guest on a background thread while pre-copy goes on."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.result: RunResult | None = None
        self.thread = threading.Thread(target=self._run, name="guest", daemon=True)

    def _run(self) -> None:
        self.result = self.machine.run()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.machine.pause()
        self.thread.join()


def migrate(
    machine: Machine,
    address: TcpAddress,
    *,
    run_guest: bool = True,
    max_iterations: int = 8,
    stop_pages: int = 64,
    compress: bool = False,
    postcopy: bool = False,
    progress: Progress | None = None,
) -> MigrationReport:
    """Live-migrate ``machine`` to an ``incoming`` destination at ``address``.

    With ``postcopy`` the guest moves after ``max_iterations`` pre-copy passes and the
    destination fetches what is still missing on demand (see tagvisor.migration.
    postcopy); downtime is then the pause until the destination can resume.
    """
    if machine.state is RunState.STOPPED:
        raise MigrationError("the guest has stopped; there is nothing to migrate")
    report = MigrationReport(compressed=compress)
    started = time.perf_counter()
    conn = connect(address)
    runner: _GuestRunner | None = None
    try:
        write_header(conn, protocol.MAGIC, protocol.VERSION)
        hello = protocol.Hello(capture_machine(machine), compress)
        write_section(conn, b"HELO", hello.encode())
        tag, reply = protocol.read_reply(conn, (b"ACPT", b"RFSE"))
        if tag == b"RFSE":
            raise MigrationRefused(f"the destination refused: {reply.get('reason')}")
        memory = machine.memory
        memory.start_dirty_log()
        if run_guest:
            runner = _GuestRunner(machine)
            runner.start()
        exits_before = machine.exits
        for iteration in range(max_iterations):
            sent = _send_dirty(
                conn,
                machine,
                report,
                iteration,
                sparse=iteration == 0,
                compress=compress,
                progress=progress,
                live=runner is not None,
            )
            report.dirty_per_iteration.append(sent)
            report.iterations += 1
            protocol.send_json(conn, b"ITER", {"iteration": iteration, "pages": sent})
            if iteration and sent <= stop_pages:
                break
        paused = time.perf_counter()
        if runner is not None:
            runner.stop()
        report.guest_exits_during = machine.exits - exits_before
        if _stopped(machine):
            raise MigrationError("the guest stopped during migration; nothing to move")
        if postcopy:
            pending = [memory.take_dirty(region) for region in memory.regions]
        else:
            final = _send_dirty(
                conn,
                machine,
                report,
                report.iterations,
                sparse=False,
                compress=compress,
                progress=progress,
            )
            report.dirty_per_iteration.append(final)
        for index, vcpu in enumerate(machine.vcpus):
            write_section(conn, b"VCPU", capture_vcpu(index, vcpu).encode())
        write_section(conn, b"DEVS", capture_devices(machine).encode())
        if postcopy:
            write_section(conn, b"POST", encode_pending(pending))
            report.downtime_seconds = time.perf_counter() - paused
            report.postcopy = True
            report.postcopy_pages = sum(int(mask.sum()) for mask in pending)
            report.add(serve(conn, machine, pending, compress=compress))
            tag, payload = final_reply(conn)
            reply = {"reason": payload.decode(errors="replace")}
        else:
            protocol.send_json(conn, END_TAG, {"pages_sent": report.pages_sent})
            tag, reply = protocol.read_reply(conn, (b"DONE", b"FAIL"))
        if tag == b"FAIL":
            raise MigrationError(f"the destination failed: {reply.get('reason')}")
        if not postcopy:
            report.downtime_seconds = time.perf_counter() - paused
        report.total_seconds = time.perf_counter() - started
        return report
    except MigrationError:
        _back_out(machine, runner)
        raise
    except TagvisorError as error:
        _back_out(machine, runner)
        raise MigrationError(f"migration failed, the guest is intact here: {error}") from error
    finally:
        conn.close()


def _back_out(machine: Machine, runner: _GuestRunner | None) -> None:
    if runner is not None and runner.thread.is_alive():
        runner.stop()
    machine.memory.stop_dirty_log()


def _send_dirty(
    conn: Connection,
    machine: Machine,
    report: MigrationReport,
    iteration: int,
    *,
    sparse: bool,
    compress: bool,
    progress: Progress | None,
    live: bool = False,
) -> int:
    """Send every page the dirty log reports (all non-zero ones when ``sparse``)."""
    sent = 0
    for region in machine.memory.regions:
        dirty = machine.memory.take_dirty(region)
        remaining = int(dirty.sum())
        for run in iter_runs(machine, region, dirty, live=live):
            selected = _selection(run, sparse)
            for first, count in runs_of(selected, pages.MAX_PAGES):
                part = PageRun(
                    run.gpa + first * PAGE_SIZE,
                    run.data[first : first + count],
                    run.tags[first : first + count],
                )
                payload, stats = pages.encode_parts(part, compress=compress)
                write_section(conn, b"PAGE", payload)
                report.add(stats)
            sent += run.npages
            remaining -= run.npages
            if progress is not None:
                progress(iteration, report.pages_sent, remaining)
    return sent


def _stopped(machine: Machine) -> bool:
    # The guest thread changes the state behind the type checker's back.
    state: RunState = machine.state
    return state is RunState.STOPPED


def _selection(run: PageRun, sparse: bool) -> NDArray[np.bool_]:
    if not sparse:
        return np.ones(run.npages, bool)
    selected: NDArray[np.bool_] = pages.classify(run.data, run.tags) != Kind.ZERO
    return selected
