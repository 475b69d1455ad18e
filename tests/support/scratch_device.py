"""A device kind only the tests know: one 64-bit register, with state to carry."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from tagvisor import wire
from tagvisor.vmm import Machine
from tagvisor.vmm.devices.persist import DeviceKind, register_device, unregister_device

SCRATCH_BASE: Final = 0x0A00_4000


@dataclass(frozen=True)
class ScratchState:
    value: int

    def encode(self) -> bytes:
        return wire.dumps({"value": self.value})

    @classmethod
    def decode(cls, payload: wire.Payload) -> ScratchState:
        return cls(wire.integer(wire.loads(payload, "scratch"), "value", 0, 2**64 - 1))


class ScratchRegister:
    """A 64-bit register the guest (or the VMM) may write."""

    name = "scratch"

    def __init__(self) -> None:
        self.value = 0

    def mmio_read(self, offset: int, size: int) -> bytes:
        return self.value.to_bytes(8, "little")[:size]

    def mmio_write(self, offset: int, data: bytes) -> None:
        self.value = int.from_bytes(data, "little")

    def save(self) -> ScratchState:
        return ScratchState(self.value)

    def restore(self, state: ScratchState) -> None:
        self.value = state.value


@contextlib.contextmanager
def scratch_registered() -> Iterator[DeviceKind[ScratchState]]:
    """The scratch kind registered for the duration: its one registration."""
    kind = DeviceKind(
        name="scratch",
        tag=b"SCRT",
        window=0x1000,
        make=lambda parts: ScratchRegister(),
        decode=ScratchState.decode,
    )
    register_device(kind)
    try:
        yield kind
    finally:
        unregister_device(kind.name)


def scratch_value(machine: Machine) -> int:
    device = machine.devices["scratch"]
    assert isinstance(device, ScratchRegister)
    return device.value
