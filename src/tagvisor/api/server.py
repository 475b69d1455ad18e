"""The control socket: a Unix socket serving the protocol of tagvisor.api.protocol.

The socket is created readable and writable by its owner only (mode 0600), and a peer
whose user is neither the owner nor root is turned away as well (SO_PEERCRED), so a
socket in a shared directory is no wider open than its owner's files. Each client gets
a thread; requests are hostile input, and whatever one does, the reply is JSON and the
machine is untouched unless the request was carried out.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Final

from tagvisor.api.controller import Controller
from tagvisor.api.protocol import (
    MAX_LINE,
    RequestError,
    encode,
    failure,
    greeting,
    parse_request,
    request_id_of,
    success,
)
from tagvisor.errors import TagvisorError

#: Clients served at once; one more is told so and closed.
MAX_CLIENTS: Final = 8
#: Longest path a Unix socket address holds on Linux (sun_path, without its NUL).
MAX_SOCKET_PATH: Final = 107


class ApiServerError(TagvisorError):
    """The control socket cannot be served at that path; the message says why."""


def _bind(path: Path) -> socket.socket:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ApiServerError(f"{path}: a socket path holds at most {MAX_SOCKET_PATH} bytes")
    if path.exists() or path.is_symlink():
        raise ApiServerError(f"{path} exists: remove it or choose another --api-socket path")
    if not path.parent.is_dir():
        raise ApiServerError(f"{path.parent} is not a directory: create it first")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask is the only way to create the socket without a moment at wider modes.
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as error:
        sock.close()
        raise ApiServerError(f"cannot create the socket {path}: {error.strerror}") from None
    finally:
        os.umask(old)
    try:
        os.chmod(path, 0o600)
        sock.listen(MAX_CLIENTS)
    except BaseException:  # Ctrl-C as the file appears: leave no socket file behind
        _discard(sock, path)
        raise
    return sock


def _discard(sock: socket.socket, path: Path) -> None:
    sock.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _peer_allowed(conn: socket.socket) -> bool:
    """Whether the peer runs as this process's user, or as root."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.geteuid(), 0)


class ApiServer:
    """Serves ``controller`` on a Unix socket at ``path`` until :meth:`close`."""

    def __init__(self, path: Path, controller: Controller) -> None:
        self.path = path
        self.controller = controller
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="api", daemon=True)
        self._sock = _bind(path)  # last: nothing between the file and the server's close

    def start(self) -> ApiServer:
        """Start accepting clients; returns self. Interrupted (Ctrl-C as the socket
        file appears), it closes the server and removes the file first."""
        try:
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop accepting, and remove the socket file."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        _discard(self._sock, self.path)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            if not self._clients.acquire(blocking=False):
                self._refuse(conn, "busy", f"{MAX_CLIENTS} clients are connected already")
                continue
            threading.Thread(
                target=self._serve, args=(conn,), name="api-client", daemon=True
            ).start()

    @staticmethod
    def _refuse(conn: socket.socket, code: str, message: str) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(encode(failure(None, code, message)))
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if not _peer_allowed(conn):
                self._refuse(conn, "forbidden", "this socket serves its owner only")
                return
            conn.sendall(encode(greeting()))
            self._converse(conn)
        except OSError:
            pass  # the client went away; nothing of the machine's depends on it
        finally:
            conn.close()
            self._clients.release()

    def _converse(self, conn: socket.socket) -> None:
        pending = bytearray()
        while True:
            data = conn.recv(65536)
            if not data:
                return
            pending += data
            while (end := pending.find(b"\n")) >= 0:
                line = bytes(pending[:end]).rstrip(b"\r")
                del pending[: end + 1]
                if end + 1 > MAX_LINE:
                    self._too_long(conn)
                    return
                if line.strip():
                    conn.sendall(encode(self._answer(line)))
            if len(pending) >= MAX_LINE:
                self._too_long(conn)  # a line that long cannot become a request
                return

    @staticmethod
    def _too_long(conn: socket.socket) -> None:
        message = f"a request is at most {MAX_LINE} bytes, newline included"
        conn.sendall(encode(failure(None, "too-long", message)))

    def _answer(self, line: bytes) -> dict[str, object]:
        try:
            request = parse_request(line)
        except RequestError as error:
            return failure(request_id_of(line), error.code, error.message)
        try:
            return success(request.id, self.controller.execute(request))
        except RequestError as error:
            return failure(request.id, error.code, error.message)
        except Exception as error:
            return failure(request.id, "internal", f"{type(error).__name__}: {error}")
