"""Progress that tells the truth, and a console that does not write over it."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.progress import Progress

from tagvisor.cli.common import MigrationProgress, console_sink


def test_the_migration_bar_counts_each_pass_and_says_when_it_waits() -> None:
    """Scenario: a first pass sends 100 pages with 50 left, then finishes (0 left), then
    a second pass of 20 starts: the bar's text names the pass, the pages sent and the
    pages left, says "waiting for the destination" when a pass has nothing left, and
    its fraction is the current pass's."""
    with Progress(disable=True) as progress:
        bar = MigrationProgress(progress)
        task = progress.tasks[0]
        bar(0, 100, 50)
        assert task.description == "pass 1: 100 pages sent, 50 left"
        assert (task.completed, task.total) == (100, 150)
        bar(0, 150, 0)
        assert task.description == "pass 1: 150 pages sent, waiting for the destination"
        assert task.completed == task.total == 150
        bar(1, 160, 10)
        assert task.description == "pass 2: 160 pages sent, 10 left"
        assert (task.completed, task.total) == (10, 20)


@pytest.mark.parametrize("raw", [False, True])
def test_guest_output_goes_above_a_live_bar(raw: bool) -> None:
    """Scenario: the guest prints while a progress bar is live on a terminal: its
    lines reach the terminal through rich, above the bar, decoded and raw alike."""
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with Progress(console=console, transient=True) as progress:
        progress.add_task("migrating", total=10)
        sink = console_sink(True, raw=raw)
        for byte in b"ucall 4 0\nhello from the guest\n":
            sink(bytes([byte]))
    text = screen.getvalue()
    assert ("ucall 4 0" if raw else "done: exit status 0") in text
    assert "hello from the guest" in text
