"""A PL011 UART's transmit side: the guest's console.

Only what a polled console needs: bytes written to UARTDR (offset 0x000) are output;
UARTFR (0x018) reads 0, so TXFF (transmit FIFO full) is never set and a driver that
polls it never waits. Everything else reads 0 and ignores writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tagvisor import wire

UARTDR: Final = 0x000
UARTFR: Final = 0x018
WINDOW: Final = 0x1000


@dataclass(frozen=True)
class ConsoleState:
    """What the guest has written to its console so far."""

    text: str

    def encode(self) -> bytes:
        return wire.dumps({"text": self.text})

    @classmethod
    def decode(cls, payload: wire.Payload) -> ConsoleState:
        return cls(wire.field(wire.loads(payload, "the console's state"), "text", str))


class Pl011:
    name = "pl011"

    def __init__(self, sink: Callable[[bytes], None] | None = None) -> None:
        self.output = bytearray()
        self.sink = sink

    def mmio_read(self, offset: int, size: int) -> bytes:
        return bytes(size)

    def mmio_write(self, offset: int, data: bytes) -> None:
        if offset == UARTDR and data:
            byte = data[:1]
            self.output += byte
            if self.sink is not None:
                self.sink(byte)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", errors="replace")

    def save(self) -> ConsoleState:
        return ConsoleState(self.text)

    def restore(self, state: ConsoleState) -> None:
        self.output[:] = state.text.encode()
