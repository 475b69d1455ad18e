"""Ordinary mistakes end in one line and a documented exit status, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tagvisor.cli.errors import Exit
from tagvisor.cli.main import main

BOUND = 60.0

MISTAKES = [
    (["run", "heap", "--mem", "3M"], Exit.USAGE, "multiple of 2 MiB"),
    (["run", "heap", "--mem", "lots"], Exit.USAGE, "not a size"),
    (["run", "heap", "--vcpus", "0"], Exit.USAGE, "1 to 8 VCPUs"),
    (["run", "heap", "--vcpus", "many"], Exit.USAGE, "number of VCPUs"),
    (["run", "heap", "--arg", "x"], Exit.USAGE, "not a number"),
    (["run", "heap", "--arg", "-1"], Exit.USAGE, "2**64"),
    (["migrate", "heap", "--to", "tcp:1.2.3"], Exit.USAGE, "tcp:HOST:PORT"),
    (["migrate", "heap", "--to", "tcp:127.0.0.1:99999"], Exit.USAGE, "0 to 65535"),
    (
        ["migrate", "heap", "--to", "tcp:127.0.0.1:1", "--postcopy-bandwidth", "0"],
        Exit.USAGE,
        "positive size",
    ),
    (["incoming", "--listen", "127.0.0.1:4444"], Exit.USAGE, "tcp:127.0.0.1:4444"),
    (["snapshot", "heap", "-o", "x.snap", "--exits", "0"], Exit.USAGE, "at least 1"),
    (["run", "no-such-guest"], Exit.NO_INPUT, "shipped guest"),
    (["restore", "missing.snap"], Exit.NO_INPUT, "no snapshot file"),
    (["restore", "."], Exit.NO_INPUT, "is a directory"),
    (["snapshot", "heap", "-o", "no/such/dir/x.snap"], Exit.CANNOT_CREATE, "create it first"),
    (["snapshot", "heap", "-o", "."], Exit.CANNOT_CREATE, "is a directory"),
]


@pytest.mark.parametrize(("argv", "status", "says"), MISTAKES)
def test_a_mistake_is_one_line_with_its_exit_status(
    argv: list[str],
    status: Exit,
    says: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scenario: each mistake a new user makes: the documented exit status, and a
    last stderr line that names the problem (no traceback)."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert says in err.strip().splitlines()[-1]


@pytest.mark.parametrize(("argv", "status", "says"), MISTAKES)
def test_with_json_a_mistake_is_a_json_error_on_stdout(
    argv: list[str],
    status: Exit,
    says: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scenario: the same mistakes with --json: stdout is one JSON object whose error
    carries the message and the exit status."""
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--json"]) == status
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["exit_status"] == status
    assert says in error["message"]


def test_a_file_that_is_not_a_snapshot_is_named_in_the_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Scenario: `restore notes.txt`: exit 1, and the line names the file."""
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert main(["restore", str(notes)]) == Exit.FAILED
    assert f"{notes} is not a snapshot" in capsys.readouterr().err


def test_a_destination_that_is_not_there_leaves_the_guest_running_here(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Scenario: `migrate heap --to` a port nobody listens on: the guest is kept and
    runs on here to its end; exit 1 with the reason on one line, no traceback."""
    assert main(["migrate", "heap", "--to", "tcp:127.0.0.1:1"]) == Exit.FAILED
    err = capsys.readouterr().err
    assert "cannot connect to tcp:127.0.0.1:1" in err
    assert "runs on here" in err
    assert "Traceback" not in err


def test_ctrl_c_ends_a_running_guest_with_one_line_and_status_130(tmp_path: Path) -> None:
    """Scenario: `tagvisor run churn` (which runs forever) gets SIGINT: exit 130,
    'interrupted' on stderr, no traceback."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    process = subprocess.Popen(
        [sys.executable, "-m", "tagvisor.cli.main", "run", "churn"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": src},
    )
    assert process.stdout is not None
    deadline = time.monotonic() + BOUND
    while "churn round" not in process.stdout.readline():  # the guest is running
        assert time.monotonic() < deadline
        assert process.poll() is None
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=BOUND)
    assert process.returncode == Exit.INTERRUPTED
    assert "interrupted" in err
    assert "Traceback" not in err


def test_a_listen_address_in_use_exits_69_with_what_to_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Scenario: `incoming --listen` a port another program holds: exit 69 and one
    line that names the address and says to choose another."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["incoming", "--listen", f"tcp:127.0.0.1:{port}"]) == Exit.UNAVAILABLE
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"cannot listen on tcp:127.0.0.1:{port}" in last
    assert "choose another --listen" in last
