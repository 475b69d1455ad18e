"""A client of the control socket, for `tagvisor remote` and for scripts."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tagvisor.api.protocol import MAX_LINE, PROTOCOL
from tagvisor.errors import TagvisorError
from tagvisor.wire import FormatError, loads


class ApiError(TagvisorError):
    """The server refused or failed a request; ``code`` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ApiUnavailable(TagvisorError):
    """Nothing serves the control protocol at that path."""


class ApiClient:
    """One connection to a control socket; :meth:`call` sends a request and waits."""

    def __init__(self, path: Path, timeout: float | None = 30.0) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._buffer = bytearray()
        self._next_id = 1
        try:
            self._sock.connect(str(path))
        except FileNotFoundError:
            self._sock.close()
            raise ApiUnavailable(
                f"no socket at {path}: start the VM with `tagvisor run GUEST --api-socket {path}`"
            ) from None
        except OSError as error:
            self._sock.close()
            raise ApiUnavailable(
                f"cannot connect to {path}: {error.strerror} (is the VM still running?)"
            ) from None
        self.greeting = self._read()
        self._check_greeting()

    def _check_greeting(self) -> None:
        if "error" in self.greeting:
            error = self.greeting["error"]
            raise ApiError(str(error.get("code")), str(error.get("message")))
        server = self.greeting.get("tagvisor")
        if not isinstance(server, dict) or server.get("protocol") != PROTOCOL:
            raise ApiUnavailable(
                f"{self.path} does not speak tagvisor's control protocol {PROTOCOL}"
            )

    def _read(self) -> dict[str, Any]:
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_LINE:
                raise ApiUnavailable("the server sent a line longer than the protocol allows")
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise ApiUnavailable("the server did not answer in time") from None
            if not data:
                raise ApiUnavailable("the server closed the connection")
            self._buffer += data
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        try:
            return loads(line, "the server's reply")
        except FormatError as error:
            raise ApiUnavailable(str(error)) from None

    def call(self, command: str, **arguments: Any) -> dict[str, Any]:
        """Carry out ``command`` on the server; its result, or ApiError."""
        request_id = self._next_id
        self._next_id += 1
        request = {"id": request_id, "command": command, "arguments": arguments}
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        reply = self._read()
        if reply.get("ok") is True and isinstance(reply.get("result"), dict):
            result: dict[str, Any] = reply["result"]
            return result
        error = reply.get("error")
        if isinstance(error, dict):
            raise ApiError(str(error.get("code")), str(error.get("message")))
        raise ApiUnavailable("the server's reply is neither a result nor an error")

    def close(self) -> None:
        """Close the connection (the VM carries on)."""
        self._sock.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
