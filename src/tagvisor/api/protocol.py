"""The control socket's protocol, version 1: one JSON object per line, each way.

docs/api-socket.md is the reference. Everything a client sends is hostile input:
:func:`parse_request` turns a line into a :class:`Request` or raises
:class:`RequestError` with the code and message the reply carries, and nothing else
escapes it (JSON through :func:`tagvisor.wire.loads`, every field checked by type and
range before anything acts on it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from tagvisor import __version__
from tagvisor.errors import TagvisorError
from tagvisor.migration import parse_address
from tagvisor.wire import FormatError, loads

#: The protocol's version. A change that an older client would misread takes a new
#: number; new commands and new result fields do not.
PROTOCOL: Final = 1
#: The longest line either side sends (bytes, newline included).
MAX_LINE: Final = 64 << 10
#: Longest path or address a request may name (characters).
MAX_TEXT: Final = 4096
#: The commands, with the arguments each takes (name -> JSON type).
COMMANDS: Final[dict[str, dict[str, type]]] = {
    "status": {},
    "pause": {},
    "resume": {},
    "snapshot": {"path": str},
    "migrate": {"to": str, "postcopy": bool, "compress": bool, "iterations": int},
    "stop": {},
}
#: Arguments a command cannot go without.
REQUIRED: Final[dict[str, frozenset[str]]] = {
    "snapshot": frozenset({"path"}),
    "migrate": frozenset({"to"}),
}
#: Largest number of pre-copy passes a client may ask for.
MAX_ITERATIONS: Final = 64


class RequestError(TagvisorError):
    """A request the server will not carry out; ``code`` is the reply's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Request:
    """A checked request: a known command and arguments of the right types."""

    command: str
    arguments: dict[str, Any]
    id: str | int | None = None


def greeting() -> dict[str, Any]:
    """What the server sends first on every connection."""
    return {
        "tagvisor": {"version": __version__, "protocol": PROTOCOL},
        "commands": sorted(COMMANDS),
    }


def _request_id(raw: dict[str, Any]) -> str | int | None:
    value = raw.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RequestError("bad-request", "'id' must be a string or an integer")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise RequestError("bad-request", f"'id' is longer than {MAX_TEXT} characters")
    return value


def _arguments(command: str, raw: object) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RequestError("bad-argument", "'arguments' must be a JSON object")
    allowed = COMMANDS[command]
    for name, value in raw.items():
        kind = allowed.get(name)
        if kind is None:
            known = ", ".join(sorted(allowed)) or "none"
            raise RequestError(
                "bad-argument", f"{command} takes no argument {name!r} (it takes: {known})"
            )
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RequestError("bad-argument", f"{command}: {name!r} must be a {kind.__name__}")
        if isinstance(value, str) and not 0 < len(value) <= MAX_TEXT:
            raise RequestError("bad-argument", f"{command}: {name!r} must be 1 to {MAX_TEXT} chars")
        if isinstance(value, str) and "\0" in value:
            raise RequestError("bad-argument", f"{command}: {name!r} holds a NUL character")
    missing = REQUIRED.get(command, frozenset()) - raw.keys()
    if missing:
        raise RequestError("bad-argument", f"{command} needs {', '.join(sorted(missing))}")
    if command == "migrate":
        try:
            parse_address(raw["to"])
        except ValueError as error:
            raise RequestError("bad-argument", f"migrate: {error}") from None
    iterations = raw.get("iterations")
    if iterations is not None and not 1 <= iterations <= MAX_ITERATIONS:
        raise RequestError("bad-argument", f"migrate: 'iterations' must be 1 to {MAX_ITERATIONS}")
    return dict(raw)


def parse_request(line: bytes) -> Request:
    """The request on ``line`` (without its newline), or RequestError saying why not."""
    try:
        raw = loads(line, "the request")
    except FormatError as error:
        raise RequestError("bad-json", str(error)) from None
    request_id = _request_id(raw)
    unknown = raw.keys() - {"command", "arguments", "id"}
    if unknown:
        raise RequestError("bad-request", f"unknown field(s): {', '.join(sorted(unknown))}")
    command = raw.get("command")
    if not isinstance(command, str):
        raise RequestError("bad-request", "a request needs 'command', a string")
    if command not in COMMANDS:
        raise RequestError(
            "unknown-command",
            f"no command {command[:64]!r}; commands: {', '.join(sorted(COMMANDS))}",
        )
    return Request(command, _arguments(command, raw.get("arguments")), request_id)


def request_id_of(line: bytes) -> str | int | None:
    """The id a malformed request carried, when it can be read, to echo in the error."""
    try:
        return _request_id(loads(line, "the request"))
    except (FormatError, RequestError):
        return None


def encode(value: dict[str, Any]) -> bytes:
    """One reply line: compact JSON and a newline."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def success(request_id: str | int | None, result: dict[str, Any]) -> dict[str, Any]:
    """The reply to a request that was carried out."""
    return {"id": request_id, "ok": True, "result": result}


def failure(request_id: str | int | None, code: str, message: str) -> dict[str, Any]:
    """The reply to a request that was not carried out, or failed."""
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}
