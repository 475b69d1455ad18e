"""The `tagvisor lab` command."""

import json
from pathlib import Path

import pytest

from tagvisor.cli.main import main
from tagvisor.lab import EXPERIMENTS


def test_lab_list_prints_one_experiment_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: `tagvisor lab list` names the six experiments, one a line, in order."""
    assert main(["lab", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [e.name for e in EXPERIMENTS]
    assert len(lines) == 6


def test_an_unknown_experiment_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Scenario: `tagvisor lab run nosuch`: no traceback, one line naming the known ones."""
    assert main(["lab", "run", "nosuch", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "probing" in err[0]


def test_lab_run_json_gives_figures_conclusion_and_a_png(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Scenario: `tagvisor lab run probing --quick --json --out DIR`: the JSON carries
    the experiment's figures and conclusion, and DIR holds its chart."""
    assert main(["lab", "run", "probing", "--quick", "--json", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    (experiment,) = report["experiments"]
    assert experiment["name"] == "probing"
    assert experiment["conclusion"]
    assert experiment["figures"]["results"]
    assert Path(experiment["plot"]).stat().st_size > 1000
