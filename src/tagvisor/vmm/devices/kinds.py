"""The device kinds every tagvisor machine has, registered with their state sections.

Sections of format 1.2 and later carry each device's state apart (before, one DEVS
section held all three: tagvisor.snapshot.registry still reads it).
"""

from __future__ import annotations

from typing import Final

from tagvisor.vmm.devices import dma, pl011, ucall
from tagvisor.vmm.devices.persist import DeviceKind, DeviceParts, register_device

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

__all__ = ["CONSOLE", "DMA", "UCALL", "DeviceParts"]
