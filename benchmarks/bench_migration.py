"""Live migration of a 4 GiB MTE guest, against raw TCP loopback measured in the same run.

The guest has 4 GiB of RAM, 1 GiB of it filled with random data and random non-zero
tags by a Python-level workload. It is migrated to a destination in another process
(two tagvisor processes, as in production) over loopback:

* idle: the guest is paused before migrating (pure transfer);
* churning: the guest keeps retagging and rewriting 64 KiB spans during pre-copy
  (throttled by auto-converge if it dirties pages faster than they go: the share of
  time it kept running is printed).

Printed: throughput (wire bytes / total time) as a ratio of raw TCP loopback bandwidth
between two processes measured first in the same run, tag bytes as a share of data
bytes, and downtime. Targets (issue 5): >= 0.5 of loopback, tags <= 1/32, downtime under
50 ms. QEMU's own migration of the same set-up is benchmarks/bench_migration_qemu.py.

    python benchmarks/bench_migration.py [--guest-gib 4] [--fill-gib 1] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import subprocess
import sys
import time
from collections.abc import Generator
from typing import Any

from tagvisor.kvm.api import VcpuExit
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GuestContext
from tagvisor.kvm.model.workloads import churn, fill_tagged
from tagvisor.migration import TcpAddress, migrate
from tagvisor.vmm import MachineBuilder
from tagvisor.vmm.builder import RAM_BASE

GiB = 1 << 30
RECEIVER = """
import socket, sys
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(1)
print(sock.getsockname()[1], flush=True)
conn, _ = sock.accept(); buf = bytearray(1 << 22); view = memoryview(buf); total = 0
while (n := conn.recv_into(view)): total += n
print(total, flush=True)
"""
DESTINATION = """
import json, sys
from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import Listener, TcpAddress, incoming
listener = Listener(TcpAddress("127.0.0.1", 0))
print(listener.address.port, flush=True)
kvm = ModelKvm(host_memory=int(sys.argv[1]))
machine, report = incoming(kvm, listener, timeout=120)
print(json.dumps({"pages": report.pages_received, "bytes": report.bytes_received}), flush=True)
"""


def loopback_bandwidth(nbytes: int) -> float:
    """Bytes/s from this process to another over TCP loopback."""
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    port = int(receiver.stdout.readline())
    payload = bytes(4 << 20)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.perf_counter()
        for _ in range(nbytes // len(payload)):
            sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = int(receiver.stdout.readline())
        seconds = time.perf_counter() - start
    receiver.wait()
    return received / seconds


def guest(guest_bytes: int, fill: int, churning: bool) -> Any:
    kvm = ModelKvm(host_memory=guest_bytes + (512 << 20))
    filler = fill_tagged(RAM_BASE, fill, seed=1)

    def program(ctx: GuestContext) -> Generator[VcpuExit, bytes | None, None]:
        yield from filler(ctx)
        if churning:
            yield from churn(RAM_BASE, fill, rounds=0, seed=2)(ctx)

    machine = MachineBuilder(kvm).memory(guest_bytes).python_guest(program).build()
    fill_exits = -(-fill // (4096 * 4096))
    machine.run(max_exits=fill_exits)
    return machine


def one_migration(guest_bytes: int, fill: int, churning: bool) -> dict[str, Any]:
    machine = guest(guest_bytes, fill, churning)
    destination = subprocess.Popen(
        [sys.executable, "-c", DESTINATION, str(guest_bytes + (512 << 20))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert destination.stdout is not None
    port = int(destination.stdout.readline())
    report = migrate(
        machine, TcpAddress("127.0.0.1", port), run_guest=churning, max_iterations=6, stop_pages=256
    )
    received = json.loads(destination.stdout.readline())
    destination.wait()
    result = report.as_dict()
    result["destination_pages"] = received["pages"]
    del machine
    gc.collect()  # give this guest's memory back before the next scenario builds one
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guest-gib", type=float, default=4.0)
    parser.add_argument("--fill-gib", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    guest_bytes, fill = int(args.guest_gib * GiB), int(args.fill_gib * GiB)

    raw = loopback_bandwidth(max(fill, 256 << 20))
    results: dict[str, Any] = {"loopback_bytes_per_second": raw}
    for name, churning in (("idle", False), ("churning", True)):
        run = one_migration(guest_bytes, fill, churning)
        run["throughput_ratio_vs_loopback"] = run["throughput_bytes_per_second"] / raw
        results[name] = run
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"raw TCP loopback: {raw / 1e9:.2f} GB/s")
    for name in ("idle", "churning"):
        run = results[name]
        print(
            f"{name:<9} {run['total_seconds']:6.2f} s  "
            f"{run['throughput_bytes_per_second'] / 1e9:5.2f}"
            f" GB/s = {run['throughput_ratio_vs_loopback']:.2f} x loopback  "
            f"iterations {run['iterations']}  pages {run['pages_sent']}  "
            f"tags/data {run['tag_share']:.4f}  downtime {run['downtime_seconds'] * 1e3:.1f} ms"
            + (f"  guest ran {run['guest_share']:.0%}" if run["guest_share"] < 1 else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
