"""The Linux guest's own MTE workload: building it, and talking to it over the console.

``guests/linux/mte-workload.c`` is a static arm64 program for the guest's initrd
(docs/linux-guests.md, "The workload"). It maps MiB of PROT_MTE memory, tags every
granule, keeps its own records, and answers commands sent to its console
(``Machine.console_input``) with one-line reports that start with :data:`PREFIX`.
``guests/linux/glibc-mtag.c`` tries glibc's heap tagging (GLIBC_TUNABLES).

Host side: :func:`program` builds either with Debian's cross compiler, reproducibly
and cached; :func:`workload_initrd` puts them with busybox in the guest's initrd.
Image side (standard library only): :func:`parse_line` reads the reports and
:class:`WorkloadConsole` sends commands and waits for their answers while the guest
runs on other threads.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tagvisor.testbed.errors import TestbedError

PREFIX: Final = "=== TAGVISOR-WORKLOAD "
#: glibc-mtag's lines: ``<GLIBC_PREFIX>tagging=<n> ...``.
GLIBC_PREFIX: Final = "=== TAGVISOR-GLIBC-MTAG "
#: The workload's default size, and its protocol's kinds of report.
DEFAULT_MIB: Final = 64
KINDS: Final = ("READY", "VERIFIED", "PAUSED", "RESUMED", "BUG", "BUGS", "EXIT", "ERROR", "TICK")
#: Granules of 16 bytes in a MiB.
GRANULES_PER_MIB: Final = (1 << 20) // 16
#: The passing answer to a bug: SIGSEGV with SEGV_MTESERR (a synchronous tag check fault).
SIGSEGV: Final = 11
SEGV_MTESERR: Final = 9

SOURCES: Final = Path(__file__).resolve().parents[3] / "guests" / "linux"
CROSS_CC: Final = "aarch64-linux-gnu-gcc"
#: The build: static against Debian's arm64 glibc, MTE instructions, and nothing that
#: depends on where or when it is built (no build id, no .comment, relative paths).
CFLAGS: Final = (
    "-std=gnu11",
    "-O2",
    "-static",
    "-march=armv8.5-a+memtag",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fno-ident",
    "-Wl,--build-id=none",
)
PROGRAMS: Final = ("mte-workload", "glibc-mtag")
_FIELD: Final = re.compile(r"([a-z]+)=(\S+)")


@dataclass(frozen=True)
class WorkloadEvent:
    """One report of the workload: its kind, its ``name=value`` fields, the rest."""

    kind: str
    fields: dict[str, str] = field(default_factory=dict)
    #: What follows the kind (TICK's uptime, ERROR's text), as printed.
    text: str = ""

    def number(self, name: str) -> int:
        """A field as an integer (``caught=2/2`` gives 2); TestbedError if absent."""
        value = self.fields.get(name)
        if value is None or not value.split("/")[0].isdigit():
            raise TestbedError(f"the workload's {self.kind} line has no number {name}")
        return int(value.split("/")[0])


def parse_line(text: str) -> WorkloadEvent | None:
    """The workload's report in a console line, or None for any other line (the
    kernel's, the shell's, a line of another program)."""
    start = text.find(PREFIX)
    if start < 0:
        return None
    kind, _, rest = text[start + len(PREFIX) :].strip().partition(" ")
    if kind not in KINDS:
        return None
    return WorkloadEvent(kind, dict(_FIELD.findall(rest)), rest)


# -- building (host side) ------------------------------------------------------------


def _cache() -> Path:
    from tagvisor.testbed.parts import cache_root

    return cache_root() / "linux-programs"


def program(name: str) -> Path:
    """Build ``guests/linux/<name>.c`` (once: cached by source, flags and compiler
    version) and return the static arm64 binary's path."""
    if name not in PROGRAMS:
        raise TestbedError(f"no guest program {name!r}; there are {', '.join(PROGRAMS)}")
    if shutil.which(CROSS_CC) is None:
        raise TestbedError(
            f"{CROSS_CC} not found: install gcc-aarch64-linux-gnu and libc6-dev-arm64-cross "
            "(scripts/setup as root)"
        )
    source = SOURCES / f"{name}.c"
    version = subprocess.run([CROSS_CC, "--version"], capture_output=True, text=True).stdout
    headers = b"".join(header.read_bytes() for header in sorted(SOURCES.glob("*.h")))
    key = hashlib.sha256(source.read_bytes() + headers + "\0".join((*CFLAGS, version)).encode())
    binary = _cache() / f"{name}-{key.hexdigest()[:16]}"
    if not binary.exists():
        _compile(source, binary)
    return binary


def _compile(source: Path, binary: Path) -> None:
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f".{binary.name}.{os.getpid()}")
    relative = source.relative_to(SOURCES.parents[1])
    flags = (*CFLAGS, f"-ffile-prefix-map={SOURCES.parents[1]}/=")
    done = subprocess.run(
        [CROSS_CC, *flags, "-o", str(partial), str(relative)],
        cwd=SOURCES.parents[1],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C", "SOURCE_DATE_EPOCH": "0"},
    )
    if done.returncode:
        raise TestbedError(f"building {source.name} failed:\n{done.stderr}")
    os.replace(partial, binary)  # atomic: a concurrent build never sees half a file


def programs() -> dict[str, bytes]:
    """Both guest programs, in the order /init runs them: glibc-mtag (which exits at
    once), then mte-workload (which runs until the host sends ``exit``)."""
    return {name: program(name).read_bytes() for name in ("glibc-mtag", "mte-workload")}


# -- talking to it (image side) ------------------------------------------------------


class WorkloadError(TestbedError):
    """The workload did not answer as its protocol says, in time."""


class WorkloadConsole:
    """Feeds on the guest's console lines (:meth:`feed`, from the VCPU threads) and
    holds a conversation with the workload from another thread: :meth:`wait` for a
    report, :meth:`command` to send a line and wait for its answer."""

    def __init__(self, send: Callable[[bytes], None], clock: Callable[[], float] = time.monotonic):
        self.send = send
        self.clock = clock
        self.events: queue.Queue[tuple[float, WorkloadEvent]] = queue.Queue()
        #: Every report so far, with the clock's time it came.
        self.log: list[tuple[float, WorkloadEvent]] = []

    def feed(self, line: str) -> None:
        """One console line (any thread)."""
        event = parse_line(line)
        if event is not None:
            self.events.put((self.clock(), event))

    def wait(self, kind: str, timeout: float) -> tuple[float, WorkloadEvent]:
        """The next report of ``kind`` and when it came; reports of other kinds before
        it are logged (TICKs), an ERROR ends the wait (WorkloadError)."""
        deadline = self.clock() + timeout
        while True:
            left = deadline - self.clock()
            try:
                at, event = self.events.get(timeout=max(left, 0.0))
            except queue.Empty:
                raise WorkloadError(f"no {kind} from the workload within {timeout:g} s") from None
            self.log.append((at, event))
            if event.kind == kind:
                return at, event
            if event.kind == "ERROR":
                raise WorkloadError(f"the workload said: ERROR {event.text}")

    def command(self, text: str, answer: str, timeout: float) -> tuple[float, WorkloadEvent]:
        """Send ``text`` as a line and wait for the ``answer`` report; returns the
        seconds it took and the report."""
        sent = self.clock()
        self.send(text.encode() + b"\n")
        at, event = self.wait(answer, timeout)
        return at - sent, event


def standard_run(console: WorkloadConsole, started: float, timeout: float) -> dict[str, object]:
    """READY, then ``verify``, ``bugs`` and ``exit``, as the oracle test wants them:
    the figures and the reports, or ``error`` with what went wrong."""
    result: dict[str, object] = {}
    try:
        at, ready = console.wait("READY", timeout)
        result["seconds_to_ready"] = round(at - started, 2)
        result["ready"] = ready.fields
        seconds, verified = console.command("verify", "VERIFIED", timeout)
        result["verify_seconds"] = round(seconds, 2)
        result["verified"] = verified.fields
        _, bugs = console.command("bugs", "BUGS", timeout)
        result["bugs"] = [e.fields for _, e in console.log if e.kind == "BUG"]
        result["bugs_caught"] = bugs.fields.get("caught", "")
        console.command("exit", "EXIT", timeout)
    except WorkloadError as error:
        result["error"] = str(error)
    result["ticks"] = sum(e.kind == "TICK" for _, e in console.log)
    return result


def bug_caught(fields: dict[str, str]) -> bool:
    """A BUG report's pass: SIGSEGV with SEGV_MTESERR."""
    return fields.get("signal") == str(SIGSEGV) and fields.get("code") == str(SEGV_MTESERR)


def workload_initrd(kernel_suite: str = "release") -> bytes:
    """The guest's initrd with both programs: busybox from the testbed's userland
    (fetched if missing) and an /init that runs glibc-mtag, then mte-workload."""
    from tagvisor.testbed.linux_guest import guest_initrd
    from tagvisor.testbed.parts import fetch

    return guest_initrd(fetch(kernel_suite, say=lambda _: None), programs())


def main(argv: list[str] | None = None) -> int:
    """scripts/build-linux-workload: build the programs (and with --initrd FILE the
    guest's initrd) and print their paths."""
    import argparse

    parser = argparse.ArgumentParser(prog="build-linux-workload", description=main.__doc__)
    parser.add_argument("--initrd", type=Path, help="also write the guest initrd here")
    parser.add_argument("--kernel", default="release", help="the testbed suite for busybox")
    args = parser.parse_args(argv)
    try:
        for name in PROGRAMS:
            print(program(name))
        if args.initrd is not None:
            args.initrd.write_bytes(workload_initrd(args.kernel))
            print(args.initrd)
    except TestbedError as error:
        print(f"build-linux-workload: {error}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
