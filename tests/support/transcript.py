"""Parse a guest's console transcript into its ucalls (docs/guest-abi.md).

The guest runtime prints every ucall as one console line, ``ucall <cmd> <arg0> ...``
(hex, no ``0x``), besides ringing the doorbell. Under QEMU the doorbell goes nowhere,
so the transcript is the record; tagvisor's VMM sees the doorbell itself and can print
the same lines, so the two records compare directly. Other lines are free text: the
string a ``UCALL_PRINT`` names is printed on the line before its ucall line, and an
unhandled exception prints ``panic esr=<hex> far=<hex> elr=<hex>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

UCALL_SYNC: Final = 1
UCALL_ASSERT: Final = 2
UCALL_PRINT: Final = 3
UCALL_DONE: Final = 4
UCALL_MAX_ARGS: Final = 6
#: The exit status of a guest that panicked.
PANIC_STATUS: Final = 255

_HEX: Final = re.compile(r"[0-9a-f]{1,16}")
_PANIC: Final = re.compile(r"panic esr=([0-9a-f]+) far=([0-9a-f]+) elr=([0-9a-f]+)")


class TranscriptError(ValueError):
    """A line looks like a ucall or a panic but does not follow the ABI's format."""


@dataclass(frozen=True)
class Ucall:
    """One ucall: its command and its arguments (``nargs`` of them)."""

    cmd: int
    args: tuple[int, ...]


@dataclass(frozen=True)
class Panic:
    """The registers the runtime printed for an exception it could not handle."""

    esr: int
    far: int
    elr: int


@dataclass(frozen=True)
class Assertion:
    """A ``UCALL_ASSERT``: the guest's source line, the expected and actual values."""

    line: int
    expected: int
    actual: int


def parse_ucall_line(line: str) -> Ucall | None:
    """The ucall on a console line, or None when the line is not a ucall line."""
    words = line.strip().split()
    if not words or words[0] != "ucall":
        return None
    values = words[1:]
    if not values or len(values) > 1 + UCALL_MAX_ARGS:
        raise TranscriptError(f"a ucall line needs a command and 0-6 arguments: {line!r}")
    for word in values:
        if not _HEX.fullmatch(word):
            raise TranscriptError(f"{word!r} is not lower-case hex in {line!r}")
    numbers = [int(word, 16) for word in values]
    return Ucall(numbers[0], tuple(numbers[1:]))


def parse_ucalls(text: str) -> list[Ucall]:
    """Every ucall in a transcript, in order."""
    return [ucall for line in text.splitlines() if (ucall := parse_ucall_line(line))]


@dataclass(frozen=True)
class Transcript:
    """A guest run's console output and what it says."""

    text: str
    ucalls: tuple[Ucall, ...]
    #: The console line printed before each UCALL_PRINT, in order.
    printed: tuple[str, ...]
    panic: Panic | None

    def reports(self, report_id: int) -> list[tuple[int, ...]]:
        """The values (after the id) of every UCALL_SYNC report with this id."""
        return [
            u.args[1:]
            for u in self.ucalls
            if u.cmd == UCALL_SYNC and u.args and u.args[0] == report_id
        ]

    def report(self, report_id: int) -> tuple[int, ...]:
        """The values of the one report with this id."""
        found = self.reports(report_id)
        if len(found) != 1:
            raise TranscriptError(
                f"expected one report {report_id:#x}, found {len(found)} in:\n{self.text}"
            )
        return found[0]

    @property
    def assertions(self) -> list[Assertion]:
        return [Assertion(*u.args[:3]) for u in self.ucalls if u.cmd == UCALL_ASSERT]

    @property
    def done(self) -> int | None:
        """The status of the UCALL_DONE, or None if the guest made none."""
        statuses = [u.args[0] for u in self.ucalls if u.cmd == UCALL_DONE and u.args]
        return statuses[-1] if statuses else None

    @property
    def exit_status(self) -> int:
        """The guest's exit status once it has powered off (ABI: DONE's, else 0)."""
        return 0 if self.done is None else self.done


def parse_transcript(text: str) -> Transcript:
    """Parse a whole console transcript (CR-LF or LF line ends)."""
    lines = text.replace("\r", "").split("\n")
    ucalls: list[Ucall] = []
    printed: list[str] = []
    panic: Panic | None = None
    for index, line in enumerate(lines):
        ucall = parse_ucall_line(line)
        if ucall is not None:
            ucalls.append(ucall)
            if ucall.cmd == UCALL_PRINT:
                printed.append(lines[index - 1] if index else "")
            continue
        match = _PANIC.search(line)
        if match and panic is None:
            panic = Panic(*(int(group, 16) for group in match.groups()))
    return Transcript(text, tuple(ucalls), tuple(printed), panic)
