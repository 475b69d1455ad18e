"""The scripts in examples/ run and do what their docstrings say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
#: The longest an example may take here (seconds).
BOUND = 120.0

SAYS = {
    "run_guest.py": "use-after-free caught: ESR 0x96000011",
    "snapshot_restore.py": "restored without its tags: exit status 255",
    "migrate_in_one_script.py": "memory and tags equal",
    "read_snapshot_tags.py": "pages hold non-zero tags",
}


def test_every_example_is_tested() -> None:
    """Scenario: a new script in examples/ has to be added here to be run."""
    assert {path.name for path in EXAMPLES.glob("*.py")} == SAYS.keys()


@pytest.mark.parametrize("name", sorted(SAYS))
def test_the_example_runs_and_says_what_it_shows(name: str) -> None:
    """Scenario: `python examples/NAME` with the package on the path: exit 0, and the
    line the example exists to show."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=BOUND,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert SAYS[name] in done.stdout
