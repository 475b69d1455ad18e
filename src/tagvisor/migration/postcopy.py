"""Post-copy: the destination runs before all pages have arrived.

After the pause the source sends the VCPUs, the devices and POST, a bitmap of the pages
the destination does not have yet (never sent, or dirtied since). The destination drops
its stale copies of those pages, registers guest RAM with userfaultfd, and lets the
guest run. A fault on a missing page sends REQ(gpa) and sleeps; the source answers
requests first and pushes everything else in the background; END! means nothing is
left, and the destination answers DONE.

Placing a page and its tags: Linux has no call that does both at once. Without one the
destination places the data with UFFDIO_COPY in DONTWAKE mode, writes the tags with
KVM_ARM_MTE_COPY_TAGS, then wakes the faulting VCPU; a *different* VCPU that touches
the page in between sees it present with its tags cleared by KVM's first touch
(tests/migration/test_postcopy.py shows it). With the modelled proposal
(``PROPOSAL_UFFDIO_COPY_MTE``) the page is placed already tagged and no window exists.
"""

from __future__ import annotations

import select
import struct
import threading
import time
from typing import Final

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import GRANULES_PER_PAGE, PAGE_SIZE
from tagvisor.errors import TagvisorError
from tagvisor.kvm.api import UserFaultRange
from tagvisor.migration.transport import Connection
from tagvisor.snapshot import pages
from tagvisor.snapshot.container import (
    END_TAG,
    FormatError,
    Payload,
    Section,
    read_section,
    write_section,
)
from tagvisor.snapshot.guestpages import read_run, runs_of
from tagvisor.snapshot.pages import EncodeStats, PageRun
from tagvisor.vmm.machine import Machine

REQ: Final = struct.Struct("<Q")


class PostcopyError(TagvisorError):
    """Post-copy did not bring every page: the guest at the destination cannot go on."""


#: Pages pushed per background batch, so requests wait at most one batch.
PUSH_PAGES: Final = 64


def encode_pending(masks: list[NDArray[np.bool_]]) -> bytes:
    """The POST payload: for each RAM region in turn, one bit per page (least significant bit
    first), set for a page the destination does not have yet."""
    return b"".join(np.packbits(mask, bitorder="little").tobytes() for mask in masks)


def decode_pending(payload: Payload, machine: Machine) -> list[NDArray[np.bool_]]:
    """The masks of a POST payload, one per RAM region of ``machine`` (FormatError if its length
    does not match guest RAM)."""
    masks, offset = [], 0
    for region in machine.memory.regions:
        size = -(-region.npages // 8)
        chunk = payload[offset : offset + size]
        if len(chunk) != size:
            raise FormatError("the POST bitmap is shorter than guest RAM")
        bits = np.unpackbits(np.frombuffer(chunk, np.uint8), bitorder="little")
        masks.append(bits[: region.npages].astype(bool))
        offset += size
    if offset != len(payload):
        raise FormatError("the POST bitmap is longer than guest RAM")
    return masks


# -- the source ---------------------------------------------------------------------------


class PushPacer:
    """Keeps the background push under ``bandwidth`` bytes per second (None: as fast as the
    link goes), like QEMU's max-postcopy-bandwidth; answers to requests are never held."""

    def __init__(self, bandwidth: int | None) -> None:
        self.bandwidth = bandwidth
        self.started = time.monotonic()
        self.pushed = 0

    def wait(self) -> float:
        """Seconds until the next push may go (0 when it may go now)."""
        if self.bandwidth is None:
            return 0.0
        due = self.started + self.pushed / self.bandwidth
        return max(0.0, due - time.monotonic())


def serve(
    conn: Connection,
    machine: Machine,
    pending: list[NDArray[np.bool_]],
    *,
    compress: bool,
    bandwidth: int | None = None,
) -> EncodeStats:
    """Answer REQs first, push the rest (at most ``bandwidth`` bytes per second of guest
    pages), then END!; returns what was sent."""
    stats = EncodeStats()
    regions = machine.memory.regions
    pacer = PushPacer(bandwidth)

    def send(region_index: int, first: int, count: int) -> None:
        region = regions[region_index]
        run = read_run(machine, region.gpa + first * PAGE_SIZE, count)
        payload, part = pages.encode_parts(run, compress=compress)
        write_section(conn, b"PAGE", payload)
        stats.add(part)
        pending[region_index][first : first + count] = False

    while any(mask.any() for mask in pending):
        # Wait for a request while the pacer holds the push back.
        readable, _, _ = select.select([conn.sock], [], [], pacer.wait())
        if readable:
            request = read_section(conn, lambda tag: REQ.size)
            if request.tag != b"REQ ":
                raise FormatError(f"expected REQ from the destination, got {request.tag!r}")
            (gpa,) = REQ.unpack(request.payload)
            for index, region in enumerate(regions):
                if region.contains(gpa):
                    page = (gpa - region.gpa) // PAGE_SIZE
                    if pending[index][page]:
                        send(index, page, 1)
            continue
        for index, mask in enumerate(pending):
            if mask.any():
                first, count = next(runs_of(mask, PUSH_PAGES))
                send(index, first, count)
                pacer.pushed += count * PAGE_SIZE
                break
    write_section(conn, END_TAG, b"{}")
    return stats


def final_reply(conn: Connection) -> tuple[bytes, Payload]:
    """After END!, the destination's DONE or FAIL; REQs for pages already on their way
    (the guest faulted while they were in flight) are answered by those pages."""
    while True:
        section = read_section(conn, lambda tag: 1 << 16)
        if section.tag in (b"DONE", b"FAIL"):
            return section.tag, section.payload
        if section.tag != b"REQ ":
            raise FormatError(f"expected DONE from the destination, got {section.tag!r}")


# -- the destination ----------------------------------------------------------------------


class PostcopyReceiver:
    """Fills a running guest's missing pages as they arrive or as it faults on them."""

    def __init__(
        self,
        conn: Connection,
        machine: Machine,
        pending: list[NDArray[np.bool_]],
        sections: object,
    ) -> None:
        self.conn = conn
        self.machine = machine
        self.pending = pending
        self.sections = sections
        self.requests = 0
        self.error: BaseException | None = None
        self._send = threading.Lock()
        self._place = threading.Lock()
        self.uffds: list[UserFaultRange] = []
        user = machine.memory.user
        for index, region in enumerate(machine.memory.regions):
            uffd = user.userfaultfd(region.hva, region.size, self._fault)
            if uffd is None:
                self._unregister()
                raise FormatError("post-copy needs userfaultfd, which this backend lacks")
            user.discard(region.hva, np.flatnonzero(pending[index]))
            self.uffds.append(uffd)
        #: Pages are placed with their tags at once (the modelled proposal).
        self.atomic = all(uffd.places_tags for uffd in self.uffds)
        self.thread = threading.Thread(target=self._receive, name="postcopy", daemon=True)

    def start(self) -> None:
        """Start the receiving thread, which places the pages the source answers or pushes, with
        their tags, until END!."""
        self.thread.start()

    def join(self, timeout: float = 60.0) -> None:
        """Wait until every page has arrived (DONE sent); a receiving error, or pages
        still missing after ``timeout`` seconds, is a PostcopyError naming what went
        wrong. Either way the receiving thread has ended when this returns or raises."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.conn.close()  # its next read fails, and the thread ends
            self.thread.join(timeout)
            raise PostcopyError(f"post-copy did not finish within {timeout:g} s")
        if self.error is not None:
            kind = type(self.error).__name__
            raise PostcopyError(f"post-copy failed ({kind}): {self.error}") from self.error

    # -- the guest's side: a fault on a missing page -----------------------------------

    def _fault(self, hva: int) -> None:
        for index, region in enumerate(self.machine.memory.regions):
            if region.hva <= hva < region.hva + region.size:
                page = (hva - region.hva) // PAGE_SIZE
                if not self.pending[index][page]:
                    # Nothing to fetch: the page is zero at the source too.
                    self._place_run(
                        index,
                        page,
                        np.zeros((1, PAGE_SIZE), np.uint8),
                        np.zeros((1, GRANULES_PER_PAGE), np.uint8),
                    )
                    return
                with self._send:
                    self.requests += 1
                    write_section(self.conn, b"REQ ", REQ.pack(region.gpa + page * PAGE_SIZE))
                return

    # -- the receiving thread ------------------------------------------------------------

    def _receive(self) -> None:
        try:
            for section in self.sections:  # type: ignore[attr-defined]
                assert isinstance(section, Section)
                if section.tag == b"PAGE":
                    self._apply(pages.decode(section.payload))
                elif section.tag == END_TAG:
                    break
                else:
                    raise FormatError(f"unexpected {section.tag!r} during post-copy")
            self._unregister()
            with self._send:
                write_section(self.conn, b"DONE", b"{}")
        except BaseException as error:  # handed to join()
            # The ranges stay registered: a fault on a page that never came must fail
            # (EFAULT after resolve's wait), not read as a fresh zero page.
            self.error = error
        finally:
            self.conn.close()

    def _unregister(self) -> None:
        for uffd in self.uffds:
            uffd.unregister()

    def _apply(self, run: PageRun) -> None:
        if run.pages is not None:
            raise FormatError("post-copy pages come in whole runs, without SKIP")
        for index, region in enumerate(self.machine.memory.regions):
            if region.contains(run.gpa, run.npages * PAGE_SIZE):
                first = (run.gpa - region.gpa) // PAGE_SIZE
                wanted = self.pending[index][first : first + run.npages]
                for start, count in runs_of(wanted):
                    self._place_run(
                        index,
                        first + start,
                        run.data[start : start + count],
                        run.tags[start : start + count],
                    )
                return
        raise FormatError(f"pages at {run.gpa:#x} are outside guest RAM")

    def _place_run(
        self, index: int, first: int, data: NDArray[np.uint8], tags: NDArray[np.uint8]
    ) -> None:
        region = self.machine.memory.regions[index]
        uffd = self.uffds[index]
        hva = region.hva + first * PAGE_SIZE
        gpa = region.gpa + first * PAGE_SIZE
        with self._place:
            count = data.shape[0]
            keep = ~np.array([uffd.present(hva + i * PAGE_SIZE) for i in range(count)])
            for start, length in runs_of(keep):
                address = hva + start * PAGE_SIZE
                blob = data[start : start + length].tobytes()
                page_tags = tags[start : start + length].reshape(-1)
                if self.atomic and self.machine.config.mte:
                    uffd.copy_with_tags(address, blob, page_tags)
                else:
                    uffd.copy(address, blob, wake=False)
                    if self.machine.config.mte:
                        self.machine.tags.write_tags(gpa + start * PAGE_SIZE, page_tags)
                    uffd.wake(address, length * PAGE_SIZE)
            self.pending[index][first : first + count] = False
