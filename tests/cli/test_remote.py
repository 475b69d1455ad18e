"""`tagvisor run --api-socket` driven by `tagvisor remote`, each in its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The longest any test waits for a process (seconds).
BOUND = 60.0
CLI = [sys.executable, "-m", "tagvisor.cli.main"]


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def remote(socket: Path, *action: str) -> subprocess.CompletedProcess[str]:
    """`tagvisor remote --api-socket SOCKET ACTION... --json`."""
    return subprocess.run(
        [*CLI, "remote", "--api-socket", str(socket), *action, "--json"],
        capture_output=True,
        text=True,
        timeout=BOUND,
        env=_env(),
    )


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`tagvisor run churn --api-socket` in a process, its socket ready."""
    socket = tmp_path / "vm.sock"
    process = subprocess.Popen(
        [*CLI, "run", "churn", "--api-socket", str(socket), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.monotonic() + BOUND
    while not socket.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the socket never appeared"
        time.sleep(0.05)
    yield process, socket
    if process.poll() is None:
        process.kill()
        process.communicate(timeout=BOUND)


def test_remote_drives_a_running_vm_through_pause_snapshot_resume_and_stop(
    vm: tuple[subprocess.Popen[str], Path], tmp_path: Path
) -> None:
    """Scenario: a user starts `tagvisor run churn --api-socket S`, then from another
    shell: status (running), pause, snapshot FILE (the guest stays paused, the file
    exists), resume (running), stop: the VM's process exits 0 with end "stopped"."""
    process, socket = vm
    assert json.loads(remote(socket, "status").stdout)["state"] == "running"
    assert json.loads(remote(socket, "pause").stdout)["state"] == "paused"
    snap = remote(socket, "snapshot", str(tmp_path / "vm.snap"))
    assert snap.returncode == 0, snap.stderr
    assert json.loads(snap.stdout)["state"] == "paused"
    assert (tmp_path / "vm.snap").stat().st_size == json.loads(snap.stdout)["file_bytes"]
    assert json.loads(remote(socket, "resume").stdout)["state"] == "running"
    assert json.loads(remote(socket, "stop").stdout)["state"] == "stopped"
    out, _ = process.communicate(timeout=BOUND)
    assert process.returncode == 0
    assert json.loads(out)["end"] == "stopped"
    assert not socket.exists()


def test_a_failed_migration_is_an_error_and_the_vm_keeps_running(
    vm: tuple[subprocess.Popen[str], Path],
) -> None:
    """Scenario: `remote migrate --to` a port nobody listens on: exit 1 with the reason
    as JSON; the VM's process is still there and its guest still running."""
    process, socket = vm
    failed = remote(socket, "migrate", "--to", "tcp:127.0.0.1:1")
    assert failed.returncode == 1
    error = json.loads(failed.stdout)["error"]
    assert error["kind"] == "migration-failed"
    assert process.poll() is None
    assert json.loads(remote(socket, "status").stdout)["state"] == "running"


def test_remote_without_a_vm_says_how_to_start_one(tmp_path: Path) -> None:
    """Scenario: `remote status` on a socket path where nothing runs: exit 69 and a
    line naming the command that starts a VM with that socket."""
    result = subprocess.run(
        [*CLI, "remote", "--api-socket", str(tmp_path / "none.sock"), "status"],
        capture_output=True,
        text=True,
        timeout=BOUND,
        env=_env(),
    )
    assert result.returncode == 69
    assert "--api-socket" in result.stderr
    assert "Traceback" not in result.stderr


def test_ctrl_c_on_a_served_vm_ends_it_and_removes_its_socket(
    vm: tuple[subprocess.Popen[str], Path],
) -> None:
    """Scenario: the user presses Ctrl-C in the shell of `run --api-socket ... --json`:
    exit 130, the error as JSON on stdout, no traceback, and the socket file is gone
    (the path can be used again)."""
    process, socket = vm
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=BOUND)
    assert process.returncode == 130
    assert json.loads(out)["error"]["kind"] == "interrupted"
    assert "Traceback" not in err
    assert not socket.exists()


def test_ctrl_c_just_as_the_socket_appears_leaves_no_socket_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: Ctrl-C arrives in the instant between the control socket's file
    appearing and the code that removes it on the way out (the race a user hits by
    pressing it as the VM starts). The interrupt still ends the command, and the file
    is gone, so the next run can use the path."""
    from tagvisor.api import ApiServer, Controller
    from tagvisor.cli.control import served

    path = tmp_path / "vm.sock"
    start = ApiServer.start

    def start_as_ctrl_c_comes(server: ApiServer) -> ApiServer:
        assert path.exists()
        os.kill(os.getpid(), signal.SIGINT)
        return start(server)

    monkeypatch.setattr(ApiServer, "start", start_as_ctrl_c_comes)
    entered = False
    with pytest.raises(KeyboardInterrupt), served(path, Controller(None, backend="model")):
        entered = True
    assert not entered
    assert not path.exists()
