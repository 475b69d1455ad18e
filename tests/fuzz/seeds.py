"""Seeds for the fuzzer: a real snapshot and a real migration stream of a small guest
that tags a heap, captured once per run (plus the format 1.1 snapshot kept in
tests/snapshot/data). Functions, not fixtures, so that a failing example's report
names the mutation and not a megabyte of seed."""

from __future__ import annotations

import contextlib
import functools
import socket
import tempfile
import threading
from pathlib import Path

from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GuestProgram
from tagvisor.migration import Listener, TcpAddress, incoming, migrate
from tagvisor.snapshot import save_snapshot
from tagvisor.vmm import Machine, MachineBuilder
from tests.snapshot.resumable import resumable

RAM = 4 << 20


def small_guest() -> Machine:
    program: GuestProgram = resumable(4)  # type: ignore[assignment]
    machine = MachineBuilder(ModelKvm(48 << 20)).memory(RAM).python_guest(program).build()
    machine.run(max_exits=2)
    return machine


@functools.cache
def seed_snapshot() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "seed.snap"
        save_snapshot(small_guest(), path)
        return path.read_bytes()


@functools.cache
def seed_stream() -> bytes:
    """Everything a source sent in a real pre-copy migration, recorded by a proxy."""
    listener = Listener(TcpAddress("127.0.0.1", 0))
    target = listener.address
    received = threading.Thread(
        target=incoming, args=(ModelKvm(48 << 20), listener), kwargs={"timeout": 20}, daemon=True
    )
    received.start()
    front = socket.create_server(("127.0.0.1", 0))
    recorded = bytearray()

    def relay() -> None:
        upstream, _ = front.accept()
        downstream = socket.create_connection((target.host, target.port))
        back = threading.Thread(target=_pump, args=(downstream, upstream, None), daemon=True)
        back.start()
        _pump(upstream, downstream, recorded)
        back.join(20)

    proxy = threading.Thread(target=relay, daemon=True)
    proxy.start()
    migrate(small_guest(), TcpAddress("127.0.0.1", front.getsockname()[1]), run_guest=False)
    proxy.join(20)
    received.join(20)
    front.close()
    return bytes(recorded)


def _pump(inp: socket.socket, out: socket.socket, record: bytearray | None) -> None:
    try:
        while data := inp.recv(1 << 16):
            if record is not None:
                record += data
            out.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (inp, out):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@functools.cache
def seed_old_snapshot() -> bytes:
    return (Path(__file__).parents[1] / "snapshot" / "data" / "resumable-1.1.snap").read_bytes()
