"""A real machine under a Controller, served on a real Unix socket in tmp_path."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tagvisor.api import ApiClient, ApiServer, Controller
from tagvisor.kvm.model import ModelKvm
from tagvisor.vmm import Machine, MachineBuilder
from tests.migration.churner import churner

RAM = 32 << 20
#: The longest any test waits for something to happen (seconds).
BOUND = 30.0


def churning_machine() -> Machine:
    """A paused machine whose guest retags and rewrites its memory forever."""
    return (
        MachineBuilder(ModelKvm(160 << 20)).memory(RAM).mte().python_guest(churner(10**9)).build()
    )


@dataclass
class Served:
    """A running machine, its controller, and the socket serving it."""

    machine: Machine
    controller: Controller
    path: Path

    def client(self) -> ApiClient:
        return ApiClient(self.path, timeout=BOUND)

    def raw(self) -> socket.socket:
        """A connection with the greeting already read."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(BOUND)
        sock.connect(str(self.path))
        read_line(sock)
        return sock


def read_line(sock: socket.socket) -> dict[str, Any]:
    """The next JSON line from ``sock``, read a byte at a time so that a reply that
    arrives in the same packet as the next one is left for the next call."""
    data = bytearray()
    while not data.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"closed after {bytes(data)!r}")
        data += byte
    value: dict[str, Any] = json.loads(data)
    return value


def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    deadline = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {BOUND} s: {what}")
        time.sleep(0.01)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    machine = churning_machine()
    controller = Controller(machine)
    path = tmp_path / "vm.sock"
    with ApiServer(path, controller):
        controller.start()
        yield Served(machine, controller, path)
        if controller.ended is None:
            controller.stop()
