"""The migration stream: sections on the snapshot container, with a handshake.

    source -> destination: HEADER("TAGVMIGR", 1.2) HELO
    destination -> source: ACPT | RFSE(reason)           (before any page is sent)
    source -> destination: (PAGE* ITER)* (VCPU VREG?)* DEVICE* END!
    destination -> source: ITER* (DONE | FAIL(reason))

or, post-copy, after the VCPUs and devices:

    source -> destination: POST(missing-page bitmap) PAGE* END!
    destination -> source: REQ(gpa)* DONE

HELO carries the machine's shape (the snapshot's MachineState), the stream options and
optionally how many pages the first pass will bring (a hint: the destination faults in
that much fresh memory ahead of them, and no more; older sources leave it out);
ITER marks the end of a pre-copy iteration ({"iteration": n, "pages": dirty pages});
the destination echoes it ({"iteration": n}) once it has applied every page before it,
and the source pauses the guest only after the echo of its last iteration, so that the
pause does not wait for a backlog. VCPU, VREG and the device sections (one per device
since 1.2; one DEVS before) are the snapshot's, from tagvisor.snapshot.registry's
COMPLETE phase (VREG, since 1.1, holds a real VCPU's registers that are not 64 bits
wide). END! carries page counts.
PAGE sections are the snapshot's: each page travels with its tags, and a section may
carry a scattered set of pages (SKIP kinds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from tagvisor.snapshot.container import (
    END_TAG,
    ByteSink,
    ByteSource,
    FormatError,
    Payload,
    Version,
    read_section,
    write_section,
)
from tagvisor.snapshot.registry import MAJOR, REGISTRY, Phase
from tagvisor.snapshot.state import MachineState

MAGIC: Final = b"TAGVMIGR"
VERSION: Final = Version(MAJOR, 2)
#: The stream's own sections (the machine's state is the registry's).
CONTROL_LIMITS: Final = {
    b"HELO": 64 << 10,
    b"ITER": 4 << 10,
    b"POST": 8 << 20,
    END_TAG: 64 << 10,
}


def limits() -> dict[bytes, int]:
    """Every section a stream may hold: its own, and the registry's memory and
    COMPLETE states (read when used: device kinds may be added)."""
    return {**REGISTRY.limits(Phase.ITERATE, Phase.COMPLETE), **CONTROL_LIMITS}


REPLY_LIMIT: Final = 16 << 10


@dataclass(frozen=True)
class Hello:
    machine: MachineState
    compress: bool
    #: Pages the first pass will send, if the source says (a hint, never trusted
    #: beyond the guest's RAM).
    pages: int | None = None

    def encode(self) -> bytes:
        value = {"machine": json.loads(self.machine.encode()), "compress": self.compress}
        if self.pages is not None:
            value["pages"] = self.pages
        return json.dumps(value, sort_keys=True).encode()

    @classmethod
    def decode(cls, payload: Payload) -> Hello:
        try:
            raw = json.loads(bytes(payload))
            machine = MachineState.decode(json.dumps(raw["machine"]).encode())
            compress = raw["compress"]
            pages = raw.get("pages")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise FormatError(f"the HELO section is malformed: {error}") from None
        if not isinstance(compress, bool):
            raise FormatError("the HELO section's compress flag is not a boolean")
        if pages is not None and (type(pages) is not int or pages < 0):
            raise FormatError("the HELO section's page count is not a count")
        return cls(machine, compress, pages)


def send_json(sink: ByteSink, tag: bytes, value: dict[str, Any]) -> None:
    write_section(sink, tag, json.dumps(value, sort_keys=True).encode())


def read_reply(source: ByteSource, expected: tuple[bytes, ...]) -> tuple[bytes, dict[str, Any]]:
    section = read_section(source, lambda tag: REPLY_LIMIT)
    if section.tag not in expected:
        raise FormatError(f"expected one of {expected}, the peer sent {section.tag!r}")
    try:
        value = json.loads(bytes(section.payload))
    except ValueError:
        raise FormatError(f"the peer's {section.tag!r} reply is not JSON") from None
    if not isinstance(value, dict):
        raise FormatError(f"the peer's {section.tag!r} reply is not a JSON object")
    return section.tag, value
