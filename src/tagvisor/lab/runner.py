"""Running experiments: one after another, each timed, with progress reported."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tagvisor.lab.experiment import Experiment, Outcome, ProgressFn, Scale

#: Makes the progress callback for one experiment (a progress bar, or nothing).
ProgressFactory = Callable[[Experiment], ProgressFn]


def _silent(experiment: Experiment) -> ProgressFn:
    return lambda done: None


def run_all(
    experiments: Sequence[Experiment],
    scale: Scale,
    progress: ProgressFactory = _silent,
) -> list[Outcome]:
    """Run each experiment at ``scale``; each outcome records its wall time."""
    outcomes = []
    for experiment in experiments:
        started = time.perf_counter()
        outcome = experiment.run(scale, progress(experiment))
        outcome.seconds = time.perf_counter() - started
        outcomes.append(outcome)
    return outcomes
