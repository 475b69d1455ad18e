"""A TCP proxy between migration source and destination that breaks the stream."""

from __future__ import annotations

import contextlib
import socket
import threading

from tagvisor.migration import Listener, TcpAddress


class FaultProxy:
    """Forwards both directions; from byte ``at`` of the source's stream it misbehaves.

    ``cut``: closes both connections. ``corrupt``: flips one bit of that byte and goes
    on. ``truncate``: stops forwarding to the destination and closes its input, while
    replies still flow back to the source.
    """

    def __init__(self, target: TcpAddress, mode: str, at: int) -> None:
        self.target = target
        self.mode = mode
        self.at = at
        self.listener = Listener(TcpAddress("127.0.0.1", 0))
        self.address = self.listener.address
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

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
