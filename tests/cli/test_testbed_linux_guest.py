"""`tagvisor testbed --linux-guest` prints the guest's console and says how it went."""

from __future__ import annotations

from typing import Any

import pytest

from tagvisor.cli import linux_testbed
from tagvisor.cli.main import main
from tagvisor.testbed.boot import SuiteRun


def fake_run(result: Any, status: int = 0) -> SuiteRun:
    return SuiteRun(status, result, "6.1.0-57-arm64", None, "", 14.0, 3.5, 0.5)


@pytest.mark.parametrize(
    ("result", "code"),
    [
        ({"seconds_to_marker": 3.4, "exit_status": 0, "console": "=== marker\n"}, 0),
        ({"seconds_to_marker": None, "exit_status": 255, "console": "Kernel panic\n"}, 1),
    ],
)
def test_the_guest_console_comes_out_and_the_status_says_if_init_ran(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    result: dict[str, Any],
    code: int,
) -> None:
    """Scenario: the testbed run is replaced by a finished one whose guest reached its
    marker and powered off (status 0), or panicked before /init (status 1); either way
    the guest's console is on stdout and the timing line on stderr."""
    monkeypatch.setattr(linux_testbed, "boot_linux_guest", lambda *a, **k: fake_run(result))
    assert main(["testbed", "--linux-guest", "--boot-only"]) == code
    out, err = capsys.readouterr()
    assert out == result["console"]
    assert "as tagvisor's guest" in err
