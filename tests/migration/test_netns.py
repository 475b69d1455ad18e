"""Migration between two hosts with their own addresses: two network namespaces joined
by a veth pair, made by the test and removed after it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUBNET = "10.231.{}.{}"

DESTINATION = """
import json
from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import Listener, TcpAddress, incoming
from tagvisor.snapshot.guestpages import memory_digest
listener = Listener(TcpAddress({host!r}, 0))
print(listener.address.port, flush=True)
machine, report = incoming(ModelKvm(160 << 20), listener, timeout=60)
print(json.dumps({{"digest": memory_digest(machine), "pages": report.pages_received}}), flush=True)
"""

SOURCE = """
import json, sys
from tagvisor.migration import TcpAddress, migrate
from tagvisor.snapshot.guestpages import memory_digest
from tests.migration.conftest import source_machine
machine = source_machine()
report = migrate(machine, TcpAddress({host!r}, int(sys.argv[1])), max_iterations=4)
print(json.dumps({{"digest": memory_digest(machine), "pages": report.pages_sent,
                  "iterations": report.iterations}}), flush=True)
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str, str, str]]:
    """(namespace A, address A, namespace B, address B), torn down afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (CI runs as root)")
    tag = secrets.token_hex(3)
    ns_a, ns_b = f"tv-a-{tag}", f"tv-b-{tag}"
    veth_a, veth_b = f"tva{tag}", f"tvb{tag}"
    net = int(tag[:2], 16)
    addr_a, addr_b = SUBNET.format(net, 1), SUBNET.format(net, 2)
    ip("netns", "add", ns_a)
    ip("netns", "add", ns_b)
    try:
        ip("link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        for ns, veth, addr in ((ns_a, veth_a, addr_a), (ns_b, veth_b, addr_b)):
            ip("link", "set", veth, "netns", ns)
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", veth)
            ip("-n", ns, "link", "set", veth, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield ns_a, addr_a, ns_b, addr_b
    finally:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def in_namespace(ns: str, script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'src'}"}
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


def test_migration_between_two_network_namespaces(two_hosts: tuple[str, str, str, str]) -> None:
    """Scenario: the destination listens on its namespace's own address; the source, in
    the other namespace, migrates a churning MTE guest to it over the veth link.

    Both processes report the memory-and-tags digest at the end: they are equal."""
    ns_a, _addr_a, ns_b, addr_b = two_hosts
    destination = in_namespace(ns_b, DESTINATION.format(host=addr_b))
    assert destination.stdout is not None
    port = destination.stdout.readline().strip()
    assert port.isdigit(), destination.stderr.read() if destination.stderr else ""
    source = in_namespace(ns_a, SOURCE.format(host=addr_b), port)
    source_out, source_err = source.communicate(timeout=120)
    dest_out, dest_err = destination.communicate(timeout=120)
    assert source.returncode == 0, source_err
    assert destination.returncode == 0, dest_err
    sent = json.loads(source_out.strip().splitlines()[-1])
    received = json.loads(dest_out.strip().splitlines()[-1])
    assert sent["digest"] == received["digest"]
    assert received["pages"] == sent["pages"]
