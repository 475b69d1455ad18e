"""What `tagvisor run` shows of a guest: reports in words, the shipped guests listed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from tagvisor.cli.common import boot
from tagvisor.cli.main import main
from tagvisor.guests.catalogue import GUESTS, IMAGES
from tagvisor.guests.decode import ReportDecoder
from tagvisor.guests.reports import CHURN_ROUND
from tagvisor.vmm import Machine

DOCS = Path(__file__).resolve().parents[2] / "docs" / "guests.md"


def test_run_heap_says_what_mte_caught_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: `tagvisor run heap`: the use-after-free line names the ESR and its
    meaning, the fault address, and both tags (the block was retagged 2 -> f)."""
    assert main(["run", "heap"]) == 0
    out = capsys.readouterr().out
    assert (
        "use-after-free caught: ESR 0x96000011 (tag check fault, read), "
        "FAR 0x02000000403fe000, pointer tag 2, memory tag f"
    ) in out
    assert "overflow caught: ESR 0x96000051 (tag check fault, write)" in out
    assert "done: exit status 0" in out
    assert "ucall 1 210" not in out


def test_raw_keeps_the_hex_reports(capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: `tagvisor run heap --raw`: the console as the guest wrote it."""
    assert main(["run", "heap", "--raw"]) == 0
    out = capsys.readouterr().out
    assert "ucall 1 210 2000000403fe000 96000011 2000000403fe000 0" in out
    assert "caught" not in out


def test_async_faults_are_reported_without_an_address() -> None:
    """Scenario: the heap's reports in async mode (ESR and FAR 0, TFSR_EL1.TF0): the
    line says the catch was asynchronous and names no fault address."""
    decoder = ReportDecoder()
    decoder.line("ucall 1 201 0 2000000403fe000 40 1")
    decoder.line("ucall 1 202 0 2000000403fe000 f 15")
    line = decoder.line("ucall 1 210 2000000403fe000 0 0 1")
    assert line is not None
    assert line.startswith("use-after-free caught asynchronously: TFSR_EL1 0x1")
    assert "memory tag f" in line
    assert "FAR" not in line


def test_unknown_and_malformed_lines_are_left_as_they_are() -> None:
    """Scenario: a report id the decoder does not know, a truncated report and a line
    that only looks like a ucall: each comes back None (the console shows it raw)."""
    decoder = ReportDecoder()
    assert decoder.line("ucall 1 999 1 2") is None
    assert decoder.line("ucall 1 210 5") is None
    assert decoder.line("ucall x y") is None
    assert decoder.line("hello") is None


def test_every_shipped_image_is_in_the_catalogue() -> None:
    """Scenario: the package's *.elf files and the catalogue name the same guests."""
    assert {path.stem for path in IMAGES.glob("*.elf")} == {guest.name for guest in GUESTS}


def test_run_help_and_the_docs_list_every_guest(capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: `tagvisor run --help` and docs/guests.md each have a row per guest,
    and say which ones do not end."""
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    docs = DOCS.read_text()
    for guest in GUESTS:
        assert f"  {guest.name} " in text
        assert f"| `{guest.name}` |" in docs
    assert text.count("runs until stopped") == sum(not guest.ends for guest in GUESTS)


def test_a_guest_that_never_ends_is_announced(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: `tagvisor run churn` with its default argument: before the guest
    runs, stderr says it runs until stopped and how to stop it (the run itself is cut
    short here by pausing the machine after its first round)."""

    def boot_that_stops(args: argparse.Namespace, **options: Any) -> Machine:
        machine = boot(args, **options)
        machine.pause_on_report(CHURN_ROUND)
        return machine

    monkeypatch.setattr("tagvisor.cli.run.boot", boot_that_stops)
    main(["run", "churn"])
    assert "churn runs until stopped" in capsys.readouterr().err


def test_a_panic_line_is_put_in_words() -> None:
    """Scenario: the runtime's panic line after a tag check fault it did not expect:
    the decoded line names the fault, FAR and ELR; a panic line it cannot parse is
    left as it is."""
    decoder = ReportDecoder()
    line = decoder.line("panic esr=96000011 far=7000000406a6000 elr=40082c08")
    assert line == (
        "the guest panicked: tag check fault, read (ESR 0x96000011), "
        "FAR 0x07000000406a6000, ELR 0x40082c08"
    )
    assert decoder.line("panic esr=zz") is None


def test_a_restored_console_gives_back_the_line_the_guest_was_half_way_through() -> None:
    """Scenario: a guest saved after printing "done\\nrou" (half of its next line): the
    restore's console sink is first given "rou", so the line comes out whole when the
    guest finishes it; a console that ended with a newline gives nothing."""
    from tagvisor.cli.snapshot import unfinished_line
    from tagvisor.kvm.model import ModelKvm
    from tagvisor.kvm.model.guest import GuestProgram
    from tagvisor.vmm import MachineBuilder
    from tagvisor.vmm.builder import UART_BASE
    from tests.snapshot.resumable import resumable

    program: GuestProgram = resumable(2)  # type: ignore[assignment]
    machine = MachineBuilder(ModelKvm(96 << 20)).memory(16 << 20).python_guest(program).build()
    for byte in b"done\n":
        machine.bus.write(UART_BASE, bytes([byte, 0, 0, 0]))
    assert unfinished_line(machine) == b""
    for byte in b"rou":
        machine.bus.write(UART_BASE, bytes([byte, 0, 0, 0]))
    assert unfinished_line(machine) == b"rou"
