"""The threaded section sender and reader: order, checks, and pages placed in order."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tagvisor.kvm.api import page_runs
from tagvisor.migration.pipeline import SEND_CHUNK, SectionReader, SectionSender
from tagvisor.migration.transport import (
    Connection,
    Listener,
    TcpAddress,
    TransportError,
    connect,
)
from tagvisor.snapshot.container import END_TAG, FormatError, write_section
from tagvisor.snapshot.pages import PageRun, encode_parts, has_data

LIMITS = {b"PAGE": 1 << 24, b"NOTE": 1 << 10, b"POST": 1 << 10, END_TAG: 1 << 10}
GPA = 0x4000_0000


@pytest.fixture
def pair() -> Iterator[tuple[Connection, Connection]]:
    listener = Listener(TcpAddress("127.0.0.1", 0))
    client = connect(listener.address)
    server = listener.accept()
    listener.close()
    yield client, server
    client.close()
    server.close()


def page_parts(npages: int, seed: int, *, sparse: bool = False) -> list[bytes | memoryview]:
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 256, (npages, 4096), dtype=np.uint8)
    tags = rng.integers(0, 16, (npages, 256), dtype=np.uint8)
    if sparse:  # every other page of a window
        run = PageRun(GPA, data, tags, np.arange(0, 2 * npages, 2), 2 * npages - 1)
    else:
        run = PageRun(GPA, data, tags)
    return encode_parts(run)[0]


def test_sections_go_out_in_order_and_say_when_they_are_sent(
    pair: tuple[Connection, Connection],
) -> None:
    """Scenario: a source queues many sections, big and small; the reader gets them
    in the order queued, each verified, and every on_sent callback ran."""
    client, server = pair
    sender = SectionSender(client, depth=2)
    sent: list[int] = []
    for index in range(20):
        payload = [b"note %d" % index] if index % 2 else page_parts(64, index)
        tag = b"NOTE" if index % 2 else b"PAGE"
        sender.send(tag, payload, on_sent=functools.partial(sent.append, index))
    sender.send(END_TAG, b"{}")
    sender.flush()
    sender.close()
    reader = SectionReader(server, LIMITS)
    tags = [section.tag for section in reader]
    assert tags == [b"NOTE" if i % 2 else b"PAGE" for i in range(20)] + [END_TAG]
    assert sent == list(range(20))


def test_a_section_sent_in_chunks_is_byte_for_byte_what_write_section_writes(
    pair: tuple[Connection, Connection],
) -> None:
    """Scenario: a PAGE section of 1000 pages (several send chunks, with small parts
    between the large ones) and a small section go out through the sender thread,
    which checksums and sends a chunk at a time; the bytes on the wire are the ones
    write_section produces for the same payload, so the stream format is unchanged."""
    client, server = pair
    parts = page_parts(1000, 7, sparse=True)
    assert sum(memoryview(part).nbytes for part in parts) > 3 * SEND_CHUNK
    expected = bytearray()

    class Sink:
        def write(self, data: bytes | memoryview) -> int:
            expected.extend(data)
            return len(data)

    write_section(Sink(), b"PAGE", parts)
    write_section(Sink(), b"NOTE", b"after")
    received = bytearray()

    def receive() -> None:
        while len(received) < len(expected):
            received.extend(server.read(len(expected) - len(received)))

    receiving = threading.Thread(target=receive)
    receiving.start()
    sender = SectionSender(client)
    sender.send(b"PAGE", parts)
    sender.send(b"NOTE", b"after")
    sender.flush()
    sender.close()
    receiving.join()
    assert received == expected


def test_a_sending_error_reaches_the_producer(pair: tuple[Connection, Connection]) -> None:
    client, server = pair
    server.close()
    sender = SectionSender(client)

    def send_until_it_fails() -> None:
        for _ in range(200):  # the first sends may still fit in the socket buffers
            sender.send(b"PAGE", page_parts(64, 0))
        sender.flush()

    with pytest.raises(TransportError, match="sending failed"):
        send_until_it_fails()
    sender.close()


def test_a_damaged_section_is_never_handed_on(pair: tuple[Connection, Connection]) -> None:
    """Scenario: the third section's payload is damaged on the way: the first two are
    handed on, the third raises and nothing after it is seen."""
    client, server = pair
    write_section(client, b"NOTE", b"one")
    write_section(client, b"NOTE", b"two")
    client.writev([b"NOTE", (0).to_bytes(4, "little"), (5).to_bytes(8, "little"), b"three"])
    client.writev([(0).to_bytes(4, "little")])  # a checksum that cannot match
    write_section(client, b"NOTE", b"four")
    seen: list[bytes] = []

    def read_all() -> None:
        seen.extend(bytes(section.payload) for section in SectionReader(server, LIMITS))

    with pytest.raises(FormatError, match="fails its checksum"):
        read_all()
    assert seen == [b"one", b"two"]


class Placer:
    """Hands out a block of memory as the destination's placer does: the rows of the
    section's pages with data, run by run; a section of more than ``max_runs`` runs is
    left to a buffer."""

    def __init__(self, max_runs: int = 64) -> None:
        self.memory = np.zeros(64 * 4096, np.uint8)
        self.max_runs = max_runs
        self.calls = 0

    def __call__(self, gpa: int, kinds: np.ndarray) -> list[np.ndarray] | None:
        self.calls += 1
        first = (gpa - GPA) // 4096
        if gpa < GPA or first + kinds.size > 64:
            raise FormatError("outside RAM")
        runs = page_runs(np.flatnonzero(has_data(kinds)))
        if len(runs) > self.max_runs:
            return None
        rows = self.memory.reshape(-1, 4096)
        return [rows[first + start : first + start + count].reshape(-1) for _, start, count in runs]


def test_dense_pages_are_received_in_place_and_checked(
    pair: tuple[Connection, Connection],
) -> None:
    client, server = pair
    placer = Placer()
    parts = page_parts(8, 1)
    write_section(client, b"PAGE", parts)
    write_section(client, END_TAG, b"{}")
    sections = iter(SectionReader(server, LIMITS, placer=placer))
    section = next(sections)
    assert section.placed is not None
    assert bytes(section.placed[0]) == bytes(parts[-1])
    assert bytes(placer.memory[: 8 * 4096]) == bytes(parts[-1])


def test_scattered_pages_are_received_in_place_run_by_run(
    pair: tuple[Connection, Connection],
) -> None:
    """Scenario: a section carries every other page of a window (the rest SKIP); its
    data rows land in those pages of guest memory, one receive per run, and the pages
    between stay as they were."""
    client, server = pair
    placer = Placer()
    parts = page_parts(4, 6, sparse=True)
    write_section(client, b"PAGE", parts)
    write_section(client, END_TAG, b"{}")
    section = next(iter(SectionReader(server, LIMITS, placer=placer)))
    assert section.placed is not None
    assert len(section.placed) == 4
    rows = placer.memory.reshape(-1, 4096)
    data = np.frombuffer(bytes(parts[-1]), np.uint8).reshape(4, 4096)
    assert np.array_equal(rows[0:8:2], data)
    assert not rows[1:8:2].any()


def test_a_page_section_after_one_not_yet_applied_is_not_placed(
    pair: tuple[Connection, Connection],
) -> None:
    """Scenario: a scattered section (read into a buffer, placed by the consumer when
    it applies it) is followed by a dense one for the same pages. The reader must not
    place the second before the consumer applied the first, or the older pages would
    overwrite the newer."""
    client, server = pair
    placer = Placer(max_runs=1)
    write_section(client, b"PAGE", page_parts(8, 1, sparse=True))
    write_section(client, b"PAGE", page_parts(8, 2))
    write_section(client, END_TAG, b"{}")
    reader = SectionReader(server, LIMITS, placer=placer)
    sections = iter(reader)
    first = next(sections)
    assert first.placed is None
    deadline = time.monotonic() + 5
    while reader._ready.qsize() < 2 and time.monotonic() < deadline:  # read ahead
        time.sleep(0.01)
    second = next(sections)
    assert second.placed is None
    assert not placer.memory.any()


def test_a_page_section_elsewhere_is_placed_while_one_waits_for_the_consumer(
    pair: tuple[Connection, Connection],
) -> None:
    """Scenario: a scattered section waits in a buffer for the consumer; the next
    section is for other pages (as in a first pass, whose sections never overlap), so
    the reader places it at once rather than waiting."""
    client, server = pair
    placer = Placer(max_runs=1)
    write_section(client, b"PAGE", page_parts(8, 1, sparse=True))
    later = page_parts(8, 2)
    later[0] = (GPA + 16 * 4096).to_bytes(8, "little") + bytes(later[0])[8:]
    write_section(client, b"PAGE", later)
    write_section(client, END_TAG, b"{}")
    sections = iter(SectionReader(server, LIMITS, placer=placer))
    assert next(sections).placed is None
    assert next(sections).placed is not None
    assert bytes(placer.memory[16 * 4096 : 24 * 4096]) == bytes(later[-1])


def test_pages_after_post_are_not_placed(pair: tuple[Connection, Connection]) -> None:
    """Scenario: after POST the destination's guest runs, so pages must be verified
    before they are placed: the reader stops receiving them in place."""
    client, server = pair
    placer = Placer()
    write_section(client, b"POST", b"")
    write_section(client, b"PAGE", page_parts(4, 3))
    write_section(client, END_TAG, b"{}")
    sections = list(SectionReader(server, LIMITS, placer=placer))
    assert [s.tag for s in sections] == [b"POST", b"PAGE", END_TAG]
    assert sections[1].placed is None
    assert placer.calls == 0


def test_the_placer_refuses_pages_outside_guest_ram(pair: tuple[Connection, Connection]) -> None:
    client, server = pair
    parts = page_parts(2, 4)
    parts[0] = (GPA + 63 * 4096).to_bytes(8, "little") + bytes(parts[0])[8:]
    write_section(client, b"PAGE", parts)
    with pytest.raises(FormatError, match="outside RAM"):
        list(SectionReader(server, LIMITS, placer=Placer()))


def test_writev_delivers_big_buffers_whole(pair: tuple[Connection, Connection]) -> None:
    """Scenario: buffers much larger than the socket's buffers, sent in one writev,
    arrive intact (partial sends are resumed where they stopped)."""
    client, server = pair
    parts: list[bytes | memoryview] = [
        np.random.default_rng(5).bytes(3 << 20),
        b"x",
        memoryview(bytes(range(256)) * 9000),
    ]
    received = bytearray()

    def receive() -> None:
        while len(received) < sum(len(p) for p in parts):
            received.extend(server.read(1 << 20))

    thread = threading.Thread(target=receive)
    thread.start()
    assert client.writev(parts) == sum(len(p) for p in parts)
    thread.join(10)
    assert bytes(received) == b"".join(bytes(p) for p in parts)
