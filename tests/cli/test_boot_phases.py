"""The testbed's boot phases, read from a console log as QEMU writes it."""

from __future__ import annotations

import threading
from pathlib import Path

from tagvisor.cli.boot_phases import PHASES, ConsoleWatcher

BOUND = 30.0


class Said:
    """What the watcher said, with a way to wait (bounded) for a line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()

    def wait_for(self, text: str, times: int = 1) -> None:
        """Wait until ``text`` was in ``times`` of the lines said."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: sum(text in line for line in self.lines) >= times, BOUND
            )
        assert found, f"never said {text!r} {times} times: {self.lines}"


def test_each_phase_is_said_once_in_order_as_the_console_reaches_it(tmp_path: Path) -> None:
    """Scenario: QEMU's console log grows from the kernel's first line to power-off:
    the watcher says each phase as its marker appears, once, in boot order."""
    log = tmp_path / "console.log"
    log.write_text("")
    said = Said()
    with ConsoleWatcher(log, said, heartbeat=BOUND * 10), log.open("a") as console:
        for marker, meaning in PHASES:
            console.write(f"[    1.0] something before\n{marker} 6.1.0-arm64\n")
            console.flush()
            said.wait_for(meaning)
    assert said.lines == [f"testbed: {meaning}" for _, meaning in PHASES]


def test_a_quiet_boot_gets_a_heartbeat_with_the_last_console_line(tmp_path: Path) -> None:
    """Scenario: the console stops after the kernel's first lines: the watcher says it
    is still going and shows the last line, instead of staying silent."""
    log = tmp_path / "console.log"
    log.write_text("[    0.0] Booting Linux on physical CPU 0x0\n[    0.5] Memory: 883148K\n")
    said = Said()
    with ConsoleWatcher(log, said, heartbeat=0.3):
        said.wait_for("still going")
    assert said.lines[0] == "testbed: the kernel is booting"
    assert said.lines[-1].endswith(": [    0.5] Memory: 883148K")


def test_a_new_boot_starts_the_phases_over(tmp_path: Path) -> None:
    """Scenario: the log is truncated and a second boot begins: its phases are said
    again from the first."""
    log = tmp_path / "console.log"
    log.write_text("Booting Linux\nkvm [1]: VHE\n")
    said = Said()
    with ConsoleWatcher(log, said, heartbeat=BOUND * 10):
        said.wait_for("setting up KVM")
        log.write_text("Booting Linux\n")
        said.wait_for("the kernel is booting", times=2)
    assert said.lines == [
        "testbed: the kernel is booting",
        "testbed: the kernel is setting up KVM",
        "testbed: the kernel is booting",
    ]
