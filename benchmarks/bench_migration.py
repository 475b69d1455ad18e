"""Live migration of a 4 GiB MTE guest, tagvisor and QEMU side by side, against raw TCP
loopback measured in the same run.

The guest has 4 GiB of RAM, 1 GiB of it filled with random data and random non-zero
tags. It is migrated over loopback to a destination in another process, by tagvisor
(two tagvisor processes, as in production; the guest is a Python-level workload) and by
QEMU (two ``qemu-system-aarch64 -M virt,mte=on -accel tcg`` processes running the
``fill`` guest, through ``bench_migration_qemu.qemu_migration``), in two cases:

* idle: the guest is paused before migrating (pure transfer), on both;
* churning: the guest keeps retagging and rewriting random 64 KiB spans of the filled
  GiB during pre-copy, paced at ``--churn-rate`` spans per second on both (default
  1000: 64 MiB/s rewritten; ``max``: as fast as each guest can). tagvisor throttles a
  guest that dirties pages faster than they go (auto-converge: the share of time it
  kept running is printed); QEMU runs with its defaults (no auto-converge).

Each repetition measures raw TCP loopback first (this process to another, into a
reused buffer), then runs each case on tagvisor and on QEMU, one after the other, so
that both see the machine in the same state. Printed per run and as ranges over the
runs: throughput (wire bytes / total time) as a ratio of that loopback figure,
downtime, total time, and tag bytes as a share of data bytes. Targets (issue 5):
tagvisor at least 0.5 of loopback, tags at most 1/32, downtime under 50 ms and no
worse than QEMU's.

Downtime: tagvisor's runs from the pause until the destination confirmed it has
everything; QEMU's until its source has sent the last byte (it does not wait for the
destination). Both are printed for tagvisor, the second as "sent"; the comparison with
QEMU uses the second, the 50 ms target the first.

Both destinations are up before the migration starts, as QEMU's -incoming is, and
by default (--dest-memory prealloc) have faulted in the guest's memory first: tagvisor
with ``ModelKvm(prealloc=...)`` (``tagvisor incoming --prealloc``), QEMU with
-mem-prealloc. With --dest-memory lazy they fault it in as the pages arrive; for
context, loopback into memory the receiver never touched before is measured too (on
this VM the first touch of a page costs more than the rest of a migration together,
docs/benchmarks.md).

    python benchmarks/bench_migration.py [--guest-gib 4] [--fill-gib 1] \\
        [--churn-rate 1000|max] [--dest-memory prealloc|lazy] [--repeat 3] \\
        [--warmup 1] [--no-qemu] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any, Final

from bench_migration_qemu import CHURN_UNPACED, qemu_migration
from qemu_bench import QemuBenchError, guest_image, qemu_binary, qemu_version

from tagvisor.kvm.api import VcpuExit
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GuestContext, GuestProgram
from tagvisor.kvm.model.workloads import churn, fill_tagged
from tagvisor.kvm.uapi import ExitReason
from tagvisor.migration import TcpAddress, migrate
from tagvisor.vmm import Machine, MachineBuilder
from tagvisor.vmm.builder import RAM_BASE

GiB: Final = 1 << 30
CASES: Final = ("idle", "churning")
#: Issue 5's targets.
TARGET_RATIO: Final = 0.5
TARGET_TAG_SHARE: Final = 1 / 32
TARGET_DOWNTIME: Final = 0.050
#: --churn-rate for "as fast as each guest can".
UNPACED: Final = "max"
#: --dest-memory: faulted in before the migration, or as the pages arrive.
DEST_MEMORY: Final = ("prealloc", "lazy")
#: The longest a paced guest sleeps before it lets the VMM in (seconds).
PACING_SLICE: Final = 0.001

RECEIVER = """
import mmap, socket, sys
fresh = sys.argv[1] == "fresh"
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(1)
print(sock.getsockname()[1], flush=True)
conn, _ = sock.accept(); total = 0
if fresh:  # every byte into memory this process never touched, as a destination does
    size = int(sys.argv[2]); view = memoryview(mmap.mmap(-1, size))
    while total < size and (n := conn.recv_into(view[total:], min(1 << 22, size - total))):
        total += n
else:
    view = memoryview(bytearray(1 << 22))
    while (n := conn.recv_into(view)): total += n
print(total, flush=True)
"""
#: The destination says where it listens once it is ready to take a guest, as QEMU's
#: -incoming is ready before a migration starts (with --dest-memory prealloc, after
#: faulting in memory for the guest, as ``tagvisor incoming --prealloc``).
DESTINATION = """
import json, resource, sys
from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import Listener, TcpAddress, incoming
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
kvm = ModelKvm(host_memory=int(sys.argv[1]), prealloc=int(sys.argv[2]))
listener = Listener(TcpAddress("127.0.0.1", 0))
print(listener.address.port, flush=True)
before = cpu()
machine, report = incoming(kvm, listener, timeout=120)
print(json.dumps({"pages": report.pages_received, "bytes": report.bytes_received,
                  "cpu_seconds": cpu() - before}), flush=True)
"""


def loopback_bandwidth(nbytes: int, *, fresh: bool = False) -> float:
    """Bytes/s from this process to another over TCP loopback; with ``fresh``, into
    memory the receiver never touched before."""
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, "fresh" if fresh else "reused", str(nbytes)],
        stdout=subprocess.PIPE,
        text=True,
    )
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


def paced(program: GuestProgram, rate: int) -> GuestProgram:
    """``program`` (one exit per span) kept to ``rate`` spans per second from its
    start, as the fill guest paces itself with CNTVCT_EL0 (behind, it catches up).

    The guest sleeps rather than spins in between (a Python guest that spun would hold
    the interpreter lock the VMM's own threads need), a slice at a time with an INTR
    exit after each, as a kick ends a real VCPU's wait: a pause never waits for a
    long sleep."""

    def run(ctx: GuestContext) -> Generator[VcpuExit, bytes | None, None]:
        inner = program(ctx)
        start, done, reply = time.perf_counter(), 0, None
        while True:
            while (delay := start + done / rate - time.perf_counter()) > 0:
                time.sleep(min(delay, PACING_SLICE))
                if delay > PACING_SLICE:
                    yield VcpuExit(ExitReason.INTR)
            try:
                request = inner.send(reply)
            except StopIteration:
                return
            done += 1
            reply = yield request

    return run


def guest(guest_bytes: int, fill: int, churn_rate: int | None) -> Machine:
    """The filled guest, paused after the fill; ``churn_rate`` (spans/s, None flat
    out) makes it churn once it runs again, else it has nothing left to do."""
    kvm = ModelKvm(host_memory=guest_bytes + (512 << 20))
    filler = fill_tagged(RAM_BASE, fill, seed=1)
    churner = churn(RAM_BASE, fill, rounds=0, seed=2)
    churning = churn_rate != 0

    def program(ctx: GuestContext) -> Generator[VcpuExit, bytes | None, None]:
        yield from filler(ctx)
        if churning:
            yield from (churner if churn_rate is None else paced(churner, churn_rate))(ctx)

    machine = MachineBuilder(kvm).memory(guest_bytes).python_guest(program).build()
    fill_exits = -(-fill // (4096 * 4096))
    machine.run(max_exits=fill_exits)
    return machine


def process_cpu() -> float:
    """User and system CPU seconds of this process so far, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_migration(
    guest_bytes: int, fill: int, churn_rate: int | None, *, prealloc: bool
) -> dict[str, Any]:
    """One tagvisor migration; ``churn_rate`` 0 for the idle (paused) guest;
    ``prealloc``: the destination faults in the guest's memory before it listens."""
    machine = guest(guest_bytes, fill, churn_rate)
    destination = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DESTINATION,
            str(guest_bytes + (512 << 20)),
            str(guest_bytes if prealloc else 0),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert destination.stdout is not None
    port = int(destination.stdout.readline())
    churning = churn_rate != 0
    before = process_cpu()
    report = migrate(
        machine, TcpAddress("127.0.0.1", port), run_guest=churning, max_iterations=6, stop_pages=256
    )
    source_cpu = process_cpu() - before
    received = json.loads(destination.stdout.readline())
    destination.wait()
    result = report.as_dict()
    result["destination_pages"] = received["pages"]
    # CPU time of both processes while migrating (the source's includes a churning
    # guest's): on two cores, total time is at least half their sum.
    result["source_cpu_seconds"] = source_cpu
    result["destination_cpu_seconds"] = received["cpu_seconds"]
    del machine
    gc.collect()  # give this guest's memory back before the next scenario builds one
    return result


class QemuMissing(RuntimeError):
    """QEMU or the fill guest is not there: what to do about it is in the message."""


def find_qemu() -> Path:
    """The QEMU binary, checked up front (with the fill guest) so that a missing QEMU
    fails before minutes of measuring, saying what to do."""
    try:
        binary = qemu_binary()
        if not binary.is_file():
            raise QemuBenchError(f"{binary} does not exist")
        qemu_version(binary)
        guest_image("fill")
    except (QemuBenchError, OSError, subprocess.SubprocessError) as error:
        raise QemuMissing(
            f"QEMU's half of the benchmark cannot run: {error}\n"
            "Install QEMU with scripts/fetch-qemu (it goes to .cache/qemu), point "
            "TAGVISOR_QEMU_SYSTEM at a qemu-system-aarch64 of version 8 or later, or run "
            "with --no-qemu to measure tagvisor alone."
        ) from error
    return binary


class Sides:
    """Runs a case on tagvisor and, unless ``binary`` is None, on QEMU."""

    def __init__(
        self,
        guest_bytes: int,
        fill: int,
        churn_rate: int | None,
        binary: Path | None,
        *,
        prealloc: bool,
    ) -> None:
        self.guest_bytes = guest_bytes
        self.fill = fill
        self.churn_rate = churn_rate
        self.binary = binary
        self.prealloc = prealloc

    @property
    def names(self) -> tuple[str, ...]:
        return ("tagvisor",) if self.binary is None else ("tagvisor", "qemu")

    def run(self, side: str, case: str) -> dict[str, Any]:
        churning = case == "churning"
        if side == "tagvisor":
            rate = self.churn_rate if churning else 0
            return one_migration(self.guest_bytes, self.fill, rate, prealloc=self.prealloc)
        assert self.binary is not None
        rate = CHURN_UNPACED if self.churn_rate is None else self.churn_rate
        # Paused when idle, as tagvisor's idle guest is.
        result = qemu_migration(
            self.guest_bytes,
            self.fill,
            churning,
            churn_rate=rate,
            paused=True,
            dest_prealloc=self.prealloc,
            binary=self.binary,
        )
        # QEMU's downtime ends when its source has sent the last byte (it does not wait
        # for the destination): tagvisor's send_downtime_seconds.
        result["send_downtime_seconds"] = result["downtime_seconds"]
        return result


def churn_rate_arg(text: str) -> int | None:
    if text == UNPACED:
        return None
    rate = int(text)
    if rate <= 0:
        raise argparse.ArgumentTypeError("the churn rate is a positive number of spans/s or max")
    return rate


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min": min(values),
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "max": max(values),
    }


def summarise(runs: list[dict[str, Any]], qemu: bool) -> dict[str, Any]:
    """Ranges over the repetitions, per side and case, and the targets."""
    summary: dict[str, Any] = {
        "loopback_bytes_per_second": spread([r["loopback_bytes_per_second"] for r in runs]),
        "loopback_fresh_bytes_per_second": spread(
            [r["loopback_fresh_bytes_per_second"] for r in runs]
        ),
    }
    for side in ("tagvisor", "qemu") if qemu else ("tagvisor",):
        summary[side] = {
            case: {
                key: spread([r[side][case][key] for r in runs])
                for key in (
                    "throughput_ratio_vs_loopback",
                    "throughput_bytes_per_second",
                    "downtime_seconds",
                    "send_downtime_seconds",
                    "total_seconds",
                    "tag_share",
                )
            }
            for case in CASES
        }
    ours = summary["tagvisor"]
    targets: dict[str, bool] = {}
    for case in CASES:
        targets[f"{case}_throughput"] = (
            ours[case]["throughput_ratio_vs_loopback"]["min"] >= TARGET_RATIO
        )
        targets[f"{case}_tag_share"] = ours[case]["tag_share"]["max"] <= TARGET_TAG_SHARE
        targets[f"{case}_downtime"] = ours[case]["downtime_seconds"]["max"] < TARGET_DOWNTIME
        # Downtime as QEMU counts it: until the source has sent everything. QEMU's is
        # the difference of two readings of a millisecond clock (migration/migration.c,
        # qemu_clock_get_ms(QEMU_CLOCK_REALTIME) at the stop and the end), so 0.4 ms
        # reads 0 or 1 ms: the median of such readings is biased (0 here), their mean
        # is not. Means on both sides, then.
        if qemu:
            targets[f"{case}_downtime_vs_qemu"] = (
                ours[case]["send_downtime_seconds"]["mean"]
                <= summary["qemu"][case]["send_downtime_seconds"]["mean"]
            )
    summary["targets_met"] = targets
    return summary


def run_line(side: str, case: str, run: dict[str, Any]) -> str:
    line = (
        f"  {side:<8} {case:<9} {run['total_seconds']:6.2f} s  "
        f"{run['throughput_bytes_per_second'] / 1e9:5.2f} GB/s = "
        f"{run['throughput_ratio_vs_loopback']:.2f} x loopback  "
        f"downtime {run['downtime_seconds'] * 1e3:5.1f} ms "
        f"(sent {run['send_downtime_seconds'] * 1e3:4.1f})  "
        f"passes {run['iterations']}  {run['wire_bytes'] / GiB:.2f} GiB  "
        f"tags/data {run['tag_share']:.4f}"
    )
    if "source_cpu_seconds" in run:
        line += f"  cpu {run['source_cpu_seconds']:.2f}+{run['destination_cpu_seconds']:.2f} s"
    if run.get("guest_share", 1.0) < 1.0:
        line += f"  guest ran {run['guest_share']:.0%}"
    if run.get("status", "completed") != "completed":
        line += f"  ({run['status']})"
    return line


def span(values: dict[str, float], scale: float = 1.0, digits: int = 2) -> str:
    """A range as ``low-high`` (one figure when they print the same)."""
    low, high = (f"{values[key] * scale:.{digits}f}" for key in ("min", "max"))
    return low if low == high else f"{low}-{high}"


def print_summary(summary: dict[str, Any], repeat: int, qemu: bool) -> None:
    print(
        f"\nover {repeat} run(s): loopback {span(summary['loopback_bytes_per_second'], 1e-9)} "
        f"GB/s (into fresh memory {span(summary['loopback_fresh_bytes_per_second'], 1e-9)} "
        "GB/s)"
    )
    print(
        f"{'':19} {'x loopback':>11} {'GB/s':>11} {'downtime ms':>12} {'(sent) ms':>11} "
        f"{'total s':>11} {'tags/data':>10}"
    )
    for case in CASES:
        for side in ("tagvisor", "qemu") if qemu else ("tagvisor",):
            s = summary[side][case]
            print(
                f"{side:<10}{case:<9} {span(s['throughput_ratio_vs_loopback']):>11} "
                f"{span(s['throughput_bytes_per_second'], 1e-9):>11} "
                f"{span(s['downtime_seconds'], 1e3, 1):>12} "
                f"{span(s['send_downtime_seconds'], 1e3, 1):>11} {span(s['total_seconds']):>11} "
                f"{span(s['tag_share'], 1, 4):>10}"
            )
    if qemu:  # what the downtime target compares (see summarise)
        means = "  ".join(
            f"{case} {summary['tagvisor'][case]['send_downtime_seconds']['mean'] * 1e3:.2f} "
            f"against {summary['qemu'][case]['send_downtime_seconds']['mean'] * 1e3:.2f}"
            for case in CASES
        )
        print(f"sent downtime, mean ms, tagvisor against QEMU: {means}")
    met = summary["targets_met"]
    print(
        "targets: " + "  ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in met.items())
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guest-gib", type=float, default=4.0)
    parser.add_argument("--fill-gib", type=float, default=1.0)
    parser.add_argument(
        "--churn-rate",
        type=churn_rate_arg,
        default=1000,
        help="64 KiB spans per second while churning, on both sides (default 1000); "
        "max: as fast as each guest can",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of every case (ranges)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="idle runs of each side to discard first (the first run after a while pays "
        "the host's first touch of the guests' memory)",
    )
    parser.add_argument(
        "--dest-memory",
        choices=DEST_MEMORY,
        default="prealloc",
        help="prealloc: both destinations fault in the guest's memory before the migration "
        "starts (tagvisor incoming --prealloc, QEMU -mem-prealloc); lazy: on first touch, "
        "while the pages arrive (default prealloc)",
    )
    parser.add_argument("--no-qemu", action="store_true", help="measure tagvisor alone")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    guest_bytes, fill = int(args.guest_gib * GiB), int(args.fill_gib * GiB)
    rate: int | None = args.churn_rate
    try:
        binary = None if args.no_qemu else find_qemu()
    except QemuMissing as error:
        print(error, file=sys.stderr)
        return 2
    sides = Sides(guest_bytes, fill, rate, binary, prealloc=args.dest_memory == "prealloc")
    use_qemu = binary is not None

    for _ in range(args.warmup):
        for side in sides.names:
            sides.run(side, "idle")

    runs: list[dict[str, Any]] = []
    for index in range(args.repeat):
        raw = loopback_bandwidth(max(fill, 256 << 20))
        fresh = loopback_bandwidth(max(fill, 256 << 20), fresh=True)
        run: dict[str, Any] = {
            "loopback_bytes_per_second": raw,
            "loopback_fresh_bytes_per_second": fresh,
            **{side: {} for side in sides.names},
        }
        if not args.json:
            print(
                f"run {index + 1}: loopback {raw / 1e9:.2f} GB/s, into fresh memory "
                f"{fresh / 1e9:.2f} GB/s",
                flush=True,
            )
        for case in CASES:
            for side in sides.names:
                result = sides.run(side, case)
                result["throughput_ratio_vs_loopback"] = result["throughput_bytes_per_second"] / raw
                run[side][case] = result
                if not args.json:
                    print(run_line(side, case, result), flush=True)
        runs.append(run)

    summary = summarise(runs, use_qemu)
    settings = {
        "guest_bytes": guest_bytes,
        "fill_bytes": fill,
        "churn_rate_spans_per_second": UNPACED if rate is None else rate,
        "dest_memory": args.dest_memory,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "qemu": use_qemu,
    }
    if args.json:
        print(json.dumps({**settings, "summary": summary, "runs": runs}, indent=2, default=str))
    else:
        print_summary(summary, args.repeat, use_qemu)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
