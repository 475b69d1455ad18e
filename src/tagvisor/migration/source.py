"""The sending side of live migration: pre-copy on the dirty log, tags with every page.

1. Connect, send HELO; the destination accepts or refuses before any page moves.
2. Turn on dirty logging and send every non-zero page (the destination starts zeroed);
   pages that never had memory behind them are not even read.
3. While the guest runs, send what the dirty log (KVM's, OR the VMM's own writes) says
   changed, until little is left or the iterations run out. A tag store dirties its
   page like a data store, so retagged pages are resent with their new tags. A guest
   that dirties pages faster than they go is throttled (auto-converge).
4. Wait until the destination has applied everything sent so far (its ITER echo),
   pause the guest, send the last dirty pages, the VCPUs and the devices, END!, and
   wait for DONE. Downtime runs from the pause to DONE.

Pages are read and encoded on the calling thread while a sender thread writes the
previous sections (see tagvisor.migration.pipeline); scattered dirty pages travel
several to a section (SKIP kinds, tagvisor.snapshot.pages).

On any failure (refusal, a cut connection, a FAIL from the destination) the guest is
left as it was before the final pause, dirty logging off, and migrate() raises: the
caller resumes it and nothing is lost. On success the guest stays paused here, its
slots no longer logging: it now lives on the destination.
"""

from __future__ import annotations

import gc
import json
import queue
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
from tagvisor.migration.pipeline import SectionSender
from tagvisor.migration.postcopy import encode_pending, final_reply, serve
from tagvisor.migration.transport import Connection, TcpAddress, connect
from tagvisor.snapshot.container import END_TAG, write_header, write_section
from tagvisor.snapshot.guestpages import PageBuffers, read_window, windows_of
from tagvisor.snapshot.pages import MAX_PAGES, EncodeStats, encode_parts
from tagvisor.snapshot.registry import REGISTRY, Phase, Preread
from tagvisor.snapshot.state import capture_machine
from tagvisor.vmm.machine import Machine, RunResult, RunState

#: Called with (iteration, pages sent so far, dirty pages left) after each batch.
Progress = Callable[[int, int, int], None]


class MigrationError(TagvisorError):
    """Migration did not complete; the source guest is intact and can be resumed."""


class MigrationCommitted(TagvisorError):
    """The migration failed after the source committed: the guest is the destination's
    now, and the source must not resume it."""


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
    #: From the pause until the destination confirmed it has everything (DONE).
    downtime_seconds: float = 0.0
    #: From the pause until the last byte was handed to the socket: downtime as QEMU
    #: reports it (its source does not wait for the destination), for comparisons.
    send_downtime_seconds: float = 0.0
    #: Where the downtime went, in order, seconds each: ``stop`` (the guest's thread
    #: out of KVM_RUN), ``state`` (registers and devices read and sent, kind by kind),
    #: ``pages`` (the last dirty pages sent), ``send`` (END! or POST handed to the socket),
    #: ``destination`` (until its REDY: it has applied everything), ``commit`` (CMIT
    #: until DONE). Post-copy has no ``pages`` and ends at REDY.
    downtime_phases: dict[str, float] = field(default_factory=dict)
    guest_exits_during: int = 0
    #: The share of time the guest ran at the end of pre-copy (below 1: throttled).
    guest_share: float = 1.0
    #: Whether the destination confirmed the commit with DONE.
    confirmed: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Bytes on the wire per second over the whole migration."""
        return self.wire_bytes / self.total_seconds if self.total_seconds else 0.0

    @property
    def tag_share(self) -> float:
        """Tag bytes as a share of page data bytes (at most 1/32 by construction)."""
        return self.tag_bytes / self.data_bytes if self.data_bytes else 0.0

    def add(self, stats: EncodeStats) -> None:
        """Add the cost of encoded pages (``EncodeStats``) to the totals."""
        self.pages_sent += stats.pages
        self.zero_pages += stats.zero_pages
        self.uniform_tag_pages += stats.uniform_tag_pages
        self.data_bytes += stats.data_bytes
        self.tag_bytes += stats.tag_bytes
        self.wire_bytes += stats.wire_bytes

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict, ``throughput_bytes_per_second`` and ``tag_share``
        included."""
        value = asdict(self)
        value.update(throughput_bytes_per_second=self.throughput, tag_share=self.tag_share)
        return value


class _GuestRunner:
    """Runs the guest on a background thread while pre-copy goes on.

    Throttled (``share`` below 1), the machine runs its VCPUs ``share`` of the time in
    10 ms slices (Machine.throttle, as QEMU's auto-converge throttles VCPUs): the
    guest slows down, nothing else about it changes. Stopping the runner ends the
    throttle: a guest that stays here after a failed migration runs at full speed.
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.result: RunResult | None = None
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="guest", daemon=True)

    @property
    def share(self) -> float:
        """The share of the time the guest runs (1 unless throttled)."""
        return self.machine.run_share

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.result = self.machine.run()
            if self.result.state is RunState.STOPPED:
                return

    def start(self) -> None:
        self.thread.start()

    def throttle(self, share: float) -> None:
        """Let the guest run only ``share`` (0 to 1) of the time from now on."""
        self.machine.throttle(share)

    def stop(self) -> None:
        self._stopping.set()
        while self.thread.is_alive():  # a pause can race with a run() starting
            self.machine.pause()
            self.thread.join(0.05)
        self.machine.throttle(1.0)


#: Pages per PAGE section at most: few enough that reading, sending, receiving and
#: placing overlap well (and that staging buffers stay small), enough to amortise the
#: work done per section.
SECTION_PAGES = 4096
#: Clean pages in a row that end a section. Scattered dirty pages share a section
#: (a window of up to MAX_PAGES pages) for a byte per page left out (SKIP), which costs
#: far less than a section of their own.
MAX_GAP = MAX_PAGES
#: A paused guest's whole window is sent from its memory in place, split into a section
#: per span of it the VMM can view at once (tagvisor.vmm.memory.view_spans), when the
#: spans are this many pages long on average; else it is copied into a staging buffer
#: first. A copy into a buffer used for the first time costs that buffer's page faults:
#: 16 MiB, 40 ms on a VM whose hypervisor reclaims freed memory.
MIN_SPAN = 64
#: Sections queued for sending at most, beyond the one being sent.
SEND_DEPTH = 3
#: Auto-converge: a pass should find at most this share of the previous pass's pages
#: dirty again; when the guest dirties more, its running share is cut in proportion.
CONVERGE_RATIO = 0.25
#: The least share of the time a throttled guest still runs.
MIN_SHARE = 0.05


class _Staging:
    """Page buffers for sections in flight: a queued section's copies stay untouched
    until the sender thread has sent it, then are reused (no per-section allocation)."""

    def __init__(self, count: int, npages: int) -> None:
        self._free: queue.Queue[PageBuffers] = queue.Queue()
        for _ in range(count):
            self._free.put(PageBuffers(npages))

    def take(self) -> PageBuffers:
        return self._free.get()

    def give(self, buffers: PageBuffers) -> None:
        self._free.put(buffers)


@dataclass(frozen=True)
class Options:
    """How a migration runs (the keyword arguments of :func:`migrate`)."""

    run_guest: bool = True
    max_iterations: int = 8
    stop_pages: int = 64
    compress: bool = False
    postcopy: bool = False
    auto_converge: bool = True
    progress: Progress | None = None
    postcopy_bandwidth: int | None = None


def migrate(
    machine: Machine,
    address: TcpAddress,
    *,
    run_guest: bool = True,
    max_iterations: int = 8,
    stop_pages: int = 64,
    compress: bool = False,
    postcopy: bool = False,
    auto_converge: bool = True,
    progress: Progress | None = None,
    postcopy_bandwidth: int | None = None,
) -> MigrationReport:
    """Live-migrate ``machine`` to an ``incoming`` destination at ``address``.

    With ``postcopy`` the guest moves after ``max_iterations`` pre-copy passes and the
    destination fetches what is still missing on demand (see tagvisor.migration.
    postcopy); downtime is then the pause until the destination can resume. With
    ``auto_converge`` a running guest that dirties pages faster than pre-copy sends
    them is throttled (``report.guest_share`` is the share of time it kept).
    ``postcopy_bandwidth`` caps the background push of post-copy in bytes per second
    (QEMU's max-postcopy-bandwidth); pages the destination asks for go at once.
    """
    if postcopy_bandwidth is not None and postcopy_bandwidth <= 0:
        raise MigrationError(
            f"the post-copy bandwidth must be a positive number of bytes per second, "
            f"not {postcopy_bandwidth}: nothing was sent"
        )
    if machine.state is RunState.STOPPED:
        raise MigrationError("the guest has stopped; there is nothing to migrate")
    options = Options(
        run_guest,
        max_iterations,
        stop_pages,
        compress,
        postcopy,
        auto_converge,
        progress,
        postcopy_bandwidth,
    )
    try:
        conn = connect(address)
    except TagvisorError as error:
        raise MigrationError(f"{error}: nothing was sent") from error
    outgoing = _Outgoing(machine, conn, options)
    try:
        outgoing.handshake()
        outgoing.precopy()
        outgoing.switchover()
        return outgoing.complete()
    except MigrationError:
        outgoing.back_out()
        raise
    except TagvisorError as error:
        outgoing.back_out()
        raise MigrationError(f"migration failed, the guest is intact here: {error}") from error
    except BaseException:  # Ctrl-C, or a bug: still leave the guest as it was
        outgoing.back_out()
        raise
    finally:
        outgoing.close()


class _Outgoing:
    """The source side of one migration, in QEMU's phases: the handshake (setup),
    pre-copy passes while the guest runs (iterate), the switchover (the pause and the
    last pass) and completion (registers, devices, the destination's DONE)."""

    def __init__(self, machine: Machine, conn: Connection, options: Options) -> None:
        self.machine = machine
        self.conn = conn
        self.options = options
        self.report = MigrationReport(compressed=options.compress)
        self.started = time.perf_counter()
        self.runner: _GuestRunner | None = None
        self.sender: SectionSender | None = None
        self.paused = 0.0
        #: When the last downtime phase ended (``_phase``).
        self._mark = 0.0
        self.pending: list[NDArray[np.bool_]] = []
        #: Whether the destination speaks the switchover handshake (1.2 and later).
        self.commits = False
        #: Whether the guest was handed over: after this it is never resumed here.
        self.committed = False
        #: Whether collection was on before the pause turned it off (to turn it back).
        self._collecting = False
        #: What REGISTRY.prepare read of the machine before the pause (``precopy``).
        self.preread = Preread()
        self.exits_before = machine.exits

    def handshake(self) -> None:
        """HEADER and HELO; the destination accepts or refuses before any page moves."""
        write_header(self.conn, protocol.MAGIC, protocol.VERSION)
        # The first pass sends the pages with memory behind them (less the zero ones):
        # the destination faults in that much fresh memory ahead of them.
        memory = self.machine.memory
        expected = sum(
            int(np.count_nonzero(memory.populated(region.gpa, region.npages)))
            for region in memory.regions
        )
        hello = protocol.Hello(capture_machine(self.machine), self.options.compress, expected)
        write_section(self.conn, b"HELO", hello.encode())
        self.conn.set_deadline(protocol.HANDSHAKE_SECONDS, "the handshake")
        tag, reply = protocol.read_reply(self.conn, (b"ACPT", b"RFSE"))
        self.conn.set_deadline(None)
        if tag == b"RFSE":
            raise MigrationRefused(f"the destination refused: {protocol.reason(reply)}")
        self.commits = _minor(reply.get("version")) >= protocol.COMMIT_SINCE
        self.sender = SectionSender(self.conn, SEND_DEPTH)
        self.pass_ = _Pass(self.sender, self.machine, self.report, self.options)

    def precopy(self) -> None:
        """Dirty logging on, the guest running: pass after pass until few pages are
        left or the passes run out, throttling a guest that outruns them."""
        assert self.sender is not None
        # Read now, while no thread is in KVM_RUN (a VCPU's ioctls wait for its run to
        # end): the register lists and constant registers the pause need not read.
        self.preread = REGISTRY.prepare(self.machine)
        self.machine.memory.start_dirty_log()
        if self.options.run_guest:
            self.runner = _GuestRunner(self.machine)
            self.runner.start()
        self.exits_before = self.machine.exits
        for iteration in range(self.options.max_iterations):
            sent = self._iterate(iteration)
            if iteration and sent <= self.options.stop_pages:
                break

    def _iterate(self, iteration: int) -> int:
        """One pass: what the log says changed, then ITER; returns the pages sent."""
        assert self.sender is not None
        report, runner, options = self.report, self.runner, self.options
        dirty = self.pass_.collect(first=iteration == 0)
        sent = _count(dirty)
        if options.auto_converge and runner is not None and report.dirty_per_iteration:
            ratio = sent / max(1, report.dirty_per_iteration[-1])
            if sent > options.stop_pages and ratio > CONVERGE_RATIO:
                runner.throttle(max(MIN_SHARE, runner.share * CONVERGE_RATIO / ratio))
        if runner is not None:
            report.guest_share = runner.share
            if iteration and sent <= options.stop_pages and runner.share < 1.0:
                # The last pass before the pause: what the guest dirties while it is
                # sent and applied is paid in the pause, page by page (some 1.5 ms
                # each under nested TCG), so it runs at the least share from here.
                runner.throttle(MIN_SHARE)
        self.pass_.send(dirty, iteration, first=iteration == 0, live=runner is not None)
        report.dirty_per_iteration.append(sent)
        report.iterations += 1
        self.sender.send(b"ITER", _json({"iteration": iteration, "pages": sent}))
        return sent

    def switchover(self) -> None:
        """Once the destination has caught up (its ITER echo), pause the guest and send
        the last dirty pages; for post-copy, note which pages it still lacks."""
        report, runner = self.report, self.runner
        # No garbage collection in the pause: a collection of the VMM's heap takes
        # milliseconds (30 to 50 ms in all over a 1 GiB migration), more than the pause.
        self._collections_off()
        if report.iterations:  # once the destination has caught up, the pause is short
            if runner is not None and runner.share < 1.0:
                runner.throttle(MIN_SHARE)  # what it dirties meanwhile is paid in the pause
            _await_echo(self.conn, report.iterations - 1)
        self.paused = self._mark = time.perf_counter()
        if runner is not None:
            runner.stop()
        self._phase("stop")
        report.guest_exits_during = self.machine.exits - self.exits_before
        if _stopped(self.machine):
            raise MigrationError("the guest stopped during migration; nothing to move")
        # The paused machine's registers and devices no longer change: read them now,
        # while the sender thread is idle (a real VCPU has some 250 registers, and two
        # threads trading the GIL slow both), and send each kind's sections as soon as
        # they are read, from this thread: the destination decodes them meanwhile.
        assert self.sender is not None
        for sections in REGISTRY.save_each(self.machine, Phase.COMPLETE, self.preread):
            if sections:
                self.sender.send_now(sections)
        self._phase("state")
        memory = self.machine.memory
        if self.options.postcopy:
            self.pending = [memory.take_dirty(region) for region in memory.regions]
        else:
            dirty = self.pass_.collect(first=False)
            report.dirty_per_iteration.append(
                self.pass_.send(dirty, report.iterations, first=False, live=False, inline=True)
            )
            self._phase("pages")

    def _phase(self, name: str) -> None:
        """Note the seconds since the last mark as downtime phase ``name``."""
        now = time.perf_counter()
        self.report.downtime_phases[name] = now - self._mark
        self._mark = now

    def complete(self) -> MigrationReport:
        """The stream's end (END!, or POST with the pages still missing), after the
        registers and devices ``switchover`` sent; then the commit."""
        assert self.sender is not None
        report = self.report
        self.conn.set_deadline(protocol.SWITCHOVER_SECONDS, "the switchover")
        if self.options.postcopy:
            self.sender.send_now([(b"POST", encode_pending(self.pending))])
            self._phase("send")
            self._commit(b"REDY")
            self._collections_on()
            report.downtime_seconds = time.perf_counter() - self.paused
            report.send_downtime_seconds = report.downtime_seconds
            report.postcopy = True
            report.postcopy_pages = _count(self.pending)
            self.conn.set_deadline(None)
            report.add(
                serve(
                    self.conn,
                    self.machine,
                    self.pending,
                    compress=report.compressed,
                    bandwidth=self.options.postcopy_bandwidth,
                )
            )
            tag, payload = final_reply(self.conn)
            if tag == b"FAIL":
                raise MigrationError(f"the destination failed: {bytes(payload)[:1000]!r}")
        else:
            end = _json({"pages_sent": report.pages_sent})
            self.sender.send_now([(END_TAG, end)])
            self._phase("send")
            report.send_downtime_seconds = time.perf_counter() - self.paused
            self._commit(b"DONE")
            report.downtime_seconds = time.perf_counter() - self.paused
            self._collections_on()
        report.total_seconds = time.perf_counter() - self.started
        # The guest lives at the destination now: nothing here needs logging any more,
        # and a slot that logs makes TO_GUEST tag copies fail with EBUSY (Linux 6.13,
        # and 6.12.95 as measured in the testbed; arch/arm64/kvm/guest.c).
        self.machine.memory.stop_dirty_log()
        return report

    def _commit(self, done: bytes) -> None:
        """The switchover: the destination's REDY (it has everything and is paused),
        then CMIT, after which the guest is never resumed here; then its DONE. An older
        destination answers ``done`` at once and runs without a commit."""
        expected = (b"REDY", b"FAIL") if self.commits else (done, b"FAIL")
        tag, reply = protocol.read_reply(self.conn, expected)
        if tag == b"FAIL":
            raise MigrationError(f"the destination failed: {protocol.reason(reply)}")
        self._phase("destination")
        if not self.commits:
            self.committed = True
            return
        write_section(self.conn, b"CMIT", _json({}))
        self.committed = True  # from here on the guest lives at the destination only
        if done == b"DONE":
            try:
                protocol.read_reply(self.conn, (b"DONE",))
                self._phase("commit")
            except TagvisorError as error:
                self.report.confirmed = False
                self.report.notes.append(
                    f"committed, but the destination did not confirm ({error}); the guest "
                    "is paused here and must not be resumed unless the destination has "
                    "discarded it"
                )

    def back_out(self) -> None:
        """The guest as it was before the pause: its thread stopped, logging off."""
        if self.committed:
            raise MigrationCommitted(
                "the migration failed after the commit: the guest now belongs to the "
                "destination and stays paused here"
            )
        if self.runner is not None and self.runner.thread.is_alive():
            self.runner.stop()
        self.machine.memory.stop_dirty_log()

    def _collections_off(self) -> None:
        """Collection off for the pause, remembering whether the caller had it on."""
        self._collecting = gc.isenabled()
        gc.disable()

    def _collections_on(self) -> None:
        """Back as the caller had it (once, whichever way the pause ends)."""
        if self._collecting:
            gc.enable()
            self._collecting = False

    def close(self) -> None:
        self._collections_on()
        self.conn.close()
        if self.sender is not None:
            self.sender.close()


def _minor(version: object) -> int:
    """The minor number of a "major.minor" version a peer sent (0 if it sent none)."""
    if not isinstance(version, str) or version.count(".") != 1:
        return 0
    major, minor = version.split(".")
    known = major == str(protocol.VERSION.major) and minor.isdigit() and len(minor) <= 4
    return int(minor) if known else 0


def _count(masks: list[NDArray[np.bool_]]) -> int:
    """Pages set in per-region masks (count_nonzero: a tenth of sum()'s time on bools,
    which matters in the pause)."""
    return sum(int(np.count_nonzero(mask)) for mask in masks)


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def _await_echo(conn: Connection, iteration: int) -> None:
    """Wait for the destination's echo of ITER ``iteration``: it has applied every
    page sent before it."""
    while True:
        tag, reply = protocol.read_reply(conn, (b"ITER", b"FAIL"))
        if tag == b"FAIL":
            raise MigrationError(f"the destination failed: {protocol.reason(reply)}")
        if reply.get("iteration") == iteration:
            return


class _Pass:
    """Sends what the dirty log reports, section by section, through the sender."""

    def __init__(
        self, sender: SectionSender, machine: Machine, report: MigrationReport, options: Options
    ) -> None:
        self.sender = sender
        self.machine = machine
        self.report = report
        self.compress = options.compress
        self.progress = options.progress
        self.staging = _Staging(SEND_DEPTH + 2, SECTION_PAGES)

    def collect(self, *, first: bool) -> list[NDArray[np.bool_]]:
        """Each region's dirty pages (on the ``first`` pass only those with memory
        behind them: the others are zero, and the destination starts zeroed)."""
        memory = self.machine.memory
        masks = []
        for region in memory.regions:
            dirty = memory.take_dirty(region)
            if first:
                dirty = dirty & memory.populated(region.gpa, region.npages)
            masks.append(dirty)
        return masks

    def send(
        self,
        dirty: list[NDArray[np.bool_]],
        iteration: int,
        *,
        first: bool,
        live: bool,
        inline: bool = False,
    ) -> int:
        """Send the pages set in ``dirty`` (per region), a section per window of them;
        on the ``first`` pass zero pages are left out. Returns how many were set.
        ``inline`` (the pause's last pass): written from this thread, not handed to the
        sending thread, which only pays while there is reading to overlap."""
        total = 0
        for region, mask in zip(self.machine.memory.regions, dirty, strict=True):
            # (The shared clean mask is known empty: not counting it saves a read of
            # a byte per page of guest RAM in a paused guest's last pass.)
            remaining = 0 if mask is region.clean else int(np.count_nonzero(mask))
            total += remaining
            if not remaining:
                continue
            for start, count in windows_of(mask, MAX_PAGES, MAX_GAP, SECTION_PAGES):
                window = mask[start : start + count]
                gpa = region.gpa + start * PAGE_SIZE
                if not window.all():
                    pages = np.flatnonzero(window)
                    self._send(gpa, count, pages, first, live, inline)
                    remaining -= int(pages.size)
                else:
                    for span, length in self._spans(gpa, count, live):
                        self._send(gpa + span * PAGE_SIZE, length, None, first, live, inline)
                    remaining -= count
                if self.progress is not None:
                    self.progress(iteration, self.report.pages_sent, remaining)
        return total

    def _spans(self, gpa: int, count: int, live: bool) -> list[tuple[int, int]]:
        """How to send the whole window of ``count`` pages from ``gpa``: as one section,
        or (a paused guest) as one per span that can be read in place (MIN_SPAN)."""
        if live:
            return [(0, count)]
        spans = self.machine.memory.view_spans(gpa, count)
        return spans if len(spans) * MIN_SPAN <= count else [(0, count)]

    def _send(
        self,
        gpa: int,
        count: int,
        pages: NDArray[np.intp] | None,
        first: bool,
        live: bool,
        inline: bool = False,
    ) -> None:
        buffers = self.staging.take()
        try:
            run = read_window(
                self.machine, gpa, count, pages, live=live, buffers=buffers, leave_out_zero=first
            )
            parts, stats = encode_parts(run, compress=self.compress, skip_zero=first)
        except BaseException:
            self.staging.give(buffers)
            raise
        self.report.add(stats)
        if not parts:
            self.staging.give(buffers)
            return
        if inline:
            try:
                self.sender.send_now([(b"PAGE", parts)])
            finally:
                self.staging.give(buffers)
            return
        self.sender.send(b"PAGE", parts, on_sent=lambda: self.staging.give(buffers))


def _stopped(machine: Machine) -> bool:
    # The guest thread changes the state behind the type checker's back.
    state: RunState = machine.state
    return state is RunState.STOPPED
