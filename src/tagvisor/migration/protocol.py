"""The migration stream: sections on the snapshot container, with a handshake.

    source -> destination: HEADER("TAGVMIGR", 1.3) HELO
    destination -> source: ACPT(version) | RFSE(reason)  (before any page is sent)
    source -> destination: (PAGE* ITER)* (VCPU VREG?)* GIC3? MPST? DEVICE* END!
    destination -> source: ITER* (REDY | FAIL(reason))
    source -> destination: CMIT
    destination -> source: DONE

or, post-copy, after the VCPUs and devices:

    source -> destination: POST(missing-page bitmap)
    destination -> source: REDY | FAIL(reason)
    source -> destination: CMIT PAGE* END!
    destination -> source: REQ(gpa)* DONE

The switchover (since 1.2) keeps the guest from running on both sides: the destination
has everything and is paused when it sends REDY; the source commits with CMIT and never
resumes the guest after it; the destination runs the guest only after CMIT, and
discards it if CMIT never comes. A lost REDY or CMIT therefore leaves the guest paused
at the source, never running twice; a lost DONE leaves it running at the destination
only. Each peer uses it only if the other is 1.2 or newer (the source's header, the
destination's ACPT); with an older peer, DONE follows END! and POST as before.

HELO carries the machine's shape (the snapshot's MachineState), the stream options and
optionally how many pages the first pass will bring (a hint: the destination faults in
that much fresh memory ahead of them, and no more; older sources leave it out);
ITER marks the end of a pre-copy iteration ({"iteration": n, "pages": dirty pages});
the destination echoes it ({"iteration": n}) once it has applied every page before it,
and the source pauses the guest only after the echo of its last iteration, so that the
pause does not wait for a backlog. VCPU, VREG and the device sections (one per device
since 1.2; one DEVS before) are the snapshot's, from tagvisor.snapshot.registry's
COMPLETE phase (VREG, since 1.1, holds a real VCPU's registers that are not 64 bits
wide; GIC3 and MPST, since 1.3, a Linux guest's in-kernel GICv3 and VCPU power states).
END! carries page counts.
PAGE sections are the snapshot's: each page travels with its tags, and a section may
carry a scattered set of pages (SKIP kinds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from tagvisor import wire
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
VERSION: Final = Version(MAJOR, 3)
#: The stream's own sections (the machine's state is the registry's).
CONTROL_LIMITS: Final = {
    b"HELO": 64 << 10,
    b"ITER": 4 << 10,
    b"POST": 8 << 20,
    b"CMIT": 4 << 10,
    END_TAG: 64 << 10,
}
#: The first minor version whose peers switch over with READY and COMMIT.
COMMIT_SINCE: Final = 2
#: How long each side may wait in the handshake, and for the switchover's messages.
HANDSHAKE_SECONDS: Final = 30.0
SWITCHOVER_SECONDS: Final = 30.0


def iterate_seconds(ram_size: int) -> float:
    """How long the pre-copy passes may take in all, as a bound a stalling peer
    meets: ten minutes, plus the guest's RAM at 8 MiB/s (far below any real link)."""
    return 600.0 + ram_size / (8 << 20)


def limits() -> dict[bytes, int]:
    """Every section a stream may hold: its own, and the registry's memory and
    COMPLETE states (read when used: device kinds may be added)."""
    return {**REGISTRY.limits(Phase.ITERATE, Phase.COMPLETE), **CONTROL_LIMITS}


REPLY_LIMIT: Final = 16 << 10


@dataclass(frozen=True)
class Hello:
    """The HELO greeting: the machine's shape, whether PAGE sections are compressed, and
    optionally the pages of the first pass."""

    machine: MachineState
    compress: bool
    #: Pages the first pass will send, if the source says (a hint, never trusted
    #: beyond the guest's RAM).
    pages: int | None = None

    def encode(self) -> bytes:
        """The HELO payload: JSON with the shape as CONF gives it."""
        value = {"machine": wire.loads(self.machine.encode(), "HELO"), "compress": self.compress}
        if self.pages is not None:
            value["pages"] = self.pages
        return json.dumps(value, sort_keys=True).encode()

    @classmethod
    def decode(cls, payload: Payload) -> Hello:
        """The greeting from a HELO payload, every field checked (FormatError if one is wrong)."""
        raw = wire.loads(payload, "the HELO section")
        machine = MachineState.from_json(wire.field(raw, "machine", dict))
        compress = raw.get("compress")
        if not isinstance(compress, bool):
            raise FormatError("the HELO section's compress flag is not a boolean")
        pages = raw.get("pages")
        if pages is not None and (type(pages) is not int or not 0 <= pages < 1 << 40):
            raise FormatError("the HELO section's page count is not a count")
        return cls(machine, compress, pages)


def send_json(sink: ByteSink, tag: bytes, value: dict[str, Any]) -> None:
    """Write one section whose payload is ``value`` as JSON with sorted keys (the replies and
    control sections)."""
    write_section(sink, tag, json.dumps(value, sort_keys=True).encode())


def reason(reply: dict[str, Any]) -> str:
    """The peer's stated reason, as text of bounded length whatever it sent."""
    text = reply.get("reason")
    return (text if isinstance(text, str) else repr(text))[:1000]


def read_reply(source: ByteSource, expected: tuple[bytes, ...]) -> tuple[bytes, dict[str, Any]]:
    """The peer's next section, which must be one of ``expected`` and at most ``REPLY_LIMIT``
    bytes: its tag and its JSON object."""
    section = read_section(source, lambda tag: REPLY_LIMIT)
    if section.tag not in expected:
        raise FormatError(f"expected one of {expected}, the peer sent {section.tag!r}")
    return section.tag, wire.loads(section.payload, f"the peer's {section.tag!r} reply")
