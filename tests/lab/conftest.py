"""The quick lab, run once for the whole session: each test checks one invariant."""

from __future__ import annotations

import pytest

from tagvisor.lab import EXPERIMENTS, Outcome, Scale
from tagvisor.lab.runner import run_all


@pytest.fixture(scope="session")
def outcomes() -> dict[str, Outcome]:
    return {outcome.name: outcome for outcome in run_all(EXPERIMENTS, Scale(quick=True))}
