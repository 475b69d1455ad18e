"""Python-level guests speaking docs/guest-abi.md (console, ucall, power-off)."""

from __future__ import annotations

import struct
from collections.abc import Generator

from tagvisor.kvm.api import VcpuExit
from tagvisor.kvm.model.guest import GuestContext, mmio_write
from tagvisor.vmm.builder import RAM_BASE, UART_BASE, UCALL_BASE

UCALL_STRUCT = RAM_BASE + 0x2000
Exits = Generator[VcpuExit, bytes | None, None]


def ucall(ctx: GuestContext, cmd: int, *args: int) -> VcpuExit:
    """Fill the ucall struct in guest RAM and return the doorbell store."""
    padded = [*args, *[0] * (6 - len(args))]
    ctx.stage2.write(UCALL_STRUCT, struct.pack("<8Q", cmd, len(args), *padded))
    return mmio_write(UCALL_BASE, UCALL_STRUCT)


def puts(text: str) -> Exits:
    for byte in text.encode():
        yield mmio_write(UART_BASE, byte)
