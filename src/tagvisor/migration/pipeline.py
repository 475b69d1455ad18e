"""Socket I/O on threads of its own, so it overlaps the encoding and applying of pages.

Sending, receiving and CRC-32C release the GIL (so do NumPy's bulk copies), so a
source that encodes the next section while the last one is being sent, and a
destination that applies one section while the next is being received and verified,
keep both the wire and the CPUs busy. The I/O threads also compute the checksums, a
chunk at a time right next to the copy the kernel makes of it (just before sending it,
just after receiving it), so each byte comes from main memory once: a checksum over a
whole 16 MiB section read it from memory a second time, which cost as much again as
the checksum itself. The stream is the same as without threads:
sections go out in the order they were queued, and every section is verified (size
limit before reading, checksum before it is handed on) as
:func:`tagvisor.snapshot.container.iter_sections` does; only the data of a PAGE
section that a reader's placer takes lands in its final place before the checksum is
checked (see :class:`SectionReader`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from crc32c import crc32c
from numpy.typing import NDArray

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.migration.transport import Connection
from tagvisor.snapshot import pages
from tagvisor.snapshot.container import (
    CRC,
    END_TAG,
    SECTION_HEAD,
    FormatError,
    Payload,
    Section,
    read_exactly,
    section_head,
)

#: How often a thread blocked on a queue looks whether it was told to stop (seconds).
_POLL: Final = 0.25
#: Bytes checksummed and then sent at a time: few enough to still be in the CPU's cache
#: when the kernel copies them into the socket.
SEND_CHUNK: Final = 1 << 20

#: Where a PAGE section's page data may be received straight into: given the section's
#: gpa and kinds, writable memory for its data rows, one array per run of consecutive
#: pages with data, in page order (after checking that the pages are the receiver's to
#: write); or None to receive them into a buffer.
Placer = Callable[[int, NDArray[np.uint8]], Sequence[NDArray[np.uint8]] | None]

#: The span of guest-physical addresses [start, stop) of a PAGE section read into a
#: buffer; one whose header cannot be read spans everything.
_EVERYWHERE: Final = (0, 1 << 64)


@dataclass(frozen=True)
class ReadSection(Section):
    """A section as the reader hands it on; for a PAGE section whose data rows were
    received straight into place, ``placed`` is that memory (run by run) and the
    payload holds the bytes before the data (see tagvisor.snapshot.pages.decode_section)."""

    placed: Sequence[NDArray[np.uint8]] | None = None


@dataclass(frozen=True)
class _Received:
    """A section read off the wire, its checksum not verified yet."""

    section: ReadSection
    #: The checksum of what was received (computed as it arrived) and the one sent.
    actual: int
    crc: int
    buffer: NDArray[np.uint8] | None
    #: A PAGE section's span, while its pages wait in a buffer for the consumer.
    unapplied: tuple[int, int] | None = None

    def verify(self) -> None:
        if self.actual != self.crc:
            raise FormatError(
                f"section {self.section.tag!r} fails its checksum: the input is damaged"
            )


class SectionSender:
    """Writes sections to a connection from a thread of its own, in the order queued.

    A queued section's buffers must be final and must not change until it has been
    sent (a running guest's pages are copied first): ``on_sent`` says when (the caller
    then reuses its staging buffers). The sending thread computes the checksum chunk by
    chunk, each chunk just before it is sent (see the module's note). An error on the
    sending thread is raised by the next :meth:`send` or by :meth:`flush`; later
    sections are dropped.
    """

    def __init__(self, conn: Connection, depth: int = 3) -> None:
        self.conn = conn
        self._queue: queue.Queue[
            tuple[list[tuple[bytes, list[memoryview]]], Callable[[], None] | None] | None
        ] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="migration-send", daemon=True)
        self._thread.start()

    def send(
        self,
        tag: bytes,
        payload: bytes | Sequence[bytes | memoryview],
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        """Queue a section (waits while ``depth`` sections are already queued)."""
        self._check()
        self._queue.put((_prepared([(tag, payload)]), on_sent))

    def send_now(
        self, sections: Sequence[tuple[bytes, bytes | Sequence[bytes | memoryview]]]
    ) -> None:
        """Wait until everything queued is sent, then send ``sections`` on the calling
        thread, in as few system calls as they fit in: for the small sections of a
        migration's pause, where handing them to the sending thread and waiting for
        it to say they went costs more than writing them."""
        self.flush()
        batch: list[bytes | memoryview] = []
        for tag, parts in _prepared(sections):
            batch = self._write(tag, parts, batch)
        self.conn.writev(batch)

    def flush(self) -> None:
        """Wait until every queued section is sent; raise the sending thread's error."""
        self._queue.join()
        self._check()

    def close(self) -> None:
        """Stop the thread once the queue is drained (sent, or dropped after an error)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                sections, on_sent = item
                if self._error is None:
                    try:
                        batch: list[bytes | memoryview] = []
                        for tag, parts in sections:
                            batch = self._write(tag, parts, batch)
                        self.conn.writev(batch)
                    except BaseException as error:  # handed to the producer
                        self._error = error
                if on_sent is not None:
                    on_sent()
            finally:
                self._queue.task_done()

    def _write(
        self, tag: bytes, parts: list[memoryview], batch: list[bytes | memoryview]
    ) -> list[bytes | memoryview]:
        """One section after what ``batch`` holds, its payload checksummed and sent
        SEND_CHUNK bytes at a time (small parts gathered with the next chunk, so they
        go out in one call); returns what is left to send, the checksum last."""
        head = section_head(tag, sum(part.nbytes for part in parts))
        crc = crc32c(head)
        batch = [*batch, head]
        size = sum(memoryview(part).nbytes for part in batch)
        for part in parts:
            for start in range(0, part.nbytes, SEND_CHUNK):
                piece = part[start : start + SEND_CHUNK]
                crc = crc32c(piece, crc)
                batch.append(piece)
                size += piece.nbytes
                if size >= SEND_CHUNK:
                    self.conn.writev(batch)
                    batch, size = [], 0
        batch.append(CRC.pack(crc))
        return batch


def _span(payload: Payload) -> tuple[int, int]:
    """The guest-physical span a PAGE payload's header claims (everything if it has
    none: decode_section refuses it later, in stream order)."""
    if len(payload) < pages.HEAD.size:
        return _EVERYWHERE
    gpa, npages, _ = pages.HEAD.unpack_from(payload)
    return gpa, gpa + npages * PAGE_SIZE


def _prepared(
    sections: Sequence[tuple[bytes, bytes | Sequence[bytes | memoryview]]],
) -> list[tuple[bytes, list[memoryview]]]:
    """Sections as (tag, byte views of the payload's parts); a bad tag fails here, on
    the caller's thread."""
    prepared = []
    for tag, payload in sections:
        parts = [payload] if isinstance(payload, bytes) else payload
        section_head(tag, 0)
        prepared.append((tag, [memoryview(part).cast("B") for part in parts]))
    return prepared


class SectionReader:
    """Reads and verifies sections on a thread of its own, into reusable buffers.

    Iterating yields the sections up to and including END!, each within its tag's
    limit and with its checksum verified (the reading thread computes it as the bytes
    arrive; the iterating thread compares it just before handing the section on, so
    an error comes in stream order), an unknown optional section skipped and
    an unknown mandatory one refused (as ``iter_sections``). Sections whose tag is in
    ``pooled`` are read into one of ``buffers`` buffers that are used again and again
    (no allocation and no fresh page faults per section): such a payload is valid only
    until the iteration moves on. Reading runs ahead of the consumer by at most
    ``buffers`` pooled sections (and a few small ones).

    With a ``placer``, PAGE data is received straight into the memory it names, until
    a section in ``place_until`` is read. Pages must land in stream order: while a
    PAGE section read into a buffer waits for the consumer (who writes its pages when
    it applies it, which is when it asks for the next section), no later section over
    the same addresses is placed (one elsewhere is: a first pass's sections never
    overlap, so its pages all land in place however far the reader runs ahead).
    """

    def __init__(
        self,
        conn: Connection,
        limits: dict[bytes, int],
        *,
        pooled: frozenset[bytes] = frozenset({b"PAGE"}),
        buffers: int = 3,
        placer: Placer | None = None,
        place_until: frozenset[bytes] = frozenset({b"POST", END_TAG}),
    ) -> None:
        self.conn = conn
        self.limits = limits
        self.pooled = pooled
        self._placer = placer
        self._place_until = place_until
        #: The spans of PAGE sections read into a buffer and not applied yet: a later
        #: section over any of them is not placed.
        self._unapplied: list[tuple[int, int]] = []
        self._unapplied_lock = threading.Lock()
        self._largest = max(limits.values())
        #: The checksum of the section being read, so far (the reading thread's own).
        self._actual = 0
        self._free: queue.Queue[NDArray[np.uint8]] = queue.Queue()
        for _ in range(buffers):
            self._free.put(np.empty(0, np.uint8))
        self._ready: queue.Queue[_Received | BaseException] = queue.Queue(buffers + 8)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="migration-recv", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop reading ahead (the caller closes the connection)."""
        self._closed.set()

    def __iter__(self) -> Iterator[ReadSection]:
        while True:
            item = self._ready.get()
            if isinstance(item, BaseException):
                raise item
            section, buffer = item.section, item.buffer
            try:
                item.verify()
                if section.tag == END_TAG:
                    yield section
                    return
                if section.tag not in self.limits:
                    if section.optional:
                        continue
                    raise FormatError(
                        f"unknown mandatory section {section.tag!r}: written by a newer tagvisor?"
                    )
                yield section
            finally:
                if item.unapplied is not None:
                    with self._unapplied_lock:
                        self._unapplied.remove(item.unapplied)
                if buffer is not None:
                    self._free.put(buffer)

    # -- the reading thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closed.is_set():
                received = self._read()
                self._put(received)
                if received.section.tag == END_TAG:
                    return
        except BaseException as error:  # handed to the consumer
            self._put(error)

    def _read(self) -> _Received:
        head = read_exactly(self.conn, SECTION_HEAD.size, "a section header")
        tag, flags, length = SECTION_HEAD.unpack(head)
        limit = self.limits.get(tag, self._largest)
        if length > limit:
            raise FormatError(
                f"section {tag!r} claims {length} bytes, more than the {limit} allowed here"
            )
        what = f"section {tag!r}"
        self._actual = crc32c(head)
        buffer: NDArray[np.uint8] | None = None
        placed: Sequence[NDArray[np.uint8]] | None = None
        payload: Payload
        if tag in self.pooled:
            buffer = self._take(length, limit)
            if tag == b"PAGE" and self._placer is not None:
                payload, placed = self._read_pages(buffer[:length], what)
            else:
                payload = buffer[:length].data
                self._fill(payload, what)
        else:
            payload = read_exactly(self.conn, length, what)
            self._actual = crc32c(payload, self._actual)
        unapplied = None
        if tag == b"PAGE" and placed is None:
            unapplied = _span(payload)
            with self._unapplied_lock:
                self._unapplied.append(unapplied)
        if tag in self._place_until:
            self._placer = None  # from here on pages are verified before they are placed
        (crc,) = CRC.unpack(read_exactly(self.conn, CRC.size, f"the checksum of {tag!r}"))
        section = ReadSection(tag, flags, payload, placed)
        return _Received(section, self._actual, crc, buffer, unapplied)

    def _read_pages(
        self, view: NDArray[np.uint8], what: str
    ) -> tuple[memoryview, Sequence[NDArray[np.uint8]] | None]:
        """A PAGE payload into ``view``, or its data rows straight into the memory the
        placer names (checked against the kinds first); the bytes before them still go
        into ``view``."""
        length = view.size
        done = min(length, pages.HEAD.size)
        self._fill(view[:done].data, what)
        if done == pages.HEAD.size:
            npages = pages.HEAD.unpack_from(view.data)[1]
            more = min(length, pages.HEAD.size + npages)
            self._fill(view[done:more].data, what)
            done = more
            layout = pages.data_layout(view[:done].data, length)
            if layout is not None and self._placer is not None:
                gpa, kinds, before = layout
                targets = self._placer(gpa, kinds) if self._in_order(gpa, kinds.size) else None
                if targets is not None:
                    self._fill(view[done:before].data, what)
                    for target in targets:
                        self._fill(target.data, what)
                    return view[:before].data, targets
        self._fill(view[done:length].data, what)
        return view.data, None

    def _in_order(self, gpa: int, npages: int) -> bool:
        """Whether pages placed now at ``gpa`` land after every earlier section's own
        (no section over them waits in a buffer)."""
        stop = gpa + npages * PAGE_SIZE
        with self._unapplied_lock:
            return all(stop <= first or last <= gpa for first, last in self._unapplied)

    def _fill(self, view: memoryview, what: str) -> None:
        """Fill ``view`` from the connection, adding what arrives to the section's
        checksum while it is still in the CPU's cache."""
        done, size = 0, view.nbytes
        while done < size:
            got = self.conn.readinto(view[done:])
            if not got:
                raise FormatError(f"the input ends inside {what} ({done} of {size} bytes)")
            self._actual = crc32c(view[done : done + got], self._actual)
            done += got

    def _take(self, length: int, limit: int) -> NDArray[np.uint8]:
        while True:
            try:
                buffer = self._free.get(timeout=_POLL)
            except queue.Empty:
                if self._closed.is_set():
                    raise FormatError("the reader was closed") from None
                continue
            if buffer.size < length:
                # Sized for the largest section allowed: only what is used gets touched.
                buffer = np.empty(limit, np.uint8)
            return buffer

    def _put(self, item: _Received | BaseException) -> None:
        while not self._closed.is_set():
            try:
                self._ready.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue
