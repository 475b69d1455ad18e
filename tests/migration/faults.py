"""A TCP proxy between migration source and destination that breaks the stream."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from tagvisor.migration import Listener, TcpAddress


class _Proxy:
    """A loopback listener that a source connects to instead of the destination, and
    the thread that serves it (``_serve``)."""

    def __init__(self, target: TcpAddress) -> None:
        self.target = target
        self.listener = Listener(TcpAddress("127.0.0.1", 0))
        self.address = self.listener.address
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        raise NotImplementedError


class FaultProxy(_Proxy):
    """Forwards both directions; from byte ``at`` of the source's stream it misbehaves.

    ``cut``: closes both connections. ``corrupt``: flips one bit of that byte and goes
    on. ``truncate``: stops forwarding to the destination and closes its input, while
    replies still flow back to the source.
    """

    def __init__(self, target: TcpAddress, mode: str, at: int) -> None:
        self.mode = mode
        self.at = at
        super().__init__(target)

    def _serve(self) -> None:
        upstream = self.listener.accept(20).sock
        downstream = socket.create_connection((self.target.host, self.target.port))
        back = threading.Thread(target=self._pump_back, args=(downstream, upstream), daemon=True)
        back.start()
        forwarded = 0
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if forwarded <= self.at < forwarded + len(data):
                    cut = self.at - forwarded
                    if self.mode == "corrupt":
                        data = data[:cut] + bytes([data[cut] ^ 0x10]) + data[cut + 1 :]
                    else:
                        downstream.sendall(data[:cut])
                        if self.mode == "truncate":
                            downstream.shutdown(socket.SHUT_WR)
                            back.join(20)
                        break
                downstream.sendall(data)
                forwarded += len(data)
        except OSError:
            pass
        finally:
            for sock in (upstream, downstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.listener.close()

    @staticmethod
    def _pump_back(downstream: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := downstream.recv(65536):
                upstream.sendall(data)
        except OSError:
            pass


HEADER_BYTES = 20
SECTION_HEAD = struct.Struct("<4sIQ")


class LoseSection(_Proxy):
    """Forwards a migration section by section; the first section tagged ``tag`` going
    ``toward`` "destination" (source's stream) or "source" (the replies) is lost: it
    is not forwarded, and the link goes down with it, as when a host or network fails
    right then."""

    def __init__(
        self, target: TcpAddress, tag: bytes, toward: str, *, after: bytes | None = None
    ) -> None:
        self.tag = tag
        self.toward = toward
        #: Only a ``tag`` section after one tagged ``after`` (same direction) is lost.
        self.after = after
        self.lost = threading.Event()
        super().__init__(target)

    def _serve(self) -> None:
        upstream = self.listener.accept(20).sock
        downstream = socket.create_connection((self.target.host, self.target.port))
        pumps = [
            threading.Thread(
                target=self._pump,
                args=(upstream, downstream, HEADER_BYTES, self.toward == "destination"),
                daemon=True,
            ),
            threading.Thread(
                target=self._pump,
                args=(downstream, upstream, 0, self.toward == "source"),
                daemon=True,
            ),
        ]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join(60)
        for sock in (upstream, downstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.listener.close()

    def _pump(self, inp: socket.socket, out: socket.socket, header: int, watch: bool) -> None:
        try:
            if header:
                out.sendall(_exactly(inp, header))
            armed = self.after is None
            while not self.lost.is_set():
                head = _exactly(inp, SECTION_HEAD.size)
                tag, _flags, length = SECTION_HEAD.unpack(head)
                rest = _exactly(inp, length + 4)
                armed = armed or tag == self.after
                if watch and armed and tag == self.tag:
                    self.lost.set()
                    break
                out.sendall(head + rest)
        except (OSError, EOFError):
            pass
        for sock in (inp, out):  # the link is down both ways
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
