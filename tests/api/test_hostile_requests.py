"""Requests as hostile input: every bad one gets a JSON error, none harms the VM."""

from __future__ import annotations

import json
import socket

import pytest

from tagvisor.api.protocol import MAX_LINE, RequestError, parse_request
from tagvisor.api.server import MAX_CLIENTS
from tests.api.conftest import BOUND, Served, read_line

BAD = [
    (b"not json", "bad-json"),
    (b"\xff\xfe", "bad-json"),
    (b"[1, 2]", "bad-json"),
    (b'{"command": "status"', "bad-json"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, "bad-json"),
    (b'{"command": "status", "id": ' + b"9" * 30 + b"}", "bad-json"),
    (b'{"command": "stat\\ud800"}', "bad-json"),
    (b'{"command": NaN}', "bad-json"),
    (b"{}", "bad-request"),
    (b'{"command": 7}', "bad-request"),
    (b'{"command": "status", "extra": 1}', "bad-request"),
    (b'{"command": "status", "id": true}', "bad-request"),
    (b'{"command": "status", "id": [1]}', "bad-request"),
    (b'{"command": "reboot"}', "unknown-command"),
    (b'{"command": "snapshot"}', "bad-argument"),
    (b'{"command": "snapshot", "arguments": []}', "bad-argument"),
    (b'{"command": "snapshot", "arguments": {"path": 5}}', "bad-argument"),
    (b'{"command": "snapshot", "arguments": {"path": ""}}', "bad-argument"),
    (b'{"command": "snapshot", "arguments": {"path": "a\\u0000b"}}', "bad-argument"),
    (b'{"command": "pause", "arguments": {"now": true}}', "bad-argument"),
    (b'{"command": "migrate", "arguments": {"to": "nowhere"}}', "bad-argument"),
    (b'{"command": "migrate", "arguments": {"to": "tcp:h:1", "iterations": 0}}', "bad-argument"),
    (b'{"command": "migrate", "arguments": {"to": "tcp:h:1", "postcopy": 1}}', "bad-argument"),
]


@pytest.mark.parametrize(("line", "code"), BAD)
def test_a_malformed_request_is_parsed_into_the_error_its_reply_carries(
    line: bytes, code: str
) -> None:
    """Scenario: each malformed line: parse_request raises RequestError with the code
    the server replies with, and nothing else escapes it."""
    with pytest.raises(RequestError) as error:
        parse_request(line)
    assert error.value.code == code


def test_every_bad_request_gets_a_json_error_and_the_guest_runs_on(served: Served) -> None:
    """Scenario: one connection sends every malformed request in turn, on a running
    guest: each reply is ok=false with its code; then status shows the guest running
    and every exit it made is still counted."""
    sock = served.raw()
    with sock:
        for line, code in BAD:
            sock.sendall(line + b"\n")
            reply = read_line(sock)
            assert reply["ok"] is False, line
            assert reply["error"]["code"] == code, line
        sock.sendall(b'{"command": "status", "id": "after"}\n')
        status = read_line(sock)
    assert status["id"] == "after"
    assert status["result"]["state"] == "running"


def test_a_request_echoes_its_id(served: Served) -> None:
    """Scenario: a request with id "x-1", and a malformed one with id 9: both replies
    carry the id they came with."""
    with served.raw() as sock:
        sock.sendall(b'{"command": "status", "id": "x-1"}\n{"command": "nope", "id": 9}\n')
        assert read_line(sock)["id"] == "x-1"
        assert read_line(sock)["id"] == 9


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (a reset counts: it closed with our bytes
    unread)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_an_overlong_line_is_refused_and_the_connection_closed(served: Served) -> None:
    """Scenario: a client sends more than MAX_LINE bytes without a newline: one
    `too-long` error, the connection closes, and a new client finds the guest running."""
    with served.raw() as sock:
        sock.sendall(b"x" * (MAX_LINE + 10))
        assert read_line(sock)["error"]["code"] == "too-long"
        assert _closed(sock)
    with served.client() as client:
        assert client.call("status")["state"] == "running"


def test_a_client_that_vanishes_mid_request_leaves_the_guest_running(served: Served) -> None:
    """Scenario: a client sends half a request and closes; another finds the guest
    running."""
    with served.raw() as sock:
        sock.sendall(b'{"command": "pau')
    with served.client() as client:
        assert client.call("status")["state"] == "running"


def test_one_client_too_many_is_told_so(served: Served) -> None:
    """Scenario: MAX_CLIENTS clients hold connections; one more gets a `busy` error
    line instead of the greeting; the first clients still get answers."""
    held = [served.raw() for _ in range(MAX_CLIENTS)]
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(BOUND)
        sock.connect(str(served.path))
        with sock:
            assert read_line(sock)["error"]["code"] == "busy"
        held[0].sendall(json.dumps({"command": "status"}).encode() + b"\n")
        assert read_line(held[0])["ok"] is True
    finally:
        for sock in held:
            sock.close()
