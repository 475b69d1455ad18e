"""The guest's MTE workload and glibc's heap tagging, under qemu-aarch64 -cpu max, and
the host side of the workload's console protocol.

qemu-user runs the same static binaries the guest's initrd carries (built by
tagvisor.testbed.workload.program, as scripts/build-linux-workload does), with the
commands on a pipe: about a second for 64 MiB. The testbed's oracle test
(test_linux_guest.py) runs them in the Linux guest on the real KVM.
"""

from __future__ import annotations

import subprocess
import threading

import pytest

from tagvisor.testbed.workload import (
    GLIBC_PREFIX,
    GRANULES_PER_MIB,
    WorkloadConsole,
    WorkloadError,
    WorkloadEvent,
    bug_caught,
    parse_line,
    program,
    standard_run,
)
from tests.support import cross


def run(name: str, stdin: str, *args: str, env: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    cross.require_toolchain()
    environment = [item for pair in (("-E", e) for e in env) for item in pair]
    done = subprocess.run(
        ["qemu-aarch64", "-cpu", "max", *environment, str(program(name)), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout.splitlines()


def events(lines: list[str]) -> list[WorkloadEvent]:
    return [event for event in map(parse_line, lines) if event is not None]


@pytest.mark.oracle
def test_the_workload_verifies_64_mib_and_catches_both_bugs_under_qemu_user() -> None:
    """Scenario: mte-workload with its default 64 MiB, commands verify, bugs, exit on
    stdin: READY with 64 * 65536 granules, VERIFIED with every granule and no
    mismatch, a use-after-free and an overflow each ending in SIGSEGV/SEGV_MTESERR,
    BUGS caught=2/2, EXIT and status 0."""
    status, lines = run("mte-workload", "verify\nbugs\nexit\n")
    got = events(lines)
    assert [e.kind for e in got] == ["READY", "VERIFIED", "BUG", "BUG", "BUGS", "EXIT"], lines
    ready, verified = got[0], got[1]
    assert ready.number("mib") == 64
    assert ready.number("granules") == 64 * GRANULES_PER_MIB
    assert verified.number("granules") == ready.number("granules")
    assert verified.number("mismatches") == 0
    assert [e.fields["kind"] for e in got[2:4]] == ["uaf", "overflow"]
    assert all(bug_caught(e.fields) for e in got[2:4]), lines
    assert got[4].fields["caught"] == "2/2"
    assert status == 0


@pytest.mark.oracle
def test_paused_the_workload_gives_the_same_digest_twice_and_names_bad_commands() -> None:
    """Scenario: 2 MiB; pause, verify, verify, resume, an unknown command, then the
    end of stdin: both digests equal (nothing rewritten in between), PAUSED and
    RESUMED answer, ERROR names the unknown command, EXIT at the end of input."""
    status, lines = run("mte-workload", "pause\nverify\nverify\nresume\nfrobnicate\n", "2")
    got = events(lines)
    assert [e.kind for e in got] == [
        "READY", "PAUSED", "VERIFIED", "VERIFIED", "RESUMED", "ERROR", "EXIT"
    ], lines  # fmt: skip
    assert got[2].fields["digest"] == got[3].fields["digest"]
    assert got[2].number("mismatches") == 0
    assert got[5].text == "unknown command frobnicate"
    assert status == 0


@pytest.mark.oracle
@pytest.mark.parametrize("argument", ["0", "4097", "12x"])
def test_a_size_out_of_range_is_refused_with_its_usage(argument: str) -> None:
    """Scenario: 0 MiB, more than 4096 MiB, not a number: ERROR with the usage,
    status 2, no READY."""
    status, lines = run("mte-workload", "", argument)
    assert [e.kind for e in events(lines)] == ["ERROR"]
    assert "usage" in lines[0]
    assert status == 2


def glibc(setting: str) -> dict[str, dict[str, str]]:
    """glibc-mtag's reports with GLIBC_TUNABLES=glibc.mem.tagging=<setting>, keyed by
    ``pointer`` and by the bug's kind."""
    tunable = f"GLIBC_TUNABLES=glibc.mem.tagging={setting}"
    status, lines = run("glibc-mtag", "", env=(tunable,))
    assert status == 0
    reports: dict[str, dict[str, str]] = {}
    for line in lines:
        assert line.startswith(GLIBC_PREFIX + "tunables=glibc.mem.tagging=" + setting), line
        fields = dict(item.split("=", 1) for item in line.split()[2:] if "=" in item)
        reports[fields.get("kind", "pointer")] = fields
    return reports


@pytest.mark.oracle
def test_static_glibc_tags_its_heap_when_the_tunable_asks() -> None:
    """Scenario: Debian's static glibc (libc6-dev-arm64-cross) under qemu-user. With
    glibc.mem.tagging=0 malloc's pointer has no tag and a use-after-free goes
    unnoticed; with 1 the pointer is tagged and the use-after-free ends in SIGSEGV
    with SEGV_MTEAERR (8, asynchronous); with 3 (bit 1: precise) in SEGV_MTESERR (9).
    free retags the chunk, so the use-after-free is always caught; an overflow into
    the next chunk is caught unless both chunks drew the same random tag (glibc's IRG
    excludes only tag 0), so its report is only checked when it was caught."""
    off, asynchronous, synchronous = glibc("0"), glibc("1"), glibc("3")
    assert off["pointer"]["tagged"] == "0"
    assert off["uaf"]["signal"] == "0"
    assert asynchronous["pointer"]["tagged"] == "1"
    assert (asynchronous["uaf"]["signal"], asynchronous["uaf"]["code"]) == ("11", "8")
    assert synchronous["pointer"]["tagged"] == "1"
    assert bug_caught(synchronous["uaf"])
    overflow = synchronous["overflow"]
    assert overflow["signal"] == "0" or bug_caught(overflow)


def test_a_report_is_parsed_wherever_it_starts_and_other_lines_are_not() -> None:
    """Scenario: a READY line after a shell's echo, a BUGS line, an ERROR, kernel
    lines and a report of an unknown kind."""
    ready = parse_line("\r=== TAGVISOR-WORKLOAD READY mib=64 granules=4194304 digest=00ff")
    assert ready == WorkloadEvent(
        "READY", {"mib": "64", "granules": "4194304", "digest": "00ff"}, ready.text if ready else ""
    )
    bugs = parse_line("=== TAGVISOR-WORKLOAD BUGS caught=2/2")
    assert bugs is not None
    assert bugs.number("caught") == 2
    error = parse_line("=== TAGVISOR-WORKLOAD ERROR unknown command x y")
    assert error is not None
    assert error.text == "unknown command x y"
    assert parse_line("[    1.0] Run /init as init process") is None
    assert parse_line("=== TAGVISOR-WORKLOAD SHOUT x=1") is None


class FakeGuest:
    """Answers each command line with the reports a workload would print, on a
    thread of its own (as the guest answers on the VCPU threads)."""

    def __init__(self, answers: dict[bytes, list[str]]) -> None:
        self.answers = answers
        self.console = WorkloadConsole(self.receive)

    def receive(self, line: bytes) -> None:
        replies = self.answers.get(line, [])

        def answer() -> None:
            for reply in replies:
                self.console.feed(reply)

        threading.Thread(target=answer).start()


def test_the_standard_conversation_collects_its_figures() -> None:
    """Scenario: a guest that is READY, then answers verify, bugs and exit: the result
    has the time to READY, the verify time, the reports and the TICK count."""
    p = "=== TAGVISOR-WORKLOAD "
    guest = FakeGuest(
        {
            b"verify\n": [f"{p}TICK 5.00", f"{p}VERIFIED granules=16 mismatches=0 digest=01"],
            b"bugs\n": [
                f"{p}BUG kind=uaf signal=11 code=9",
                f"{p}BUG kind=overflow signal=11 code=9",
                f"{p}BUGS caught=2/2",
            ],
            b"exit\n": [f"{p}EXIT"],
        }
    )
    guest.console.feed(f"{p}READY mib=1 granules=16 digest=01")
    result = standard_run(guest.console, started=guest.console.clock(), timeout=10)
    assert result["verified"] == {"granules": "16", "mismatches": "0", "digest": "01"}
    assert result["bugs_caught"] == "2/2"
    assert result["bugs"] == [
        {"kind": "uaf", "signal": "11", "code": "9"},
        {"kind": "overflow", "signal": "11", "code": "9"},
    ]
    assert result["ticks"] == 1
    assert "error" not in result
    assert isinstance(result["seconds_to_ready"], float)


def test_a_silent_or_failing_workload_ends_the_wait_with_what_happened() -> None:
    """Scenario: no answer within the timeout; an ERROR instead of the answer."""
    silent = WorkloadConsole(lambda line: None)
    with pytest.raises(WorkloadError, match=r"no VERIFIED from the workload within 0\.2 s"):
        silent.command("verify", "VERIFIED", 0.2)
    guest = FakeGuest({b"verify\n": ["=== TAGVISOR-WORKLOAD ERROR cannot map"]})
    with pytest.raises(WorkloadError, match="ERROR cannot map"):
        guest.console.command("verify", "VERIFIED", 10)
    result = standard_run(WorkloadConsole(lambda line: None), 0.0, 0.1)
    assert result["error"] == "no READY from the workload within 0.1 s"
