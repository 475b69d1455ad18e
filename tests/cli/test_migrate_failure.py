"""`tagvisor migrate` never loses the guest to a failed migration."""

from __future__ import annotations

import json
import socket

import pytest

from tagvisor.cli.main import main


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_migration_nobody_receives_leaves_the_guest_running_here(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Scenario: `tagvisor migrate heap --to` a port where nothing listens. The
    command says the migration failed and the guest is intact, runs the guest on here
    to its end (its heap checks pass), and exits 1 for the failed migration."""
    port = unused_port()
    code = main(["migrate", "heap", "--to", f"tcp:127.0.0.1:{port}", "--exits", "5", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    assert "intact and runs on here" in captured.err
    report = json.loads(captured.out)
    assert report["migrated"] is False
    assert report["state"] == "stopped"
    assert report["exit_status"] == 0


def test_on_failure_stop_stops_the_intact_guest_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Scenario: the same failed migration with --on-failure stop: the guest is not
    run on; the message says it is intact and was stopped, and --json gives the error
    as JSON on stdout."""
    port = unused_port()
    argv = ["migrate", "heap", "--to", f"tcp:127.0.0.1:{port}", "--on-failure", "stop", "--json"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "intact and was stopped" in captured.err
    assert json.loads(captured.out)["migrated"] is False
