"""The MMIO bus: which device answers an exit at a given guest-physical address."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tagvisor.errors import TagvisorError


class MmioDevice(Protocol):
    """A device with a register window. Offsets are relative to the window's base."""

    name: str

    def mmio_read(self, offset: int, size: int) -> bytes:
        """The ``size`` bytes a guest load at ``offset`` reads (little-endian)."""
        ...

    def mmio_write(self, offset: int, data: bytes) -> None:
        """A guest store of ``data`` at ``offset``."""
        ...


class BusError(TagvisorError):
    """A guest touched an address no device claims (the VMM stops the guest)."""


@dataclass
class _Window:
    base: int
    size: int
    device: MmioDevice


class MmioBus:
    """Devices by address window; windows never overlap."""

    def __init__(self) -> None:
        self._windows: list[_Window] = []

    def attach(self, base: int, size: int, device: MmioDevice) -> None:
        """Put ``device`` at [base, base + size); BusError if that overlaps a window."""
        for window in self._windows:
            if base < window.base + window.size and window.base < base + size:
                raise BusError(
                    f"{device.name} at {base:#x} overlaps {window.device.name} at {window.base:#x}"
                )
        self._windows.append(_Window(base, size, device))

    def _find(self, address: int) -> _Window:
        for window in self._windows:
            if window.base <= address < window.base + window.size:
                return window
        raise BusError(f"the guest accessed {address:#x}, where no device is mapped")

    def read(self, address: int, size: int) -> bytes:
        """An MMIO read at guest-physical ``address``, answered by its device."""
        window = self._find(address)
        return window.device.mmio_read(address - window.base, size)

    def write(self, address: int, data: bytes) -> None:
        """An MMIO write at guest-physical ``address``, handed to its device."""
        window = self._find(address)
        window.device.mmio_write(address - window.base, data)
