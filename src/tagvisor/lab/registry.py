"""Every experiment of the lab, in the order the seed thread asks its questions."""

from __future__ import annotations

from tagvisor.lab import (
    q1_probing,
    q2_per_vcpu,
    q3_promotion,
    q4_tag_access,
    q5_consistency,
    q6_later_kernels,
)
from tagvisor.lab.experiment import Experiment

#: In the order they run: questions 1 to 6.
EXPERIMENTS: list[Experiment] = [
    q1_probing.EXPERIMENT,
    q2_per_vcpu.EXPERIMENT,
    q3_promotion.EXPERIMENT,
    q4_tag_access.EXPERIMENT,
    q5_consistency.EXPERIMENT,
    q6_later_kernels.EXPERIMENT,
]


def experiment_named(name: str) -> Experiment:
    """The experiment called ``name``; ValueError lists the known ones."""
    for experiment in EXPERIMENTS:
        if experiment.name == name:
            return experiment
    known = ", ".join(e.name for e in EXPERIMENTS)
    raise ValueError(f"no experiment {name!r}; known: {known}")
