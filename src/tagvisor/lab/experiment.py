"""What an experiment is, and what it gives back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

#: Called with the share of the experiment done so far (0 to 1).
ProgressFn = Callable[[float], None]

Cell = float | int | str


@dataclass(frozen=True)
class Scale:
    """How big an experiment runs: ``quick`` for CI, else full size."""

    quick: bool

    def pick(self, quick: int, full: int) -> int:
        """``quick`` when running quick, else ``full``."""
        return quick if self.quick else full


@dataclass
class Table:
    """Rows for the terminal and the docs; the first column names the row."""

    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)


@dataclass
class Chart:
    """A grouped bar chart: ``series[label][category] = value``."""

    title: str
    ylabel: str
    series: dict[str, dict[str, float]]
    log: bool = False


@dataclass
class Outcome:
    """One experiment's result: every figure, a table, charts and the conclusion."""

    name: str
    question: int
    figures: dict[str, Any]
    table: Table
    charts: list[Chart]
    conclusion: str
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The outcome as a JSON-ready dict, for ``tagvisor lab run --json``."""
        return asdict(self)


@dataclass(frozen=True)
class Experiment:
    """A named experiment answering one of the seed thread's questions."""

    name: str
    question: int
    title: str
    run: Callable[[Scale, ProgressFn], Outcome]


def ratio(value: float, baseline: float) -> float:
    """``value`` as a multiple of ``baseline`` (inf when the baseline is 0 and it is not)."""
    if baseline == 0:
        return 0.0 if value == 0 else float("inf")
    return value / baseline
