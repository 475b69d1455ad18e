"""A destination meets a hostile source: every field is checked before anything is
built, only IncomingError escapes, and the source hears why (RFSE or FAIL)."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import pytest

from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import IncomingError, Listener, MigrationError, TcpAddress, incoming
from tagvisor.migration import migrate as migrate_guest
from tagvisor.migration.pipeline import SectionSender
from tagvisor.migration.protocol import MAGIC, VERSION
from tagvisor.snapshot.container import read_section, write_header, write_section
from tagvisor.snapshot.state import capture_machine
from tagvisor.vmm import RunState
from tests.migration.conftest import Destination, source_machine


def good_hello() -> dict[str, Any]:
    machine = json.loads(capture_machine(source_machine()).encode())
    return {"machine": machine, "compress": False}


def greet(hello: bytes) -> tuple[bytes, bytes, list[BaseException]]:
    """Send HEADER and a HELO with this payload to a fresh destination: its reply's tag
    and payload, and what incoming() raised."""
    listener = Listener(TcpAddress("127.0.0.1", 0))
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            incoming(ModelKvm(64 << 20), listener, timeout=10)
        except BaseException as error:  # what the test inspects
            errors.append(error)

    thread = threading.Thread(target=serve)
    thread.start()
    with socket.create_connection(("127.0.0.1", listener.address.port)) as sock:
        stream = sock.makefile("rwb")
        write_header(stream, MAGIC, VERSION)
        write_section(stream, b"HELO", hello)
        stream.flush()
        reply = read_section(stream, lambda tag: 1 << 16)
    thread.join(10)
    return reply.tag, bytes(reply.payload), errors


def with_config(**fields: object) -> bytes:
    hello = good_hello()
    hello["machine"]["config"].update(fields)
    return json.dumps(hello).encode()


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"tcf": -1}, "tag check mode"),
        ({"tcf": 7}, "tag check mode"),
        ({"vcpus": 0}, "VCPUs"),
        ({"vcpus": 9}, "VCPUs"),
        ({"ram_backing": "tmpfs"}, "backing"),
        ({"tag_access": "telepathy"}, "tag access"),
        ({"ram_size": 0}, "2 MiB"),
        ({"ram_size": -(2 << 20)}, "2 MiB"),
        ({"ram_size": (2 << 20) + 4096}, "2 MiB"),
        ({"ram_size": 1 << 62}, "IPA"),
        ({"devices": [["no-such-device", 0x1000]]}, "device kind"),
    ],
)
def test_an_impossible_machine_shape_is_refused_before_anything_is_built(
    fields: dict[str, object], said: str
) -> None:
    """Scenario: HELO names a machine that cannot exist (a tag check mode of 7, no
    VCPUs, an unknown backing or tag access way, RAM of 0, negative, unaligned or
    2^62 bytes, an unknown device). The destination answers RFSE naming the field,
    before ACPT, and raises IncomingError only."""
    tag, payload, errors = greet(with_config(**fields))
    assert tag == b"RFSE"
    assert said in payload.decode()
    assert len(errors) == 1
    assert isinstance(errors[0], IncomingError)


@pytest.mark.parametrize(
    "hello",
    [
        b"[" * 20_000 + b"]" * 20_000,
        b'{"machine": {}, "compress": false, "pages": ' + b"9" * 5000 + b"}",
        b'{"machine": {"config": {}, "profile": "\\ud800", "mte_level": Infinity}}',
        json.dumps({**good_hello(), "compress": "yes"}).encode(),
    ],
    ids=["nested", "huge int", "surrogate+infinity", "wrong type"],
)
def test_malformed_json_in_the_greeting_is_a_clear_refusal(hello: bytes) -> None:
    """Scenario: HELO's JSON nests 20,000 deep, holds a 5000-digit integer, a lone
    surrogate with Infinity, or a string for a flag: RFSE with a reason, and only an
    IncomingError here (never RecursionError, ValueError or OverflowError)."""
    tag, payload, errors = greet(hello)
    assert tag == b"RFSE"
    assert b"malformed" in payload
    assert [type(error) for error in errors] == [IncomingError]


def test_a_stream_whose_pages_went_missing_is_not_accepted(
    destination: Destination, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: a source whose PAGE sections never leave it (a bug, or a forger)
    still ends with END! naming the pages it sent. The destination compares, answers
    FAIL, and no guest results; the source hears the reason."""
    send = SectionSender.send

    def drop_pages(self: SectionSender, tag: bytes, *args: Any, **kwargs: Any) -> None:
        if tag == b"PAGE":
            on_sent = kwargs.get("on_sent")
            if on_sent is not None:
                on_sent()
            return
        send(self, tag, *args, **kwargs)

    monkeypatch.setattr(SectionSender, "send", drop_pages)
    destination.start()
    with pytest.raises(MigrationError, match="arrived"):
        migrate_guest(source_machine(), destination.address, run_guest=False)
    destination.join()
    assert destination.machine is None
    assert "arrived" in str(destination.error)


def test_a_sender_that_trickles_its_greeting_is_cut_off_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scenario: finding G. A source sends its header a byte every 0.2 s, never faster
    than each read's own timeout allows to wait. The handshake's deadline (cut to 1 s
    here) ends it: the listener is free again and only IncomingError came out."""
    import time

    from tagvisor.migration import protocol as wire_protocol

    monkeypatch.setattr(wire_protocol, "HANDSHAKE_SECONDS", 1.0)
    listener = Listener(TcpAddress("127.0.0.1", 0))
    errors: list[BaseException] = []
    thread = threading.Thread(
        target=lambda: _run_incoming(listener, errors), daemon=True, name="slow-handshake"
    )
    thread.start()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", listener.address.port)) as sock:
        for byte in b"TAGVMIGR\x01\x00\x02\x00":
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
            if not thread.is_alive():
                break
    thread.join(10)
    assert time.monotonic() - started < 5
    assert [type(error) for error in errors] == [IncomingError]
    assert "took too long" in str(errors[0])


def _run_incoming(listener: Listener, errors: list[BaseException]) -> None:
    try:
        incoming(ModelKvm(64 << 20), listener, timeout=10)
    except BaseException as error:  # what the test inspects
        errors.append(error)


def test_the_source_backs_out_whatever_the_reply_raises(
    destination: Destination, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: finding F. Reading the destination's ITER echo raises something that
    is not a TagvisorError (a bug, or Ctrl-C). The source still stops its guest thread
    and turns dirty logging off before the exception goes on."""
    from tagvisor.migration import source as outgoing

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in reading the echo")

    monkeypatch.setattr(outgoing, "_await_echo", broken)
    machine = source_machine()
    destination.start()
    with pytest.raises(RuntimeError, match="a bug"):
        migrate_guest(machine, destination.address, run_guest=True)
    assert not machine.memory.regions[0].logging
    assert machine.state is not RunState.RUNNING
    destination.join()
