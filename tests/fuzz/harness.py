"""Feeding one hostile input to a reader: a snapshot file to read_snapshot and
restore_snapshot, a stream to a migration destination over loopback TCP.

What may come out is fixed: success, or a TagvisorError (the project's documented
errors). Anything else escaping, a reader that does not finish in time, or a reader
whose Python allocations peak past a bound set by the section limits is a finding.

A finding is raised as a plain Finding with the story in its message, from a frame
that holds nothing large: hypothesis keeps the failures it shrinks, and a traceback
holding a destination's buffers (hundreds of MiB) for each of them would exhaust the
machine's memory.
"""

from __future__ import annotations

import socket
import threading
import traceback
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Final

from tagvisor.errors import TagvisorError
from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import protocol, receive
from tagvisor.migration.transport import Connection
from tagvisor.snapshot import read_snapshot, restore_snapshot

#: Python allocations a reader may peak at, beyond the guest it builds: what the section
#: limits allow. A destination's reader pools three buffers of the largest section
#: (PAGE, 66 MiB) and decodes a fourth: 4 of them, plus 32 MiB for everything else.
PEAK_BYTES: Final = 4 * max(protocol.limits().values()) + (32 << 20)
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

    def run() -> str:
        kvm = ModelKvm(MAX_GUEST + (32 << 20))
        read_snapshot(path)
        restore_snapshot(path, kvm)
        return "restored"

    return _judge(run)


def feed_stream(raw: bytes) -> str:
    """Send ``raw`` as a source would to a destination (replies are read and dropped);
    how the destination ended."""
    ours, theirs = _loopback_pair()
    writer = threading.Thread(target=_write_then_drain, args=(ours, raw), daemon=True)
    writer.start()
    conn = Connection(theirs, timeout=STREAM_SECONDS)

    def run() -> str:
        kvm = ModelKvm(MAX_GUEST + (32 << 20))
        _, report = receive(conn, kvm, max_memory=MAX_GUEST)
        if report.postcopy is not None:
            report.postcopy.join(STREAM_SECONDS)
        return "received"

    try:
        outcome = _judge(run)
    finally:
        conn.close()
        writer.join(STREAM_SECONDS)
    if writer.is_alive():
        raise Finding("the destination neither finished nor failed with the stream")
    return outcome


def _judge(run: Callable[[], str]) -> str:
    """``run``'s outcome: its result or the TagvisorError's name; a Finding for any
    other exception or too large an allocation peak (raised once ``run``'s frames, and
    what they held, are gone)."""
    problem: str | None = None
    tracemalloc.start()
    try:
        outcome = run()
    except TagvisorError as error:
        outcome = type(error).__name__
    except Exception as error:
        problem = "".join(traceback.format_exception(error))
        outcome = "finding"
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    if problem is None and peak > PEAK_BYTES:
        problem = f"a reader's allocations peaked at {peak >> 20} MiB (bound {PEAK_BYTES >> 20})"
    if problem is not None:
        raise Finding(problem)
    return outcome


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
