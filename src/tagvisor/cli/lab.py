"""tagvisor lab: the seed thread's open questions, answered with measurements.

  tagvisor lab list                      one experiment per line
  tagvisor lab run                       every experiment, full size (minutes)
  tagvisor lab run tag-access --quick    one experiment, CI size (seconds)
  tagvisor lab run --json --out results  every figure and conclusion as JSON

Each experiment prints a table and its conclusion (computed from the figures of this
run) and writes a PNG chart into --out. Figures are ratios against COPY_TAGS measured
in the same run. docs/lab.md explains each one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from tagvisor.cli.common import add_command, print_json
from tagvisor.lab import EXPERIMENTS, Experiment, Outcome, Scale, experiment_named
from tagvisor.lab.experiment import ProgressFn
from tagvisor.lab.runner import ProgressFactory, run_all


def _list(args: argparse.Namespace) -> int:
    for experiment in EXPERIMENTS:
        print(f"{experiment.name:<16} Q{experiment.question}  {experiment.title}")
    return 0


@contextmanager
def _bars(enabled: bool) -> Iterator[ProgressFactory]:
    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    ) as progress:

        def factory(experiment: Experiment) -> ProgressFn:
            task = progress.add_task(experiment.name, total=1.0)
            return lambda done: progress.update(task, completed=done)

        yield factory


def _print(outcome: Outcome, console: Console, plot: Path) -> None:
    table = RichTable(title=f"Q{outcome.question}: {outcome.name} ({outcome.seconds:.1f} s)")
    for column in outcome.table.columns:
        table.add_column(column)
    for row in outcome.table.rows:
        table.add_row(*(str(cell) for cell in row))
    console.print(table)
    console.print(f"[bold]Conclusion:[/bold] {outcome.conclusion}")
    console.print(f"Plot: {plot}\n")


def _run(args: argparse.Namespace) -> int:
    from tagvisor.lab import plots  # matplotlib is only needed to run experiments

    try:
        chosen = [experiment_named(name) for name in args.names] or list(EXPERIMENTS)
    except ValueError as error:
        print(f"tagvisor lab: {error}", file=sys.stderr)
        return 2
    with _bars(not args.json) as factory:
        outcomes = run_all(chosen, Scale(quick=args.quick), factory)
    console = Console()
    report: list[dict[str, Any]] = []
    for outcome in outcomes:
        plot = plots.save(outcome, args.out)
        report.append({**outcome.as_dict(), "plot": str(plot)})
        if not args.json:
            _print(outcome, console, plot)
    if args.json:
        print_json({"quick": args.quick, "experiments": report})
    return 0


def register(commands: Any) -> None:
    """Add the ``lab`` command and its actions."""
    parser = add_command(commands, "lab", "measure the seed thread's ABI designs", __doc__)
    actions = parser.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="one experiment per line")
    listing.set_defaults(run=_list)
    running = actions.add_parser("run", help="run experiments (all unless named)")
    running.add_argument("names", nargs="*", metavar="NAME", help="experiments to run")
    running.add_argument("--quick", action="store_true", help="CI size: the lab in under 2 min")
    running.add_argument("--json", action="store_true", help="every figure and conclusion")
    running.add_argument(
        "--out", type=Path, default=Path("lab-results"), help="where PNGs go (lab-results)"
    )
    running.set_defaults(run=_run)
