"""PNG charts of an experiment's figures (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: CI and this machine have no display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from tagvisor.lab.experiment import Chart, Outcome


def _draw(axes: Axes, chart: Chart) -> None:
    categories = list(dict.fromkeys(c for values in chart.series.values() for c in values))
    width = 0.8 / max(1, len(chart.series))
    for index, (label, values) in enumerate(chart.series.items()):
        xs = [i + index * width for i in range(len(categories))]
        heights = [_finite(values.get(c, 0.0)) for c in categories]
        axes.bar(xs, heights, width, label=label)
    axes.set_xticks([i + width * (len(chart.series) - 1) / 2 for i in range(len(categories))])
    axes.set_xticklabels(categories, rotation=20, ha="right", fontsize=8)
    axes.set_title(chart.title, fontsize=10)
    axes.set_ylabel(chart.ylabel, fontsize=9)
    if chart.log:
        axes.set_yscale("symlog", linthresh=1e-3)
    if len(chart.series) > 1:
        axes.legend(fontsize=7)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def save(outcome: Outcome, directory: Path) -> Path:
    """Write ``outcome``'s charts side by side into ``directory/<name>.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    count = max(1, len(outcome.charts))
    columns = min(count, 3)
    rows = -(-count // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False)
    for index, chart in enumerate(outcome.charts):
        _draw(grid[index // columns][index % columns], chart)
    for index in range(count, rows * columns):
        grid[index // columns][index % columns].axis("off")
    figure.suptitle(f"Q{outcome.question}: {outcome.name}", fontsize=11)
    figure.tight_layout()
    path = directory / f"{outcome.name}.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
