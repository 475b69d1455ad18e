"""The control socket with a real running machine: what each command does to it."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from tagvisor.api import ApiClient, ApiError, ApiServer, ApiServerError, Controller
from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import Listener, TcpAddress, incoming
from tagvisor.snapshot import read_snapshot
from tagvisor.snapshot.guestpages import memory_digest
from tests.api.conftest import BOUND, Served, churning_machine, eventually


def test_the_socket_is_readable_and_writable_by_its_owner_only(served: Served) -> None:
    """Scenario: a machine serves its socket; the file's mode is exactly 0600."""
    mode = served.path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_a_client_is_greeted_with_the_protocol_version(served: Served) -> None:
    """Scenario: a client connects; the greeting names protocol 1 and every command."""
    with served.client() as client:
        assert client.greeting["tagvisor"]["protocol"] == 1
        assert set(client.greeting["commands"]) >= {"status", "pause", "migrate", "stop"}


def test_status_shows_the_guest_running_and_making_progress(served: Served) -> None:
    """Scenario: `status` twice on a running guest: state running, exits growing."""
    with served.client() as client:
        first = client.call("status")
        assert first["state"] == "running"
        assert first["ram_bytes"] == 32 << 20
        eventually(lambda: client.call("status")["exits"] > first["exits"], "exits grow")


def test_pause_stops_the_guest_and_resume_lets_it_run_on(served: Served) -> None:
    """Scenario: `pause`, two `status`es, `resume`: while paused not one exit happens;
    after resume the exits grow again."""
    with served.client() as client:
        paused = client.call("pause")
        assert paused["state"] == "paused"
        assert client.call("status")["exits"] == paused["exits"]
        assert served.machine.exits == paused["exits"]
        assert client.call("resume")["state"] == "running"
        eventually(lambda: client.call("status")["exits"] > paused["exits"], "exits grow")


def test_a_snapshot_taken_through_the_socket_restores_and_the_guest_runs_on(
    served: Served, tmp_path: Path
) -> None:
    """Scenario: `snapshot PATH` on a running guest: the file reads back with the
    digest the reply gave, and the guest is running again afterwards."""
    target = tmp_path / "vm.snap"
    with served.client() as client:
        result = client.call("snapshot", path=str(target))
        assert result["state"] == "running"
        assert result["tag_bytes"] > 0
        assert read_snapshot(target).digest == result["digest"]
        exits = client.call("status")["exits"]
        eventually(lambda: client.call("status")["exits"] > exits, "the guest runs on")
    assert not list(tmp_path.glob("*.partial"))


def test_a_snapshot_to_an_unwritable_place_fails_and_the_guest_runs_on(
    served: Served, tmp_path: Path
) -> None:
    """Scenario: `snapshot` into a directory that does not exist: a `failed` error
    naming the path; the guest still runs and no partial file is left."""
    with served.client() as client, pytest.raises(ApiError) as error:
        client.call("snapshot", path=str(tmp_path / "missing" / "vm.snap"))
    assert error.value.code == "failed"
    assert "missing" in error.value.message
    with served.client() as client:
        assert client.call("status")["state"] == "running"


def test_a_migration_through_the_socket_arrives_whole_and_ends_the_source(
    served: Served,
) -> None:
    """Scenario: a destination listens; `migrate --to` it. The reply reports the
    passes, the source's machine ends as `migrated`, and the destination's memory and
    tags equal the source's at the pause."""
    listener = Listener(TcpAddress("127.0.0.1", 0))
    arrived: dict[str, object] = {}

    def receive() -> None:
        machine, _ = incoming(ModelKvm(160 << 20), listener, timeout=BOUND)
        arrived["digest"] = memory_digest(machine)

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    with served.client() as client:
        result = client.call("migrate", to=str(listener.address))
    thread.join(BOUND)
    assert result["iterations"] >= 1
    assert served.controller.wait(BOUND) == "migrated"
    assert arrived["digest"] == memory_digest(served.machine)


def test_a_failed_migration_leaves_the_guest_running_here(served: Served) -> None:
    """Scenario: `migrate` to a port nobody listens on: a `migration-failed` error
    that says the guest is still running; status shows it running and progressing."""
    closed = Listener(TcpAddress("127.0.0.1", 0))
    address = str(closed.address)
    closed.close()
    with served.client() as client:
        with pytest.raises(ApiError) as error:
            client.call("migrate", to=address)
        assert error.value.code == "migration-failed"
        assert "still running here" in error.value.message
        before = client.call("status")
        assert before["state"] == "running"
        eventually(lambda: client.call("status")["exits"] > before["exits"], "it runs on")


def test_stop_ends_the_machine(served: Served) -> None:
    """Scenario: `stop`: the reply says stopped and the controller ends as stopped."""
    with served.client() as client:
        assert client.call("stop")["state"] == "stopped"
    assert served.controller.wait(BOUND) == "stopped"


def test_a_request_after_the_end_is_refused(served: Served) -> None:
    """Scenario: `stop`, then `resume`: a `wrong-state` error, not a restart."""
    with served.client() as client:
        client.call("stop")
        with pytest.raises(ApiError) as error:
            client.call("resume")
    assert error.value.code == "wrong-state"


def test_a_path_that_exists_is_not_taken_over(tmp_path: Path) -> None:
    """Scenario: --api-socket names an existing file: refused, the file untouched."""
    path = tmp_path / "taken"
    path.write_text("mine")
    with pytest.raises(ApiServerError, match="exists"):
        ApiServer(path, Controller(churning_machine()))
    assert path.read_text() == "mine"


def test_the_socket_file_is_removed_when_the_server_closes(tmp_path: Path) -> None:
    """Scenario: a server is closed: its socket file is gone, so the path is free."""
    path = tmp_path / "vm.sock"
    ApiServer(path, Controller(churning_machine())).start().close()
    assert not path.exists()


def test_a_waiting_destination_answers_status_and_refuses_the_rest(tmp_path: Path) -> None:
    """Scenario: a controller with no machine yet (a destination waiting): `status`
    says waiting; `pause` gets a `no-machine` error."""
    path = tmp_path / "in.sock"
    with ApiServer(path, Controller(None)), ApiClient(path, timeout=BOUND) as client:
        assert client.call("status")["state"] == "waiting"
        with pytest.raises(ApiError) as error:
            client.call("pause")
    assert error.value.code == "no-machine"
