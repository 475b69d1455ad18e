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
  was written. RX is minimal: nothing is ever received.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tagvisor import wire

WINDOW: Final = 0x1000
UARTDR: Final = 0x000
UARTRSR: Final = 0x004  # UARTECR when written
UARTFR: Final = 0x018
UARTIMSC: Final = 0x038
UARTRIS: Final = 0x03C
UARTMIS: Final = 0x040
UARTICR: Final = 0x044
#: Registers that read back what the driver wrote (ILPR, IBRD, FBRD, LCR_H, CR, IFLS,
#: DMACR).
STORED: Final = (0x020, 0x024, 0x028, 0x02C, 0x030, 0x034, 0x048)
FR_RXFE: Final = 1 << 4
FR_TXFE: Final = 1 << 7
INT_TX: Final = 1 << 5
#: The eleven interrupt bits (OE, BE, PE, FE, RT, TX, RX, DSR, DCD, CTS, RI).
INT_MASK: Final = 0x7FF
ID_BASE: Final = 0xFE0
#: UARTPeriphID0-3 then UARTPCellID0-3, as Arm's TRM and QEMU's pl011_id_arm give them.
ID_BYTES: Final = (0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)
#: The most console text a state may carry (the same as the polled console's section).
MAX_TEXT: Final = 16 << 20

#: Drives the UART's interrupt line: called with the new level (True: asserted).
IrqLine = Callable[[bool], None]


@dataclass(frozen=True)
class AmbaUartState:
    """The registers, the raw interrupt status, and the console text so far."""

    registers: tuple[tuple[int, int], ...]  # (offset, value) for STORED and UARTIMSC
    ris: int
    text: str

    def encode(self) -> bytes:
        """Deterministic JSON: registers by offset, RIS, text."""
        registers = {f"{offset:#05x}": value for offset, value in self.registers}
        return wire.dumps({"registers": registers, "ris": self.ris, "text": self.text})

    @classmethod
    def decode(cls, payload: wire.Payload) -> AmbaUartState:
        """A state from a hostile payload: the exact register set, each a 16-bit
        value, RIS within the eleven interrupt bits, bounded text (FormatError)."""
        raw = wire.loads(payload, "the PL011's state")
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
        ris = wire.integer(raw, "ris", 0, INT_MASK)
        text = wire.field(raw, "text", str)
        if len(text) > MAX_TEXT:
            raise wire.FormatError("the PL011's console text is too long")
        return cls(tuple(values), ris, text)


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

    @property
    def text(self) -> str:
        """The console output so far, as text."""
        return self.output.decode("utf-8", errors="replace")

    def mmio_read(self, offset: int, size: int) -> bytes:
        """A register's value, little endian, ``size`` bytes."""
        return self._value(offset).to_bytes(4, "little")[:size].ljust(size, b"\0")

    def _value(self, offset: int) -> int:
        if offset == UARTFR:
            return FR_TXFE | FR_RXFE
        if offset == UARTRIS:
            return self.ris
        if offset == UARTMIS:
            return self.ris & self.registers[UARTIMSC]
        if ID_BASE <= offset < WINDOW and offset % 4 == 0:
            return ID_BYTES[(offset - ID_BASE) // 4]
        return self.registers.get(offset, 0)  # UARTDR: nothing received

    def mmio_write(self, offset: int, data: bytes) -> None:
        """Transmit (UARTDR), clear (UARTICR), mask (UARTIMSC) or store a register;
        then drive the line."""
        value = int.from_bytes(data[:4], "little")
        if offset == UARTDR:
            self._transmit(bytes(data[:1]))
        elif offset == UARTICR:
            self.ris &= ~value
        elif offset == UARTIMSC:
            self.registers[UARTIMSC] = value & INT_MASK
        elif offset in self.registers:
            self.registers[offset] = value & 0xFFFF
        self._update()

    def _transmit(self, byte: bytes) -> None:
        if len(self.output) < MAX_TEXT:
            self.output += byte
        if self.sink is not None:
            self.sink(byte)
        self.ris |= INT_TX

    def _update(self) -> None:
        """Drive the line to (RIS & IMSC) != 0, telling KVM only about changes."""
        level = bool(self.ris & self.registers[UARTIMSC])
        if level != self.level:
            self.level = level
            if self.irq is not None:
                self.irq(level)

    def save(self) -> AmbaUartState:
        """The registers, RIS and text (Persist)."""
        return AmbaUartState(tuple(sorted(self.registers.items())), self.ris, self.text)

    def restore(self, state: AmbaUartState) -> None:
        """Put a saved state back and drive the line to match it (Persist)."""
        self.registers = dict(state.registers)
        self.ris = state.ris
        self.output[:] = state.text.encode()
        self.level = False
        self._update()
