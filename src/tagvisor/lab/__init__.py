"""The ABI lab: the seed thread's open questions, answered with measurements.

Each experiment (:mod:`tagvisor.lab.experiment`) drives the model - ModelKvm, the
machine builder, Python-level guest workloads, migration over loopback TCP - and comes
back with figures, a table, charts and a conclusion computed from those figures.
:mod:`tagvisor.lab.registry` lists them; :mod:`tagvisor.lab.runner` runs them.
"""

from tagvisor.lab.experiment import Chart, Experiment, Outcome, Scale, Table
from tagvisor.lab.registry import EXPERIMENTS, experiment_named

__all__ = ["EXPERIMENTS", "Chart", "Experiment", "Outcome", "Scale", "Table", "experiment_named"]
