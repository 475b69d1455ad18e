"""The receiving side of live migration.

The stream is hostile until proven otherwise: the header, HELO and every section are
checked (version, checksum, size limit) before use, and every page's address is checked
against the guest's own RAM layout, so a stream can neither write outside guest RAM nor
make this process allocate without bound. Incompatible sources are refused before any
page is sent: MTE on one side only, a different MTE feature level, too much memory, a
stream version this side does not know.

The machine is built paused and returned only after END! was received and every page,
register and device applied; on any error it is discarded, never resumed.

Sections are received on a thread of their own (tagvisor.migration.pipeline) while the
previous one is applied. During pre-copy the data of a section whose pages all carry
data is received straight into the paused guest's memory, its address checked first
and its checksum right after: a damaged section fails the migration like any other,
and the guest it was written into is discarded. Each ITER is echoed once every page
before it is applied, so the source pauses the guest only when this side has caught up.
During the first pass a thread faults in fresh memory just ahead of the pages
(the backend's UserMemory.prefault), so the receiving thread does not take those
faults.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

from tagvisor import wire
from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.errors import TagvisorError
from tagvisor.kvm.api import Background, Kvm, page_runs
from tagvisor.kvm.uapi import Cap
from tagvisor.migration import protocol
from tagvisor.migration.pipeline import Placer, ReadSection, SectionReader
from tagvisor.migration.postcopy import PostcopyReceiver, decode_pending
from tagvisor.migration.transport import Connection, Listener, TcpAddress
from tagvisor.snapshot import pages
from tagvisor.snapshot.baseline import capture_baseline
from tagvisor.snapshot.container import (
    END_TAG,
    FormatError,
    Payload,
    Section,
    Version,
    iter_sections,
    read_header,
    read_section,
)
from tagvisor.snapshot.guestpages import FreshTags, PageBuffers, apply_section
from tagvisor.snapshot.registry import MEMORY, REGISTRY, Loaded
from tagvisor.snapshot.state import MachineState
from tagvisor.vmm.builder import MachineBuilder
from tagvisor.vmm.machine import Machine, MachineConfig

DEFAULT_MAX_MEMORY: Final = 16 << 30


class IncomingError(TagvisorError):
    """The incoming migration failed; no guest was resumed."""


@dataclass
class IncomingReport:
    """What an incoming migration received: the pages applied, the pre-copy iterations (ITER
    sections), the bytes read from the connection and the VCPUs restored."""

    pages_received: int = 0
    iterations: int = 0
    bytes_received: int = 0
    vcpus: int = 0
    #: Seconds spent checking and applying the registers and devices after the pause.
    apply_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: Set for a post-copy migration: join() it to wait for the last pages.
    postcopy: PostcopyReceiver | None = None


def refusal(
    machine: MachineState, kvm: Kvm, *, max_memory: int, require_mte: bool | None
) -> str | None:
    """Why this destination cannot take that guest, or None if it can."""
    config = machine.config
    host_mte = bool(kvm.check_extension(Cap.ARM_MTE))
    if require_mte is not None and config.mte != require_mte:
        side = "the source" if config.mte else "this destination"
        return f"MTE is on at {side} only (source mte={config.mte}, required={require_mte})"
    if config.mte and not host_mte:
        return "the guest uses MTE but this host's KVM has no KVM_CAP_ARM_MTE"
    if config.mte and machine.mte_level != kvm.mte_feature_level():
        return (
            f"MTE feature level differs: the guest saw {machine.mte_level}, this host "
            f"offers {kvm.mte_feature_level()}"
        )
    if config.ram_size > max_memory:
        return f"the guest has {config.ram_size} bytes of RAM; this side allows {max_memory}"
    if config.irqchip != "none" and not kvm.check_extension(Cap.IRQCHIP):
        return (
            "the guest has an in-kernel GICv3 (a Linux guest) and this host's KVM has no "
            "in-kernel interrupt controller (KVM_CAP_IRQCHIP is 0)"
        )
    return None


def receive(
    conn: Connection,
    kvm: Kvm,
    *,
    max_memory: int = DEFAULT_MAX_MEMORY,
    require_mte: bool | None = None,
    console: Callable[[bytes], None] | None = None,
) -> tuple[Machine, IncomingReport]:
    """Run the destination side over an accepted connection: the handshake, then the
    passes' pages and the machine's state, then the guest, complete or (post-copy)
    still fetching; ``console`` gets what the guest writes here."""
    incoming = _Incoming(conn, kvm, console)
    try:
        hello = incoming.handshake(max_memory=max_memory, require_mte=require_mte)
    except IncomingError:
        raise
    except TagvisorError as error:  # the link failed while answering
        raise IncomingError(f"the handshake failed, no guest was built: {error}") from error
    try:
        incoming.setup(hello)
        post = incoming.iterate()
        return incoming.complete(post)
    except TagvisorError as error:
        incoming.stop()
        with contextlib.suppress(TagvisorError):  # the source may be gone; nothing to tell
            protocol.send_json(conn, b"FAIL", {"reason": str(error)})
        raise IncomingError(f"incoming migration failed, no guest was resumed: {error}") from error
    except BaseException:
        incoming.stop()
        raise


class _Incoming:
    """The destination side of one migration, phase by phase (see :func:`receive`)."""

    def __init__(
        self, conn: Connection, kvm: Kvm, console: Callable[[bytes], None] | None = None
    ) -> None:
        self.conn = conn
        self.kvm = kvm
        self.console = console
        self.report = IncomingReport()
        self.loaded = Loaded(Version(0, 0))
        self.reader: SectionReader | None = None
        self.prefaulter: Background | None = None

    def handshake(self, *, max_memory: int, require_mte: bool | None) -> protocol.Hello:
        """HEADER and HELO, checked; ACPT, or RFSE with the reason, before any page."""
        conn = self.conn
        conn.set_deadline(protocol.HANDSHAKE_SECONDS, "the handshake")
        try:
            self.loaded = Loaded(read_header(conn, protocol.MAGIC, protocol.VERSION.major))
        except TagvisorError as error:  # a foreign header, or a peer that stalled
            with contextlib.suppress(TagvisorError):
                protocol.send_json(conn, b"RFSE", {"reason": str(error)})
            raise IncomingError(f"refused the source: {error}") from error
        try:
            first = next(iter_sections(conn, protocol.limits()))
            if first.tag != b"HELO":
                raise FormatError(f"the stream starts with {first.tag!r}, not HELO")
            hello = protocol.Hello.decode(first.payload)
        except TagvisorError as error:
            with contextlib.suppress(TagvisorError):
                protocol.send_json(conn, b"RFSE", {"reason": f"malformed greeting: {error}"})
            raise IncomingError(f"the source's greeting is malformed: {error}") from error
        reason = refusal(hello.machine, self.kvm, max_memory=max_memory, require_mte=require_mte)
        if reason is not None:
            protocol.send_json(conn, b"RFSE", {"reason": reason})
            raise IncomingError(f"refused the source: {reason}")
        protocol.send_json(conn, b"ACPT", {"version": str(protocol.VERSION)})
        conn.set_deadline(protocol.iterate_seconds(hello.machine.config.ram_size), "pre-copy")
        #: The source commits before this side may run the guest (both 1.2 or newer).
        self.commits = self.loaded.version.minor >= protocol.COMMIT_SINCE
        return hello

    def setup(self, hello: protocol.Hello) -> None:
        """The machine, paused, and the reading thread. From here sections are received
        and verified on a thread of their own while the previous one is applied: PAGE
        payloads land in reused buffers, or their page data straight in the paused
        guest's memory (see _placer)."""
        self.config = hello.machine.config
        self.machine = MachineBuilder.from_config(self.kvm, self.config, self.console).build()
        self.reader = SectionReader(self.conn, protocol.limits(), placer=_placer(self.machine))
        self.sections = iter(self.reader)
        self.buffers = PageBuffers(pages.MAX_PAGES, data=False)
        # Pre-copy pages land in a guest that has not run: zero tags cost nothing.
        self.fresh = FreshTags(self.machine)
        self.prefaulter = _prefault(self.machine, hello.pages)
        # Read now, so that the apply after the source's pause writes only what differs.
        self.loaded.baseline = capture_baseline(self.machine)

    def iterate(self) -> Section:
        """Every section up to END! or POST (returned): pages applied as they come,
        each ITER echoed, the machine's state loaded and checked."""
        prefaulter = self.prefaulter
        assert prefaulter is not None
        for section in self.sections:
            if section.tag == MEMORY.tag:
                self._apply_pages(section)
            elif section.tag == b"ITER":
                # After the first pass pages land where pages are already, and the
                # thread would only take CPU time from the pause that comes.
                prefaulter.stop()
                self.report.iterations += 1
                # Every page before it is applied: tell the source, which pauses the
                # guest only once the destination has caught up.
                echo = {"iteration": _iteration(section.payload)}
                protocol.send_json(self.conn, b"ITER", echo)
            elif section.tag in (END_TAG, b"POST"):
                prefaulter.stop()
                return section
            else:
                REGISTRY.load(section, self.loaded)
        raise FormatError("the stream ended without END!")

    def _apply_pages(self, section: ReadSection) -> None:
        config = self.config
        _check_in_ram(section.payload, config)
        run = pages.decode_section(section.payload, section.placed)
        if not config.mte and not run.tags_are_zero():
            raise FormatError("the source sent tags for a guest without MTE")
        self.report.pages_received += apply_section(
            self.machine, run, buffers=self.buffers, fresh=self.fresh
        )

    def complete(self, last: Section) -> tuple[Machine, IncomingReport]:
        """Registers and devices into the machine once all of them are there, then the
        switchover: DONE after the source's commit, or (post-copy) the receiver that
        fetches the pages still missing."""
        collecting = gc.isenabled()
        gc.disable()  # the source's guest is paused until DONE: no collection meanwhile
        try:
            return self._complete(last)
        finally:
            if collecting:
                gc.enable()

    def _complete(self, last: Section) -> tuple[Machine, IncomingReport]:
        machine, report = self.machine, self.report
        if last.tag == END_TAG:
            self._check_end(last.payload)
        started = time.perf_counter()
        REGISTRY.check(self.loaded, self.config)
        REGISTRY.apply(self.loaded, machine)
        report.apply_seconds = time.perf_counter() - started
        report.vcpus = len(self.loaded.vcpus)
        self.conn.set_deadline(protocol.SWITCHOVER_SECONDS, "the switchover")
        if last.tag == b"POST":
            pending = decode_pending(last.payload, machine)
            self._await_commit(lambda: next(self.sections, None))
            self.conn.set_deadline(None)
            receiver = PostcopyReceiver(self.conn, machine, pending, self.sections)
            receiver.start()
            report.postcopy = receiver
            return machine, report
        self._await_commit(self._read_commit)
        protocol.send_json(self.conn, b"DONE", {"pages": report.pages_received})
        report.bytes_received = self.conn.received
        return machine, report

    def _check_end(self, payload: Payload) -> None:
        """END! names the pages the source sent: every one of them must be here."""
        sent = wire.integer(wire.loads(payload, "the END! section"), "pages_sent", 0, 1 << 40)
        if sent != self.report.pages_received:
            raise FormatError(
                f"the source says it sent {sent} pages, {self.report.pages_received} arrived"
            )

    def _read_commit(self) -> Section:
        return read_section(self.conn, lambda tag: protocol.CONTROL_LIMITS[b"CMIT"])

    def _await_commit(self, read: Callable[[], Section | None]) -> None:
        """REDY (everything is here, the guest paused), then the source's CMIT, which
        ``read`` reads (after POST from the stream's reader, else from the
        connection). Without CMIT the guest never runs here: the error discards it."""
        if not self.commits:
            return
        protocol.send_json(self.conn, b"REDY", {"pages": self.report.pages_received})
        try:
            section = read()
        except TagvisorError as error:
            raise IncomingError(
                f"the source never committed ({error}): the guest was discarded, never run"
            ) from error
        if section is None or section.tag != b"CMIT":
            found = "the end of the stream" if section is None else repr(section.tag)
            raise FormatError(f"expected the source's CMIT, found {found}")

    def stop(self) -> None:
        """Leave the machine, whatever phase it got to: threads stopped, never resumed."""
        if self.prefaulter is not None:
            self.prefaulter.stop()
        if self.reader is not None:
            self.reader.close()


def _iteration(payload: Payload) -> int:
    return wire.integer(wire.loads(payload, "an ITER section"), "iteration", 0, 2**32)


def _check_in_ram(payload: Payload, config: MachineConfig) -> None:
    if len(payload) >= pages.HEAD.size:  # else decode_section says what is wrong
        gpa, npages, _ = pages.HEAD.unpack_from(payload)
        _check_range(gpa, npages, config)


def _check_range(gpa: int, npages: int, config: MachineConfig) -> None:
    if gpa < config.ram_base or gpa + npages * PAGE_SIZE > config.ram_base + config.ram_size:
        raise FormatError(f"the source sent pages at {gpa:#x}, outside guest RAM")


#: A section whose pages with data come in more runs than this is received into a
#: buffer and scattered: a receive per run would cost more than the copy it saves.
MAX_PLACED_RUNS = 64


def _placer(machine: Machine) -> Placer:
    """Where pre-copy page data may be received straight into: the guest's own memory,
    run by run of the section's pages with data (its other pages are zero or left
    out, and apply_section writes nothing of their data).

    The guest is paused and is resumed only after END! and every check, so a section
    that then fails its checksum fails the migration and the guest is discarded; after
    POST (the guest runs) pages are verified before they are placed.
    """

    def place(gpa: int, kinds: NDArray[np.uint8]) -> list[NDArray[np.uint8]] | None:
        _check_range(gpa, kinds.size, machine.config)
        runs = page_runs(np.flatnonzero(pages.has_data(kinds)))
        if len(runs) > MAX_PLACED_RUNS:
            return None
        targets = []
        for _, first, count in runs:
            view = machine.memory.writable_view(gpa + first * PAGE_SIZE, count * PAGE_SIZE)
            if view is None:
                return None
            targets.append(view)
        return targets

    return place


def _prefault(machine: Machine, pages: int | None) -> Background:
    """Fault in fresh memory just ahead of the pages as they arrive (the backend's
    UserMemory.prefault), for as many pages as the source said the first pass brings
    and never more than the guest's RAM."""
    limit = machine.config.ram_size // PAGE_SIZE
    return machine.memory.user.prefault(limit if pages is None else min(pages, limit))


def incoming(
    kvm: Kvm,
    address: TcpAddress | Listener,
    *,
    max_memory: int = DEFAULT_MAX_MEMORY,
    require_mte: bool | None = None,
    timeout: float = 60.0,
    console: Callable[[bytes], None] | None = None,
) -> tuple[Machine, IncomingReport]:
    """Listen (loopback unless told otherwise), take one migration, return the guest;
    ``console`` gets what it writes here."""
    listener = address if isinstance(address, Listener) else Listener(address)
    try:
        conn = listener.accept(timeout)
    finally:
        listener.close()
    try:
        machine, report = receive(
            conn, kvm, max_memory=max_memory, require_mte=require_mte, console=console
        )
    except BaseException:
        conn.close()
        raise
    if report.postcopy is None:
        conn.close()  # post-copy's receiver closes it when the last page is in
    return machine, report
