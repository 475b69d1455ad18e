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
        """The console's text as deterministic JSON."""
        return wire.dumps({"text": self.text})

    @classmethod
    def decode(cls, payload: wire.Payload) -> ConsoleState:
        """The state in ``payload`` (FormatError if it is not one)."""
        return cls(wire.field(wire.loads(payload, "the console's state"), "text", str))


class Pl011:
    """A PL011 UART's transmit side: each byte stored to UARTDR is console output,
    kept and handed to ``sink`` as it comes."""

    name = "pl011"

    def __init__(self, sink: Callable[[bytes], None] | None = None) -> None:
        self.output = bytearray()
        self.sink = sink

    def mmio_read(self, offset: int, size: int) -> bytes:
        """Zeros: UARTFR reads 0, the transmit FIFO is never full."""
        return bytes(size)

    def mmio_write(self, offset: int, data: bytes) -> None:
        """A byte written to UARTDR goes to the console; other registers are ignored."""
        if offset == UARTDR and data:
            byte = data[:1]
            self.output += byte
            if self.sink is not None:
                self.sink(byte)

    @property
    def text(self) -> str:
        """Everything the guest has written, as text."""
        return self.output.decode("utf-8", errors="replace")

    def save(self) -> ConsoleState:
        """The console's text so far."""
        return ConsoleState(self.text)

    def restore(self, state: ConsoleState) -> None:
        """Take up the console's text (the sink is not replayed)."""
        self.output[:] = state.text.encode()
