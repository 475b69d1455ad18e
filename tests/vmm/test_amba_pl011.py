"""The PL011 Linux's amba-pl011 driver drives: IDs, flags, TX interrupts, state."""

from __future__ import annotations

import pytest

from tagvisor import wire
from tagvisor.vmm.devices.amba_pl011 import (
    INT_TX,
    UARTDR,
    UARTFR,
    UARTICR,
    UARTIMSC,
    UARTMIS,
    UARTRIS,
    AmbaPl011,
    AmbaUartState,
)
from tagvisor.vmm.devices.kinds import AMBA_CONSOLE
from tagvisor.vmm.devices.persist import DEVICE_KINDS


def u32(device: AmbaPl011, offset: int) -> int:
    return int.from_bytes(device.mmio_read(offset, 4), "little")


def test_the_amba_bus_reads_a_pl011s_primecell_ids() -> None:
    """Scenario: read the IDs as drivers/amba/bus.c does (the low byte of each word of
    the window's last 32 bytes): periphid 0x00141011 matches amba-pl011's table entry
    (id 0x00041011, mask 0x000fffff), cid is AMBA_CID 0xb105f00d."""
    uart = AmbaPl011()
    periphid = sum((u32(uart, 0xFE0 + 4 * i) & 0xFF) << (8 * i) for i in range(4))
    cid = sum((u32(uart, 0xFF0 + 4 * i) & 0xFF) << (8 * i) for i in range(4))
    assert periphid & 0x000FFFFF == 0x00041011
    assert cid == 0xB105F00D


def test_the_flags_never_make_a_writer_wait() -> None:
    """Scenario: UARTFR has TXFE and RXFE, not TXFF (bit 5) or BUSY (bit 3)."""
    flags = u32(AmbaPl011(), UARTFR)
    assert flags & (1 << 7)
    assert flags & (1 << 4)
    assert not flags & ((1 << 5) | (1 << 3))


def test_a_write_raises_tx_and_the_line_follows_the_mask() -> None:
    """Scenario: the driver writes a byte (TXRIS set, masked: line low), unmasks TXIM
    (line high), masks it again when its buffer is empty (low); ICR clears RIS."""
    levels: list[bool] = []
    written: list[bytes] = []
    uart = AmbaPl011(written.append, levels.append)
    uart.mmio_write(UARTDR, b"A\0\0\0")
    assert (written, u32(uart, UARTRIS) & INT_TX, levels) == ([b"A"], INT_TX, [])
    uart.mmio_write(UARTIMSC, INT_TX.to_bytes(4, "little"))
    assert levels == [True]
    assert u32(uart, UARTMIS) == INT_TX
    uart.mmio_write(UARTIMSC, bytes(4))
    assert levels == [True, False]
    uart.mmio_write(UARTICR, INT_TX.to_bytes(4, "little"))
    assert u32(uart, UARTRIS) == 0
    assert uart.text == "A"


def test_control_registers_read_back_and_rx_stays_empty() -> None:
    """Scenario: LCR_H and CR read back; UARTDR reads 0 (nothing received)."""
    uart = AmbaPl011()
    uart.mmio_write(0x02C, (0x70).to_bytes(4, "little"))
    uart.mmio_write(0x030, (0x301).to_bytes(4, "little"))
    assert (u32(uart, 0x02C), u32(uart, 0x030), u32(uart, UARTDR)) == (0x70, 0x301, 0)


def test_its_state_round_trips_and_is_a_registered_kind() -> None:
    """Scenario: save after some traffic, decode the encoded state, restore into a new
    UART: registers, RIS and text come back, and the line is driven to match."""
    levels: list[bool] = []
    uart = AmbaPl011()
    uart.mmio_write(UARTIMSC, INT_TX.to_bytes(4, "little"))
    uart.mmio_write(UARTDR, b"hi")
    state = AmbaUartState.decode(uart.save().encode())
    other = AmbaPl011(irq=levels.append)
    other.restore(state)
    assert other.save() == uart.save()
    assert levels == [True]
    assert DEVICE_KINDS["pl011-amba"] is AMBA_CONSOLE


@pytest.mark.parametrize(
    "raw",
    [
        {"registers": {}, "ris": 0, "text": ""},
        {"registers": {f"{o:#05x}": 0 for o in (0x20, 0x24, 0x28, 0x2C, 0x30, 0x34, 0x48, 0x38)}
         | {"0x020": -1}, "ris": 0, "text": ""},
        {"registers": {f"{o:#05x}": 0 for o in (0x20, 0x24, 0x28, 0x2C, 0x30, 0x34, 0x48, 0x38)},
         "ris": 1 << 12, "text": ""},
    ],
)  # fmt: skip
def test_a_hostile_state_is_refused(raw: dict[str, object]) -> None:
    """Scenario: a register set that is incomplete, a negative register, a RIS with
    bits the UART does not have."""
    with pytest.raises(wire.FormatError):
        AmbaUartState.decode(wire.dumps(raw))
