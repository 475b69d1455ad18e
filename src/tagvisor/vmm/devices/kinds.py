"""The device kinds every tagvisor machine has, registered with their state sections.

Sections of format 1.2 and later carry each device's state apart (before, one DEVS
section held all three: tagvisor.snapshot.registry still reads it).
"""

from __future__ import annotations

from typing import Final

from tagvisor.vmm.devices import amba_pl011, dma, pl011, ucall
from tagvisor.vmm.devices.persist import DeviceKind, DeviceParts, register_device
from tagvisor.vmm.linux.platform import UART_SPI


def _amba_console(parts: DeviceParts) -> amba_pl011.AmbaPl011:
    """The AMBA PL011 on the platform's UART SPI, if the machine has interrupts."""
    spi = parts.spi
    irq = None if spi is None else (lambda level: spi(UART_SPI, level))
    return amba_pl011.AmbaPl011(parts.console_sink, irq)


CONSOLE: Final = register_device(
    DeviceKind(
        name="pl011",
        tag=b"UART",
        window=pl011.WINDOW,
        make=lambda parts: pl011.Pl011(parts.console_sink),
        decode=pl011.ConsoleState.decode,
        limit=16 << 20,
    )
)
UCALL: Final = register_device(
    DeviceKind(
        name="ucall",
        tag=b"UCAL",
        window=ucall.WINDOW,
        make=lambda parts: ucall.UcallDevice(parts.memory),
        decode=ucall.UcallLog.decode,
        limit=16 << 20,
    )
)
DMA: Final = register_device(
    DeviceKind(
        name="dma",
        tag=b"DMA ",
        window=dma.WINDOW,
        make=lambda parts: dma.DmaEngine(parts.tags),
        decode=dma.DmaState.decode,
        limit=4 << 10,
    )
)
#: The Linux guests' interrupt-driven console: an extra kind, so only machines that
#: have one (MachineBuilder.linux) carry its section.
AMBA_CONSOLE: Final = register_device(
    DeviceKind(
        name="pl011-amba",
        tag=b"PL11",
        window=amba_pl011.WINDOW,
        make=_amba_console,
        decode=amba_pl011.AmbaUartState.decode,
        limit=amba_pl011.MAX_TEXT + (64 << 10),
    )
)

__all__ = ["AMBA_CONSOLE", "CONSOLE", "DMA", "UCALL", "DeviceParts"]
