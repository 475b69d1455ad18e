"""Broken migrations: the source guest keeps running with nothing lost, and the
destination never resumes a partial guest."""

import pytest

from tagvisor.migration import IncomingError, MigrationError, migrate
from tagvisor.snapshot.guestpages import memory_digest
from tests.migration.churner import CHECK
from tests.migration.conftest import Destination, source_machine
from tests.migration.faults import FaultProxy


def rounds_after(machine: object, exits: int) -> list[int]:
    before = len(machine.ucall.calls)  # type: ignore[attr-defined]
    machine.run(max_exits=exits)  # type: ignore[attr-defined]
    return [
        c.args[0]
        for c in machine.ucall.calls[before:]  # type: ignore[attr-defined]
        if c.cmd.name == "SYNC" and c.args[0] != CHECK
    ]


@pytest.mark.parametrize(
    ("mode", "at"),
    [("cut", 300_000), ("corrupt", 200_000), ("truncate", 500_000), ("cut", 40), ("corrupt", 30)],
    ids=["cut mid-pages", "corrupt page byte", "truncated", "cut in HELO", "corrupt HELO"],
)
def test_broken_stream_leaves_the_source_whole_and_the_destination_empty(
    destination: Destination, mode: str, at: int
) -> None:
    """Scenario: the stream between source and destination is cut, corrupted or
    truncated at a given byte.

    migrate() raises MigrationError; dirty logging is off again; the source guest
    resumes from exactly where it was and its memory is unchanged by the attempt; the
    destination raises IncomingError and returns no machine."""
    source = source_machine()
    source_digest = memory_digest(source)
    reached = source.vcpus[0].regs.core[19]  # type: ignore[attr-defined]
    destination.start()
    proxy = FaultProxy(destination.address, mode, at)
    with pytest.raises(MigrationError):
        migrate(source, proxy.address, run_guest=False)
    destination.join()
    assert isinstance(destination.error, IncomingError)
    assert destination.machine is None
    assert not source.memory.regions[0].logging
    assert memory_digest(source) == source_digest
    assert rounds_after(source, 5)[:2] == [reached, reached + 1]


def test_destination_gone_mid_stream(destination: Destination) -> None:
    """Scenario: the destination's connection dies after the handshake while pages
    flow (as if its process were killed); the running source guest is paused only by
    the failure handling and then carries on."""
    source = source_machine()
    destination.start()
    proxy = FaultProxy(destination.address, "cut", 2_000_000)
    with pytest.raises(MigrationError):
        migrate(source, proxy.address, run_guest=True)
    destination.join()
    assert destination.machine is None
    reached = source.vcpus[0].regs.core[19]  # type: ignore[attr-defined]
    assert rounds_after(source, 4)[:2] == [reached, reached + 1]


def test_wrong_stream_version_is_refused_without_a_guest() -> None:
    """Scenario: a source speaking major version 2 connects to this destination."""
    import socket
    import threading

    from tagvisor.kvm.model import ModelKvm
    from tagvisor.migration import Listener, TcpAddress, incoming
    from tagvisor.migration.protocol import MAGIC
    from tagvisor.snapshot.container import Version, read_section, write_header

    listener = Listener(TcpAddress("127.0.0.1", 0))
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            incoming(ModelKvm(32 << 20), listener, timeout=10)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=serve)
    thread.start()
    sock = socket.create_connection(("127.0.0.1", listener.address.port))
    stream = sock.makefile("rwb")
    write_header(stream, MAGIC, Version(2, 0))
    stream.flush()
    reply = read_section(stream, lambda tag: 1 << 16)
    thread.join(10)
    sock.close()
    assert reply.tag == b"RFSE"
    assert b"version 2.0" in reply.payload
    assert isinstance(errors[0], IncomingError)
