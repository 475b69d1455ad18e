"""A PL011 UART that Linux's amba-pl011 driver accepts: the Linux guests' console.

The bare-metal guests' console (:mod:`tagvisor.vmm.devices.pl011`) only takes UARTDR
writes. Linux needs more (drivers/tty/serial/amba-pl011.c, drivers/amba/bus.c, and
Arm's PL011 TRM, DDI 0183):

* the AMBA bus matches the driver by the PrimeCell IDs in the window's last 32 bytes:
  UARTPeriphID0-3 at 0xFE0-0xFEC (0x00141011: part 0x011, designer 0x41 Arm,
  revision 1) and UARTPCellID0-3 at 0xFF0-0xFFC (0xB105F00D), one byte per word;
* UARTFR says TXFE (transmit FIFO empty) and RXFE, never TXFF or BUSY, so the
  console's polled writes never wait: bytes leave as they are written;
* the interrupt registers: UARTIMSC (mask), UARTRIS (raw), UARTMIS (= RIS & IMSC) and
  UARTICR (write 1s to clear). Each UARTDR write raises TXRIS, as QEMU's pl011 does;
  the driver masks TXIM once its buffer is empty, so the line falls again. The line is
  (RIS & IMSC) != 0 and goes to the GIC through KVM_IRQ_LINE on every change;
* the control registers (UARTCR, LCR_H, IBRD, FBRD, IFLS, DMACR, ILPR) read back what
  was written;
* receiving (:meth:`AmbaPl011.receive`, behind ``Machine.console_input``): the host's
  bytes wait on the "line" (a backlog, as QEMU's chardev holds them while
  ``pl011_can_receive`` says no) and enter the receive FIFO while UARTCR has UARTEN
  and RXE, up to its depth: 16 with LCR_H.FEN, else a 1-byte holding register (TRM
  3.3.1, QEMU's PL011_FIFO_DEPTH). UARTFR has RXFE while it is empty and RXFF while it
  is full; a UARTDR read takes the oldest byte (no error bits: nothing goes wrong on
  this line) and lets the next wait in;
* RXRIS is raised when the FIFO's level reaches the trigger level of UARTIFLS's
  RXIFLSEL (1/8 to 7/8 of 16; 1 without FIFO) and falls when reads take it below (TRM
  3.4.3). The driver sets RXIFLSEL to 1/2 (vendor_arm's ifls), so a 7-byte command
  alone never raises RXRIS: it relies on the receive timeout, RTRIS, which the TRM
  raises when the FIFO holds data and the line has been idle for 32 bit periods.
  Bytes reach this UART in bursts and then the line is idle, so RTRIS is raised as
  soon as bytes enter the FIFO and falls when the FIFO empties (or by UARTICR).
  amba-pl011.c's pl011_int reads UARTDR until RXFE on either (pl011_fifo_to_tty).
  QEMU's pl011 raises RXRIS at one byte instead (pl011_set_read_trigger) and has no
  RTRIS.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from tagvisor import wire
from tagvisor.errors import TagvisorError

WINDOW: Final = 0x1000
UARTDR: Final = 0x000
UARTRSR: Final = 0x004  # UARTECR when written
UARTFR: Final = 0x018
UARTLCR_H: Final = 0x02C
UARTCR: Final = 0x030
UARTIFLS: Final = 0x034
UARTIMSC: Final = 0x038
UARTRIS: Final = 0x03C
UARTMIS: Final = 0x040
UARTICR: Final = 0x044
#: Registers that read back what the driver wrote (ILPR, IBRD, FBRD, LCR_H, CR, IFLS,
#: DMACR).
STORED: Final = (0x020, 0x024, 0x028, UARTLCR_H, UARTCR, UARTIFLS, 0x048)
FR_RXFE: Final = 1 << 4
FR_RXFF: Final = 1 << 6
FR_TXFE: Final = 1 << 7
LCR_H_FEN: Final = 1 << 4
CR_UARTEN: Final = 1 << 0
CR_RXE: Final = 1 << 9
INT_RX: Final = 1 << 4
INT_TX: Final = 1 << 5
INT_RT: Final = 1 << 6
#: The eleven interrupt bits (OE, BE, PE, FE, RT, TX, RX, DSR, DCD, CTS, RI).
INT_MASK: Final = 0x7FF
ID_BASE: Final = 0xFE0
#: UARTPeriphID0-3 then UARTPCellID0-3, as Arm's TRM and QEMU's pl011_id_arm give them.
ID_BYTES: Final = (0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)
#: The most console text a state may carry (the same as the polled console's section).
MAX_TEXT: Final = 16 << 20
#: The receive FIFO's depth with LCR_H.FEN (PL011 r1p4 and QEMU: 16).
FIFO_DEPTH: Final = 16
#: RXIFLSEL (UARTIFLS bits 5:3): 1/8, 1/4, 1/2, 3/4, 7/8 of the FIFO (TRM 3.3.10).
RX_TRIGGERS: Final = (2, 4, 8, 12, 14)
#: The most bytes the line holds for a guest that does not read them.
MAX_BACKLOG: Final = 64 << 10
#: The state's version: 1 had no receive side; 2 adds the FIFO and the backlog.
STATE_VERSION: Final = 2

#: Drives the UART's interrupt line: called with the new level (True: asserted).
IrqLine = Callable[[bool], None]


class ConsoleInputError(TagvisorError):
    """The console cannot take the host's bytes (no receiver, or its line is full)."""


def _registers(raw: dict[str, Any]) -> tuple[tuple[int, int], ...]:
    """The exact register set, each a 16-bit value (FormatError otherwise)."""
    registers = wire.field(raw, "registers", dict)
    names = {f"{offset:#05x}": offset for offset in (*STORED, UARTIMSC)}
    if set(registers) != set(names):
        raise wire.FormatError("the PL011's registers are not the expected set")
    values = []
    for name, offset in sorted(names.items(), key=lambda item: item[1]):
        value = registers[name]
        if type(value) is not int or not 0 <= value <= 0xFFFF:
            raise wire.FormatError(f"the PL011's register {name} is not a 16-bit value")
        values.append((offset, value))
    return tuple(values)


def _hex_bytes(raw: dict[str, Any], name: str, limit: int) -> bytes:
    """``raw[name]``: at most ``limit`` bytes as lower-case hex."""
    text = wire.field(raw, name, str)
    if len(text) > 2 * limit or len(text) % 2 or text.strip("0123456789abcdef"):
        raise wire.FormatError(f"the PL011's {name} is not at most {limit} bytes of hex")
    return bytes.fromhex(text)


def _depth(registers: tuple[tuple[int, int], ...]) -> int:
    return FIFO_DEPTH if dict(registers)[UARTLCR_H] & LCR_H_FEN else 1


@dataclass(frozen=True)
class AmbaUartState:
    """The registers, the raw interrupt status, the console text so far, and the
    received bytes not yet read: those in the FIFO and those still on the line."""

    registers: tuple[tuple[int, int], ...]  # (offset, value) for STORED and UARTIMSC
    ris: int
    text: str
    rx_fifo: bytes = b""
    rx_backlog: bytes = b""

    def encode(self) -> bytes:
        """Deterministic JSON: version, registers by offset, RIS, text, RX bytes."""
        registers = {f"{offset:#05x}": value for offset, value in self.registers}
        return wire.dumps(
            {
                "version": STATE_VERSION,
                "registers": registers,
                "ris": self.ris,
                "text": self.text,
                "rx_fifo": self.rx_fifo.hex(),
                "rx_backlog": self.rx_backlog.hex(),
            }
        )

    @classmethod
    def decode(cls, payload: wire.Payload) -> AmbaUartState:
        """A state from a hostile payload: the exact register set, each a 16-bit
        value, RIS within the eleven interrupt bits, bounded text; from version 2 the
        FIFO (no more than its depth) and the backlog (FormatError). A version 1
        payload (no ``version``) has nothing received."""
        raw = wire.loads(payload, "the PL011's state")
        version = 1 if "version" not in raw else wire.integer(raw, "version", 2, STATE_VERSION)
        registers = _registers(raw)
        ris = wire.integer(raw, "ris", 0, INT_MASK)
        text = wire.field(raw, "text", str)
        if len(text) > MAX_TEXT:
            raise wire.FormatError("the PL011's console text is too long")
        if version == 1:
            if "rx_fifo" in raw or "rx_backlog" in raw:
                raise wire.FormatError("a version 1 PL011 state has no receive side")
            return cls(registers, ris, text)
        fifo = _hex_bytes(raw, "rx_fifo", _depth(registers))
        backlog = _hex_bytes(raw, "rx_backlog", MAX_BACKLOG)
        return cls(registers, ris, text, fifo, backlog)


class AmbaPl011:
    """The interrupt-driven PL011 (see the module's docstring for what it models)."""

    name = "pl011-amba"

    def __init__(
        self, sink: Callable[[bytes], None] | None = None, irq: IrqLine | None = None
    ) -> None:
        self.output = bytearray()
        self.sink = sink
        self.irq = irq
        self.registers = dict.fromkeys((*STORED, UARTIMSC), 0)
        self.ris = 0
        self.level = False
        self.fifo: deque[int] = deque()
        self.backlog: deque[int] = deque()
        # The host's thread (receive) and the VCPUs' (MMIO) both change the RX side.
        self._lock = threading.Lock()

    @property
    def text(self) -> str:
        """The console output so far, as text."""
        return self.output.decode("utf-8", errors="replace")

    # -- the guest's side -----------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> bytes:
        """A register's value, little endian, ``size`` bytes (UARTDR takes a byte)."""
        with self._lock:
            value = self._read_data() if offset == UARTDR else self._value(offset)
        return value.to_bytes(4, "little")[:size].ljust(size, b"\0")

    def _value(self, offset: int) -> int:
        if offset == UARTFR:
            return self._flags()
        if offset == UARTRIS:
            return self.ris
        if offset == UARTMIS:
            return self.ris & self.registers[UARTIMSC]
        if ID_BASE <= offset < WINDOW and offset % 4 == 0:
            return ID_BYTES[(offset - ID_BASE) // 4]
        return self.registers.get(offset, 0)  # UARTRSR: no errors on this line

    def _flags(self) -> int:
        flags = FR_TXFE
        if not self.fifo:
            flags |= FR_RXFE
        if len(self.fifo) >= self._depth():
            flags |= FR_RXFF
        return flags

    def _read_data(self) -> int:
        """The oldest received byte (0 if none); the next one on the line moves in."""
        if not self.fifo:
            return 0
        byte = self.fifo.popleft()
        if len(self.fifo) < self._trigger():
            self.ris &= ~INT_RX
        if not self.fifo:
            self.ris &= ~INT_RT
        self._fill()
        self._update()
        return byte

    def mmio_write(self, offset: int, data: bytes) -> None:
        """Transmit (UARTDR), clear (UARTICR), mask (UARTIMSC) or store a register;
        then let waiting bytes in and drive the line."""
        value = int.from_bytes(data[:4], "little")
        with self._lock:
            if offset == UARTDR:
                self._transmit(bytes(data[:1]))
            elif offset == UARTICR:
                self.ris &= ~value
            elif offset == UARTIMSC:
                self.registers[UARTIMSC] = value & INT_MASK
            elif offset in self.registers:
                self._store(offset, value & 0xFFFF)
            self._fill()
            self._update()

    def _store(self, offset: int, value: int) -> None:
        self.registers[offset] = value
        # Without the FIFO the holding register keeps one byte; the rest go back to
        # the line, in order (QEMU empties its FIFO here; the host's bytes would be lost).
        while len(self.fifo) > self._depth():
            self.backlog.appendleft(self.fifo.pop())

    def _transmit(self, byte: bytes) -> None:
        if len(self.output) < MAX_TEXT:
            self.output += byte
        if self.sink is not None:
            self.sink(byte)
        self.ris |= INT_TX

    # -- the host's side ------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Put ``data`` on the line; it enters the FIFO as the guest makes room
        (ConsoleInputError if more than MAX_BACKLOG bytes would wait)."""
        with self._lock:
            if len(self.backlog) + len(data) > MAX_BACKLOG:
                raise ConsoleInputError(
                    f"the guest's console has {len(self.backlog)} unread bytes waiting; "
                    f"{len(data)} more would pass {MAX_BACKLOG}: let the guest read first"
                )
            self.backlog.extend(data)
            self._fill()
            self._update()

    def _depth(self) -> int:
        return FIFO_DEPTH if self.registers[UARTLCR_H] & LCR_H_FEN else 1

    def _trigger(self) -> int:
        if self._depth() == 1:
            return 1
        select = (self.registers[UARTIFLS] >> 3) & 7
        return RX_TRIGGERS[min(select, len(RX_TRIGGERS) - 1)]

    def _fill(self) -> None:
        """Move bytes from the line into the FIFO while the receiver is on and there
        is room; raise RXRIS on reaching the trigger level, RTRIS for the idle line."""
        enabled = CR_UARTEN | CR_RXE
        if self.registers[UARTCR] & enabled != enabled:
            return
        moved = False
        while self.backlog and len(self.fifo) < self._depth():
            self.fifo.append(self.backlog.popleft())
            moved = True
            if len(self.fifo) == self._trigger():
                self.ris |= INT_RX
        if moved:
            self.ris |= INT_RT

    def _update(self) -> None:
        """Drive the line to (RIS & IMSC) != 0, telling KVM only about changes."""
        level = bool(self.ris & self.registers[UARTIMSC])
        if level != self.level:
            self.level = level
            if self.irq is not None:
                self.irq(level)

    # -- state ----------------------------------------------------------------------

    def save(self) -> AmbaUartState:
        """The registers, RIS, text and unread bytes (Persist)."""
        with self._lock:
            return AmbaUartState(
                tuple(sorted(self.registers.items())),
                self.ris,
                self.text,
                bytes(self.fifo),
                bytes(self.backlog),
            )

    def restore(self, state: AmbaUartState) -> None:
        """Put a saved state back and drive the line to match it (Persist)."""
        with self._lock:
            self.registers = dict(state.registers)
            self.ris = state.ris
            self.output[:] = state.text.encode()
            self.fifo = deque(state.rx_fifo)
            self.backlog = deque(state.rx_backlog)
            self.level = False
            self._update()
