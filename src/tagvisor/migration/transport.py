"""TCP transport for migration: addresses, a listener on the address it is given (the
CLI's default is loopback), and connections that fail with a clear error on a cut or a
timeout."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from tagvisor.errors import TagvisorError
from tagvisor.snapshot.container import FormatError

DEFAULT_TIMEOUT: Final = 30.0


class TransportError(TagvisorError):
    """The connection failed, was cut, or timed out."""


@dataclass(frozen=True)
class TcpAddress:
    """A migration endpoint; ``str()`` writes it back as ``tcp:HOST:PORT``."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_address(text: str) -> TcpAddress:
    """``tcp:HOST:PORT`` (IPv6 hosts in brackets) -> TcpAddress."""
    if not text.startswith("tcp:"):
        raise ValueError(f"{text!r}: migration addresses look like tcp:127.0.0.1:4444")
    rest = text[4:]
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r}: expected tcp:HOST:PORT with a port from 0 to 65535")
    return TcpAddress(host, int(port))


class Connection:
    """A connected socket with the ByteSource/ByteSink interface of the container."""

    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.sock = sock
        self.timeout = timeout
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sent = 0
        self.received = 0
        self._deadline: float | None = None
        self._phase = ""

    def set_deadline(self, seconds: float | None, phase: str = "") -> None:
        """Every read from now on must end within ``seconds`` in all (None: only each
        read's own timeout): a peer that sends a byte now and then cannot hold this
        side in ``phase`` for ever."""
        self._deadline = None if seconds is None else time.monotonic() + seconds
        self._phase = phase

    def _arm(self) -> None:
        if self._deadline is None:
            return
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._late()
        self.sock.settimeout(min(self.timeout, left))

    def _late(self) -> TransportError:
        return TransportError(f"the peer took too long: {self._phase} ran out of time")

    def _failed(self, error: OSError) -> TransportError:
        """A receive error; a timeout that the phase's deadline set says so."""
        deadline = self._deadline
        if isinstance(error, TimeoutError) and deadline is not None:
            late = time.monotonic() >= deadline - 0.01
            return self._late() if late else TransportError(f"receiving failed: {error}")
        return TransportError(f"receiving failed: {error}")

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (at most 4 MiB) as they arrive; the peer closing is a
        FormatError, a failed or late receive a TransportError."""
        self._arm()
        try:
            data = self.sock.recv(min(size, 1 << 22))
        except OSError as error:
            raise self._failed(error) from error
        if not data:
            raise FormatError("the connection closed in the middle of the stream")
        self.received += len(data)
        return data

    def readinto(self, buffer: memoryview) -> int:
        """Receive into ``buffer`` (at most 4 MiB at once); the byte count, failures as in
        :meth:`read`."""
        self._arm()
        try:
            got = self.sock.recv_into(buffer, min(len(buffer), 1 << 22))
        except OSError as error:
            raise self._failed(error) from error
        if not got:
            raise FormatError("the connection closed in the middle of the stream")
        self.received += got
        return got

    def write(self, data: bytes | memoryview) -> int:
        """Send all of ``data`` (TransportError if sending fails); its length."""
        try:
            self.sock.sendall(data)
        except OSError as error:
            raise TransportError(f"sending failed: {error}") from error
        self.sent += len(data)
        return len(data)

    def writev(self, parts: Sequence[bytes | memoryview]) -> int:
        """Write buffers in a row with as few system calls as the socket allows
        (sendmsg gathers them), so a section's small head and checksum do not travel as
        packets of their own."""
        views = [view for view in (memoryview(part).cast("B") for part in parts) if view.nbytes]
        total = sum(view.nbytes for view in views)
        while views:
            try:
                done = self.sock.sendmsg(views)
            except OSError as error:
                raise TransportError(f"sending failed: {error}") from error
            self.sent += done
            while views and done >= views[0].nbytes:
                done -= views[0].nbytes
                views.pop(0)
            if done:
                views[0] = views[0][done:]
        return total

    def close(self) -> None:
        """Shut the connection down both ways and close it: the peer's next read sees the end."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Listener:
    """A listening socket (``SO_REUSEADDR``); port 0 picks a free port."""

    def __init__(self, address: TcpAddress) -> None:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((address.host, address.port))
        except OSError as error:
            self.sock.close()
            raise TransportError(f"cannot listen on {address}: {error}") from error
        self.sock.listen(1)
        self.address = TcpAddress(address.host, self.sock.getsockname()[1])

    def accept(self, timeout: float = DEFAULT_TIMEOUT) -> Connection:
        """The connection of the first source to connect within ``timeout`` seconds
        (TransportError if none does)."""
        self.sock.settimeout(timeout)
        try:
            sock, _peer = self.sock.accept()
        except OSError as error:
            raise TransportError(f"no source connected to {self.address}: {error}") from error
        return Connection(sock)

    def close(self) -> None:
        """Stop listening and release the port."""
        self.sock.close()


def connect(address: TcpAddress, timeout: float = DEFAULT_TIMEOUT) -> Connection:
    """A connection to ``address`` (TransportError if none is made within ``timeout`` seconds);
    reads then time out after ``timeout`` seconds too."""
    try:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    except OSError as error:
        raise TransportError(f"cannot connect to {address}: {error}") from error
    return Connection(sock, timeout)
