"""`incoming --capture FILE` keeps the source's stream, and `inspect` reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tagvisor.cli.main import main
from tagvisor.guests.catalogue import BY_NAME
from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import TcpAddress, migrate
from tagvisor.vmm import MachineBuilder

BOUND = 120.0
RAM = 128 << 20


def test_a_captured_live_migration_is_read_back_by_inspect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: `tagvisor incoming --capture stream.bin` in its own process receives
    a churning guest from this one; `tagvisor inspect stream.bin` reads the whole
    stream: HELO, page sections with tags, END!, the pages the source sent at least
    once, and the guest's tags among them."""
    capture = tmp_path / "stream.bin"
    src = str(Path(__file__).resolve().parents[2] / "src")
    destination = subprocess.Popen(
        [sys.executable, "-m", "tagvisor.cli.main", "incoming", "--listen",
         "tcp:127.0.0.1:0", "--capture", str(capture), "--json", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": src},
    )  # fmt: skip
    assert destination.stderr is not None
    line = ""
    while "listening on" not in line:
        line = destination.stderr.readline()
        assert line, destination.communicate(timeout=BOUND)
    port = int(line.rsplit(":", 1)[-1])
    machine = (
        MachineBuilder(ModelKvm(RAM + (256 << 20), host_mte_level=3))
        .memory(RAM)
        .argument(20)
        .image(BY_NAME["churn"].image)
        .build()
    )
    machine.run(max_exits=100)
    report = migrate(machine, TcpAddress("127.0.0.1", port))
    out, err = destination.communicate(timeout=BOUND)
    assert destination.returncode == 0, err
    assert main(["inspect", str(capture), "--json"]) == 0
    census = json.loads(capsys.readouterr().out)
    assert census["kind"] == "migration stream"
    assert census["complete"]
    assert {"HELO", "PAGE", "END!"} <= census["sections"].keys()
    assert 0 < census["pages_stored"] <= report.pages_sent
    assert sum(census["tag_histogram"][1:]) > 0
    assert json.loads(out)["exit_status"] == 0
