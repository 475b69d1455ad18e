"""The PL011 Linux's amba-pl011 driver drives: IDs, flags, TX and RX interrupts,
the receive FIFO, state."""

from __future__ import annotations

import pytest

from tagvisor import wire
from tagvisor.vmm.devices.amba_pl011 import (
    CR_RXE,
    CR_UARTEN,
    FR_RXFE,
    FR_RXFF,
    INT_RT,
    INT_RX,
    INT_TX,
    LCR_H_FEN,
    MAX_BACKLOG,
    UARTCR,
    UARTDR,
    UARTFR,
    UARTICR,
    UARTIFLS,
    UARTIMSC,
    UARTLCR_H,
    UARTMIS,
    UARTRIS,
    AmbaPl011,
    AmbaUartState,
    ConsoleInputError,
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


def test_control_registers_read_back_and_an_empty_fifo_reads_zero() -> None:
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


def put(device: AmbaPl011, offset: int, value: int) -> None:
    device.mmio_write(offset, value.to_bytes(4, "little"))


def linux_uart(levels: list[bool] | None = None) -> AmbaPl011:
    """A UART set up as amba-pl011.c leaves it after pl011_startup: FIFO on (LCR_H
    FEN), RXIFLSEL 1/2 (vendor_arm's ifls 0x12), UARTEN | TXE | RXE, RTIM | RXIM."""
    uart = AmbaPl011(irq=None if levels is None else levels.append)
    put(uart, UARTLCR_H, LCR_H_FEN | 0x60)
    put(uart, UARTIFLS, 0x12)
    put(uart, UARTCR, CR_UARTEN | (1 << 8) | CR_RXE)
    put(uart, UARTIMSC, INT_RT | INT_RX)
    return uart


def drain(uart: AmbaPl011) -> bytes:
    """Read UARTDR until RXFE, as pl011_fifo_to_tty does."""
    got = bytearray()
    while not u32(uart, UARTFR) & FR_RXFE:
        got.append(u32(uart, UARTDR) & 0xFF)
    return bytes(got)


def test_a_short_command_raises_the_receive_timeout_and_the_driver_reads_it() -> None:
    """Scenario: the host sends "verify\\n" (7 bytes, below the 1/2 trigger level of
    8): RXFE clears, RTRIS (not RXRIS) rises and the line goes high; the driver reads
    UARTDR until RXFE and gets the bytes in order; the FIFO empty, RTRIS falls and so
    does the line."""
    levels: list[bool] = []
    uart = linux_uart(levels)
    uart.receive(b"verify\n")
    assert not u32(uart, UARTFR) & FR_RXFE
    assert u32(uart, UARTRIS) & (INT_RT | INT_RX) == INT_RT
    assert levels == [True]
    assert drain(uart) == b"verify\n"
    assert u32(uart, UARTRIS) & (INT_RT | INT_RX) == 0
    assert levels == [True, False]


def test_the_fifo_holds_sixteen_and_the_rest_wait_on_the_line() -> None:
    """Scenario: 40 bytes arrive at once: the FIFO fills to 16 (RXFF, RXRIS: past the
    trigger level); each read lets the next byte in, so the driver reads all 40 in
    order, and RXFF clears once a byte has left."""
    uart = linux_uart()
    data = bytes(range(65, 105))
    uart.receive(data)
    assert u32(uart, UARTFR) & FR_RXFF
    assert u32(uart, UARTMIS) & INT_RX
    first = u32(uart, UARTDR)
    assert first == data[0]
    assert drain(uart) == data[1:]
    assert not u32(uart, UARTFR) & FR_RXFF
    assert u32(uart, UARTRIS) & (INT_RT | INT_RX) == 0


def test_rxris_falls_below_the_trigger_level_and_icr_clears_rtris() -> None:
    """Scenario: 9 bytes (level 9 >= trigger 8): RXRIS; one read (level 8) keeps it,
    a second (level 7) drops it; UARTICR with RTIC clears RTRIS although bytes remain."""
    uart = linux_uart()
    uart.receive(b"123456789")
    assert u32(uart, UARTRIS) & INT_RX
    u32(uart, UARTDR)
    assert u32(uart, UARTRIS) & INT_RX
    u32(uart, UARTDR)
    assert not u32(uart, UARTRIS) & INT_RX
    put(uart, UARTICR, INT_RT)
    assert u32(uart, UARTRIS) & INT_RT == 0
    assert drain(uart) == b"3456789"


def test_without_the_fifo_one_byte_is_held_and_raises_rxris() -> None:
    """Scenario: LCR_H.FEN clear: a 1-byte holding register; a byte raises RXRIS
    (trigger 1) and RXFF; the second waits until the first is read."""
    uart = linux_uart()
    put(uart, UARTLCR_H, 0x60)
    uart.receive(b"ab")
    assert u32(uart, UARTFR) & FR_RXFF
    assert u32(uart, UARTRIS) & INT_RX
    assert drain(uart) == b"ab"


def test_nothing_enters_while_the_receiver_is_off() -> None:
    """Scenario: UARTCR without RXE (as at reset before the driver's startup): the
    bytes stay on the line, RXFE stays set, no interrupt; RXE on lets them in."""
    levels: list[bool] = []
    uart = AmbaPl011(irq=levels.append)
    put(uart, UARTIMSC, INT_RT | INT_RX)
    uart.receive(b"hi\n")
    assert u32(uart, UARTFR) & FR_RXFE
    assert levels == []
    put(uart, UARTCR, CR_UARTEN | CR_RXE)
    assert levels == [True]
    assert drain(uart) == b"hi\n"


def test_a_line_past_its_limit_is_refused_and_keeps_what_it_has() -> None:
    """Scenario: a guest that never reads: the line takes MAX_BACKLOG bytes, then
    ConsoleInputError says so; the bytes already there are kept."""
    uart = AmbaPl011()
    uart.receive(b"x" * MAX_BACKLOG)
    with pytest.raises(ConsoleInputError, match="unread bytes"):
        uart.receive(b"y")
    assert uart.save().rx_backlog == b"x" * MAX_BACKLOG


def test_unread_bytes_survive_a_save_and_restore() -> None:
    """Scenario: 20 bytes arrive, 3 are read; the state (16 in the FIFO minus 3 plus
    3 moved in, 4 still on the line) round-trips through its encoding into a new UART,
    whose line is driven high again and whose reads give the other 17 bytes in order."""
    uart = linux_uart()
    data = b"abcdefghijklmnopqrst"
    uart.receive(data)
    assert bytes(u32(uart, UARTDR) for _ in range(3)) == b"abc"
    state = AmbaUartState.decode(uart.save().encode())
    assert (state.rx_fifo, state.rx_backlog) == (data[3:19], data[19:])
    levels: list[bool] = []
    other = AmbaPl011(irq=levels.append)
    other.restore(state)
    assert levels == [True]
    assert other.save() == uart.save()
    assert drain(other) == data[3:]


def test_a_version_1_state_reads_with_nothing_received() -> None:
    """Scenario: a payload as the PL011 wrote it before it had a receiver (no
    version, no RX fields) decodes to a state with an empty FIFO and line."""
    names = (0x20, 0x24, 0x28, 0x2C, 0x30, 0x34, 0x48, 0x38)
    old = {"registers": {f"{o:#05x}": 0 for o in names}, "ris": INT_TX, "text": "boot\n"}
    state = AmbaUartState.decode(wire.dumps(old))
    assert (state.ris, state.text, state.rx_fifo, state.rx_backlog) == (INT_TX, "boot\n", b"", b"")


def base_state() -> dict[str, object]:
    names = (0x20, 0x24, 0x28, 0x2C, 0x30, 0x34, 0x48, 0x38)
    return {
        "version": 2,
        "registers": {f"{o:#05x}": 0 for o in names},
        "ris": 0,
        "text": "",
        "rx_fifo": "",
        "rx_backlog": "",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 3}, "version"),
        ({"version": True}, "version"),
        ({"rx_fifo": "6162"}, "rx_fifo"),  # 2 bytes in a 1-byte holding register (no FEN)
        ({"rx_fifo": "zz"}, "rx_fifo"),
        ({"rx_fifo": "616"}, "rx_fifo"),
        ({"rx_backlog": "00" * (MAX_BACKLOG + 1)}, "rx_backlog"),
        ({"rx_backlog": 7}, "rx_backlog"),
    ],
)
def test_a_hostile_receive_side_is_refused(change: dict[str, object], message: str) -> None:
    """Scenario: an unknown version, more FIFO bytes than its depth, FIFO bytes that
    are no hex or half a byte, a backlog past its limit or of the wrong type."""
    with pytest.raises(wire.FormatError, match=message):
        AmbaUartState.decode(wire.dumps(base_state() | change))


def test_a_version_1_payload_with_rx_fields_is_refused() -> None:
    """Scenario: no version (1) but RX fields: a forged or damaged payload."""
    raw = base_state()
    del raw["version"]
    with pytest.raises(wire.FormatError, match="version 1"):
        AmbaUartState.decode(wire.dumps(raw))
