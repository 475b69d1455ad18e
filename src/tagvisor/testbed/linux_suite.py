"""In the testbed image: boot the testbed's own Debian kernel as a guest, with tagvisor
on the real KVM, and time it to its /init's marker.

The host side (:mod:`tagvisor.testbed.linux_guest`) puts the kernel, a tiny initrd
whose /init prints :data:`MARKER` and powers off, and ``linux_guest.json`` (the
machine's shape) in /opt/suite. Standard library plus tagvisor (and its fdt, NumPy).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Final

SUITE_DIR: Final = Path("/opt/suite")
MARKER: Final = "=== TAGVISOR-LINUX-GUEST-INIT"
#: Each guest console line is echoed to the testbed's console with this prefix.
ECHO: Final = "[guest] "


class ConsoleWatch:
    """The guest's console sink: echoes whole lines and notes when the marker came."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.line = bytearray()
        self.marker_at: float | None = None
        self.marker_line = ""

    def __call__(self, byte: bytes) -> None:
        if byte != b"\n":
            self.line += byte
            return
        text = self.line.decode(errors="replace").rstrip("\r")
        self.line.clear()
        sys.stdout.write(ECHO + text + "\n")
        sys.stdout.flush()
        if self.marker_at is None and MARKER in text:
            self.marker_at = time.monotonic() - self.started
            self.marker_line = text


def run() -> dict[str, Any]:
    from tagvisor.kvm.linux import LinuxKvm
    from tagvisor.vmm import MachineBuilder
    from tagvisor.vmm.linux.run import console_text, run_linux

    shape = json.loads((SUITE_DIR / "linux_guest.json").read_text())
    started = time.monotonic()
    watch = ConsoleWatch(started)
    machine = (
        MachineBuilder(LinuxKvm())
        .memory(int(shape["mem"]))
        .mte(bool(shape["mte"]))
        .vcpus(int(shape["vcpus"]))
        .console(watch)
        .linux(SUITE_DIR / "Image", SUITE_DIR / "guest-initrd.gz", str(shape["append"]))
        .build()
    )
    built = time.monotonic() - started
    result = run_linux(machine, float(shape["deadline"]))
    return {
        "seconds_build": round(built, 2),
        "seconds_to_marker": None if watch.marker_at is None else round(watch.marker_at, 2),
        "seconds_total": round(time.monotonic() - started, 2),
        "marker_line": watch.marker_line,
        "exit_status": result.exit_status,
        "system_event": result.system_event,
        "error": result.error,
        "exits": result.exits,
        "exits_by_reason": result.by_reason,
        "console": console_text(machine),
    }
