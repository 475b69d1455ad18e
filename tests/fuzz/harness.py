"""Feeding one hostile input to a reader: a snapshot file to read_snapshot and
restore_snapshot, a stream to a migration destination over a socket pair.

What may come out is fixed: success, or a TagvisorError (the project's documented
errors). Anything else escaping, a reader that does not finish in time, or a reader
whose Python allocations peak past a bound set by the section limits is a finding.
"""

from __future__ import annotations

import socket
import threading
import tracemalloc
from pathlib import Path
from typing import Final

from tagvisor.errors import TagvisorError
from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import receive
from tagvisor.migration.transport import Connection
from tagvisor.snapshot import read_snapshot, restore_snapshot

#: Python allocations a reader may peak at, beyond the guest it builds: a few times the
#: largest section (16 MiB), as reading, verifying and decoding one needs.
PEAK_BYTES: Final = 160 << 20
#: Guest RAM a fuzzed machine may have at most (the destination's --max-mem).
MAX_GUEST: Final = 64 << 20
#: Seconds a destination has for one fuzzed stream.
STREAM_SECONDS: Final = 10.0


class Finding(AssertionError):
    """The reader did something a hostile input must never make it do."""


def feed_snapshot(raw: bytes, directory: Path) -> str:
    """Read, then restore, a snapshot file holding ``raw``; how it ended."""
    path = directory / "fuzzed.snap"
    path.write_bytes(raw)
    kvm = ModelKvm(MAX_GUEST + (32 << 20))  # its host RAM is not the reader's doing
    try:
        with _bounded():
            read_snapshot(path)
            restore_snapshot(path, kvm)
    except TagvisorError as error:
        return type(error).__name__
    return "restored"


def feed_stream(raw: bytes) -> str:
    """Send ``raw`` as a source would to a destination on a socket pair (replies are
    read and dropped); how the destination ended."""
    ours, theirs = _loopback_pair()
    writer = threading.Thread(target=_write_then_drain, args=(ours, raw), daemon=True)
    writer.start()
    conn = Connection(theirs, timeout=STREAM_SECONDS)
    kvm = ModelKvm(MAX_GUEST + (32 << 20))
    outcome: list[str] = []
    try:
        with _bounded():
            machine, report = receive(conn, kvm, max_memory=MAX_GUEST)
            if report.postcopy is not None:
                report.postcopy.join(STREAM_SECONDS)
            outcome.append("received")
            del machine
    except TagvisorError as error:
        outcome.append(type(error).__name__)
    finally:
        conn.close()
        writer.join(STREAM_SECONDS)
    if writer.is_alive():
        raise Finding("the destination neither finished nor failed with the stream")
    return outcome[0]


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a TCP connection on loopback (what a destination really reads)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        theirs, _ = server.accept()
    return ours, theirs


def _write_then_drain(sock: socket.socket, raw: bytes) -> None:
    try:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(STREAM_SECONDS)
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass
    finally:
        sock.close()


class _bounded:  # noqa: N801 - used as a context manager, like a function
    """Fails with a Finding if Python's allocations peak past PEAK_BYTES."""

    def __enter__(self) -> None:
        tracemalloc.start()

    def __exit__(self, *exc: object) -> None:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if peak > PEAK_BYTES:
            raise Finding(f"a reader's allocations peaked at {peak >> 20} MiB")
