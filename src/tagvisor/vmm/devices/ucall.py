"""The ucall channel: a guest reports values, assertions and its exit status.

In the style of the KVM selftests' ucall (tools/testing/selftests/kvm/lib/ucall_common.c):
the guest fills a ``struct ucall`` in its RAM and stores its guest-physical address to
the doorbell with one 8-byte write. The struct is read from guest memory and treated as
hostile: the address must lie in RAM, ``nargs`` must be at most 6, a printed string is
bounded. See docs/guest-abi.md.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from tagvisor import wire
from tagvisor.errors import TagvisorError
from tagvisor.vmm.memory import GuestMemory, GuestMemoryError

WINDOW: Final = 0x1000
UCALL_SIZE: Final = 8 * 8
MAX_ARGS: Final = 6
MAX_STRING: Final = 256


class UcallCmd(enum.IntEnum):
    """The ucall commands of docs/guest-abi.md."""

    SYNC = 1
    ASSERT = 2
    PRINT = 3
    DONE = 4


class UcallError(TagvisorError):
    """A ucall the guest made is malformed (bad address, command or argument count)."""


@dataclass(frozen=True)
class Ucall:
    """One ucall a guest made: its command, arguments and (UCALL_PRINT) string."""

    cmd: UcallCmd
    args: tuple[int, ...]
    text: str = ""

    def __str__(self) -> str:
        if self.cmd is UcallCmd.PRINT:
            return f"print: {self.text}"
        values = " ".join(f"{arg:#x}" for arg in self.args)
        return f"{self.cmd.name.lower()} {values}".rstrip()


@dataclass(frozen=True)
class UcallLog:
    """Every ucall the guest has made, in order."""

    calls: tuple[Ucall, ...]

    def encode(self) -> bytes:
        """The log as deterministic JSON."""
        return wire.dumps({"calls": self.to_json()})

    def to_json(self) -> list[list[Any]]:
        """The log as JSON values: [cmd, [args], text] per ucall."""
        return [[int(call.cmd), list(call.args), call.text] for call in self.calls]

    @classmethod
    def decode(cls, payload: wire.Payload) -> UcallLog:
        """The log in ``payload``, each entry checked as a guest could have made it."""
        return cls.from_json(wire.field(wire.loads(payload, "the ucall log"), "calls", list))

    @classmethod
    def from_json(cls, raw: list[Any]) -> UcallLog:
        """The log in parsed JSON values, each entry checked."""
        return cls(tuple(_ucall(entry) for entry in raw))


def _ucall(entry: object) -> Ucall:
    """One logged ucall, [cmd, [args], text], as the guest could have made it."""
    if not isinstance(entry, list) or len(entry) != 3:
        raise wire.FormatError("a logged ucall is not [cmd, args, text]")
    cmd, args, text = entry
    if type(cmd) is not int or cmd not in set(UcallCmd):
        raise wire.FormatError(f"a logged ucall has an unknown command {cmd!r}")
    if not isinstance(args, list) or len(args) > MAX_ARGS:
        raise wire.FormatError(f"a logged ucall has more than {MAX_ARGS} arguments")
    if not all(type(arg) is int and 0 <= arg < 1 << 64 for arg in args):
        raise wire.FormatError("a logged ucall's arguments are not u64 values")
    if not isinstance(text, str) or len(text) > MAX_STRING:
        raise wire.FormatError(f"a logged ucall's text is not a string of {MAX_STRING} at most")
    return Ucall(UcallCmd(cmd), tuple(args), text)


class UcallDevice:
    """The ucall doorbell: a store of a ``struct ucall``'s address, read from guest
    RAM as hostile input and logged."""

    name = "ucall"

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self.calls: list[Ucall] = []
        #: Called with each ucall on the VCPU thread, while the guest waits in it: the
        #: VMM's side of a handshake (the selftests' get_ucall() in a host loop).
        self.listener: Callable[[Ucall], None] | None = None

    def mmio_read(self, offset: int, size: int) -> bytes:
        """Zeros: the doorbell is write-only."""
        return bytes(size)

    def mmio_write(self, offset: int, data: bytes) -> None:
        """A ring of the doorbell: decode the ucall at the stored address and log it."""
        if offset != 0 or len(data) != 8:
            raise UcallError(
                f"the ucall doorbell takes one 8-byte store at offset 0, got "
                f"{len(data)} bytes at {offset:#x}"
            )
        call = self.decode(int.from_bytes(data, "little"))
        self.calls.append(call)
        if self.listener is not None:
            self.listener(call)

    def decode(self, address: int) -> Ucall:
        """The ucall at guest-physical ``address``; UcallError if it is malformed."""
        try:
            raw = self.memory.read(address, UCALL_SIZE)
        except GuestMemoryError as error:
            raise UcallError(f"ucall struct at {address:#x} is not in guest RAM") from error
        cmd, nargs, *args = struct.unpack("<8Q", raw)
        try:
            command = UcallCmd(cmd)
        except ValueError:
            raise UcallError(f"unknown ucall command {cmd}") from None
        if nargs > MAX_ARGS:
            raise UcallError(f"ucall with {nargs} arguments (at most {MAX_ARGS})")
        values = tuple(args[:nargs])
        text = ""
        if command is UcallCmd.PRINT:
            if not values:
                raise UcallError("UCALL_PRINT needs the string's address")
            text = self._string(values[0])
        return Ucall(command, values, text)

    def _string(self, address: int) -> str:
        try:
            raw = self.memory.read(address, MAX_STRING)
        except GuestMemoryError:
            region = self.memory.region_of(address)
            raw = self.memory.read(address, min(MAX_STRING, region.end - address))
        return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")

    @property
    def exit_status(self) -> int | None:
        """args[0] of the last UCALL_DONE, if the guest made one."""
        for call in reversed(self.calls):
            if call.cmd is UcallCmd.DONE:
                return call.args[0] if call.args else 0
        return None

    def save(self) -> UcallLog:
        """Every ucall logged so far."""
        return UcallLog(tuple(self.calls))

    def restore(self, state: UcallLog) -> None:
        """Take up the log of ucalls made before."""
        self.calls[:] = state.calls
