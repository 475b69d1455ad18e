"""How a device keeps its state across snapshots and migrations (Firecracker's
``Persist``), and the table of device kinds a machine can have.

A device that has state implements :class:`Persistent`: ``save()`` returns a plain,
frozen State that encodes to bytes, ``restore(state)`` puts one back. Its
:class:`DeviceKind` says how to make the device and how to decode its State from a
hostile payload, plus the section that carries it (tag, size limit, the format minor
version that introduced it). Registering a kind is all it takes for snapshots and
migration streams to carry the device (``tagvisor.snapshot.registry`` reads this
table); a machine gets a device of an extra kind with ``MachineBuilder.device``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from tagvisor.vmm.devices.bus import MmioDevice
from tagvisor.vmm.memory import GuestMemory
from tagvisor.vmm.tag_access import TagAccess
from tagvisor.wire import Payload

S = TypeVar("S")


class State(Protocol):
    """A device's plain state: deterministic bytes for the same state."""

    def encode(self) -> bytes:
        """The state as bytes, the same bytes for the same state."""
        ...


class Persistent(MmioDevice, Protocol[S]):
    """A device whose state can be saved and restored."""

    def save(self) -> S:
        """The device's state now (a snapshot's or a migration's)."""
        ...

    def restore(self, state: S) -> None:
        """Make the device's state ``state`` (before the guest runs)."""
        ...


@dataclass(frozen=True)
class DeviceParts:
    """What a device may be built from: the machine's memory and its tag access way,
    and, on a machine with an in-kernel GIC, its shared interrupt lines."""

    memory: GuestMemory
    tags: TagAccess
    console_sink: Callable[[bytes], None] | None = None
    #: spi(n, level) drives SPI n to a level (True: asserted); None: no interrupts.
    spi: Callable[[int, bool], None] | None = None


@dataclass(frozen=True)
class DeviceKind(Generic[S]):
    """One kind of device: how to make it, and the section its state travels in."""

    name: str
    #: The section tag of its state (4 bytes, unique among all sections).
    tag: bytes
    #: Bytes of its register window on the MMIO bus.
    window: int
    make: Callable[[DeviceParts], Persistent[S]]
    #: A State from a payload, every field checked (FormatError otherwise).
    decode: Callable[[Payload], S]
    #: The most bytes its state section may claim.
    limit: int = 64 << 10
    #: The format minor version from which snapshots and streams carry it.
    since: int = 2


class DeviceKindError(ValueError):
    """A device kind's registration clashes with one already there."""


#: Every device kind, by name, in the order their states are applied.
DEVICE_KINDS: dict[str, DeviceKind[Any]] = {}


def register_device(kind: DeviceKind[Any]) -> DeviceKind[Any]:
    """Add ``kind`` to :data:`DEVICE_KINDS`; names and tags must be new."""
    if len(kind.tag) != 4:
        raise DeviceKindError(f"a section tag is 4 bytes, not {kind.tag!r}")
    for other in DEVICE_KINDS.values():
        if kind.name == other.name or kind.tag == other.tag:
            raise DeviceKindError(f"{kind.name} ({kind.tag!r}) clashes with {other.name}")
    DEVICE_KINDS[kind.name] = kind
    return kind


def unregister_device(name: str) -> None:
    """Forget the kind ``name`` (tests that register a device of their own)."""
    DEVICE_KINDS.pop(name, None)
