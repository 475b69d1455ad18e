"""`incoming --capture FILE`: keep every byte the source sent, for `tagvisor inspect`.

The destination's connection is a :class:`~tagvisor.migration.transport.Connection`
whose reads also go to the file, so the capture is exactly the TAGVMIGR stream the
source wrote (the destination's replies are not in it), whatever the receiver did.
"""

from __future__ import annotations

from typing import BinaryIO

from tagvisor.migration import Listener, TcpAddress
from tagvisor.migration.transport import DEFAULT_TIMEOUT, Connection


class CapturingConnection(Connection):
    """A connection that writes what it receives to ``sink`` as it receives it."""

    def __init__(self, connection: Connection, sink: BinaryIO) -> None:
        super().__init__(connection.sock, connection.timeout)
        self.sink = sink

    def read(self, size: int) -> bytes:
        """Receive up to ``size`` bytes, and capture them."""
        data = super().read(size)
        self.sink.write(data)
        return data

    def readinto(self, buffer: memoryview) -> int:
        """Receive into ``buffer``, and capture what came."""
        got = super().readinto(buffer)
        self.sink.write(buffer[:got])
        return got


class CapturingListener(Listener):
    """A listener whose connection captures the stream into ``sink`` (unbuffered, so
    the file holds every byte received even if the destination fails mid-stream)."""

    def __init__(self, address: TcpAddress, sink: BinaryIO) -> None:
        super().__init__(address)
        self.sink = sink

    def accept(self, timeout: float = DEFAULT_TIMEOUT) -> Connection:
        """Accept the source, through a capturing connection."""
        return CapturingConnection(super().accept(timeout), self.sink)
