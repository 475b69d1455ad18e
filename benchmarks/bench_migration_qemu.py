"""QEMU's own live migration of the set-up of bench_migration.py, for comparison.

Two ``qemu-system-aarch64 -M virt,mte=on -cpu max -accel tcg -m 4G`` processes on this
machine: the source runs the ``fill`` guest (guests/fill), which fills 1 GiB with random
data and random non-zero tags and then idles (WFI) or keeps churning (retagging and
rewriting random 64 KiB spans, paced at ``--churn-rate`` spans per second); the
destination waits with ``-incoming tcp:127.0.0.1:PORT``. The source is driven over QMP
on a unix socket: max-bandwidth raised (QEMU's default caps migration at 128 MiB/s),
``migrate``, then ``query-migrate`` polled until it completes.

Reported as QEMU's query-migrate reports them: total time, downtime, setup time, bytes
transferred, throughput (``ram.mbps``, and transferred / total time), dirty-sync
passes. Under TCG the allocation tags are a RAM block of their own, ``mach-virt.tag``,
ram_size / 32 bytes (128 MiB for 4 GiB), migrated like guest RAM (zero pages of it as
zero pages); its size is reported too.

    python benchmarks/bench_migration_qemu.py [--guest-gib 4] [--fill-gib 1] [--json]

``qemu_migration(guest_bytes, fill, churning)`` is one run; bench_migration.py runs it
next to tagvisor's migration of the same guest and prints both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from qemu_bench import (
    Console,
    GiB,
    MiB,
    QemuBenchError,
    Qmp,
    free_port,
    qemu_binary,
    qemu_command,
    qemu_version,
    ram_blocks,
    stop_process,
)

#: Report ids of guests/fill/main.c.
FILL_INIT: Final = 0x500
FILL_DONE: Final = 0x501
FILL_CHURN: Final = 0x502
#: Churn rate meaning "as fast as the guest can" (the fill guest's 0xFFFFFFFF).
CHURN_UNPACED: Final = 0xFFFF_FFFF
SPAN: Final = 64 << 10
#: 64 KiB spans per second while churning: 64 MiB/s of data (and its tags) rewritten.
DEFAULT_CHURN_RATE: Final = 1000
#: Bytes/s for migrate-set-parameters max-bandwidth: far above loopback, so no cap.
UNCAPPED: Final = 1 << 40
#: QEMU's default downtime-limit (ms).
DEFAULT_DOWNTIME_LIMIT_MS: Final = 300
TAG_BLOCK: Final = "mach-virt.tag"
RAM_BLOCK: Final = "mach-virt.ram"
POLL_SECONDS: Final = 0.02
FILL_TIMEOUT: Final = 240.0


def fill_argument(fill: int, churn_rate: int) -> int:
    """The fill guest's program argument: MiB to fill, and spans/s to churn (0 idle)."""
    if fill % MiB or not 0 < fill // MiB < 1 << 32:
        raise ValueError(f"fill must be a whole number of MiB, not {fill}")
    if not 0 <= churn_rate <= CHURN_UNPACED:
        raise ValueError(f"churn rate {churn_rate} out of range")
    return (churn_rate << 32) | (fill // MiB)


def _wait_migration(qmp: Qmp, timeout: float) -> tuple[dict[str, Any], int]:
    """Polls query-migrate until the migration ends; the last answer and the polls."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        info: dict[str, Any] = qmp.command("query-migrate")
        polls += 1
        status = info.get("status")
        if status in ("completed", "failed", "cancelled"):
            return info, polls
        if time.monotonic() > deadline:
            qmp.command("migrate_cancel")
            info = qmp.command("query-migrate")
            info["benchmark-note"] = f"cancelled after {timeout} s: did not converge"
            return info, polls
        time.sleep(POLL_SECONDS)


def _sample_memory(qmp: Qmp, base: int, fill: int) -> list[str]:
    """A few words of the filled region (HMP ``xp``), to compare source and destination."""
    step = max(fill // 8, 4096) & ~0xFFF
    return [qmp.hmp(f"xp /4gx {base + offset:#x}").strip() for offset in range(0, fill, step)]


def qemu_migration(
    guest_bytes: int = 4 * GiB,
    fill: int = 1 * GiB,
    churning: bool = False,
    *,
    churn_rate: int = DEFAULT_CHURN_RATE,
    paused: bool = False,
    dest_prealloc: bool = False,
    downtime_limit_ms: int = DEFAULT_DOWNTIME_LIMIT_MS,
    max_bandwidth: int = UNCAPPED,
    timeout: float = 240.0,
    binary: Path | None = None,
) -> dict[str, Any]:
    """One QEMU TCG live migration of a ``guest_bytes`` guest with ``fill`` bytes of
    random data and tags, over TCP loopback; the guest idles, or churns at ``churn_rate``
    spans of 64 KiB per second (CHURN_UNPACED: flat out) when ``churning``. ``paused``
    (idle only) stops the source VM (QMP ``stop``) before migrating, as bench_migration.py
    pauses its idle guest; the destination then stays paused too. ``dest_prealloc``
    starts the destination with ``-mem-prealloc`` (its RAM faulted in before it listens).

    Returns QEMU's figures (seconds and bytes; the raw ``query-migrate`` answer is under
    ``query_migrate``). ``status`` is ``completed`` unless the migration failed or did
    not converge within ``timeout`` seconds (then it was cancelled).
    """
    binary = binary or qemu_binary()
    arg = fill_argument(fill, churn_rate if churning else 0)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tagvisor-qemu-mig-") as tmp:
        src_qmp_path, dst_qmp_path = Path(tmp) / "src.qmp", Path(tmp) / "dst.qmp"

        def start(qmp_path: Path, extra: list[str]) -> subprocess.Popen[bytes]:
            command = qemu_command(
                binary,
                "fill",
                arg,
                ram_size=guest_bytes,
                extra=["-qmp", f"unix:{qmp_path},server=on,wait=off", *extra],
            )
            with qmp_path.with_suffix(".stderr").open("wb") as stderr:
                return subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
                )

        prealloc = ["-mem-prealloc"] if dest_prealloc else []
        destination = start(dst_qmp_path, [*prealloc, "-incoming", f"tcp:127.0.0.1:{port}"])
        source = start(src_qmp_path, [])
        src_qmp = dst_qmp = None
        try:
            assert source.stdout is not None
            assert destination.stdout is not None
            src_console, dst_console = Console(source.stdout), Console(destination.stdout)
            started = time.perf_counter()
            base, _, _, _ = src_console.wait_report(FILL_DONE, FILL_TIMEOUT)
            fill_seconds = time.perf_counter() - started
            src_qmp, dst_qmp = Qmp(src_qmp_path), Qmp(dst_qmp_path)
            blocks = ram_blocks(src_qmp)
            src_qmp.command(
                "migrate-set-parameters",
                **{"max-bandwidth": max_bandwidth, "downtime-limit": downtime_limit_ms},
            )
            if paused and not churning:
                src_qmp.command("stop")
            churned_before = [r[0] for r in src_console.ucalls() if r[:2] == (1, FILL_CHURN)]
            wall = time.perf_counter()
            src_qmp.command("migrate", uri=f"tcp:127.0.0.1:{port}")
            info, polls = _wait_migration(src_qmp, timeout)
            wall = time.perf_counter() - wall
            status = info.get("status")
            ram: dict[str, Any] = info.get("ram", {})

            # The destination runs on: it is "running", and a churning guest goes on
            # reporting; an idle one's memory reads as the source's does.
            checks: dict[str, Any] = {}
            if status == "completed":
                deadline = time.monotonic() + 30
                expected = "paused" if paused and not churning else "running"
                while (run := dst_qmp.command("query-status"))["status"] != expected:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                checks["destination_status"] = run["status"]
                if churning:
                    dst_console.wait_report(FILL_CHURN, 60)
                    checks["destination_churns"] = True
                else:
                    same = _sample_memory(src_qmp, base, fill) == _sample_memory(
                        dst_qmp, base, fill
                    )
                    checks["memory_sample_matches"] = same
        except QemuBenchError as exc:
            stop_process(source)
            stop_process(destination)
            logs = "".join(
                f"\n{name} QEMU stderr:\n{path.with_suffix('.stderr').read_text(errors='replace')}"
                for name, path in (("source", src_qmp_path), ("destination", dst_qmp_path))
            )
            raise QemuBenchError(f"{exc}{logs}") from exc
        finally:
            for qmp in (src_qmp, dst_qmp):
                if qmp is not None:
                    qmp.close()
            stop_process(source)
            stop_process(destination)

    total_ms = info.get("total-time", 0)
    transferred = int(ram.get("transferred", 0))
    return {
        "status": status,
        "churning": churning,
        "churn_rate_spans_per_second": churn_rate if churning else 0,
        "paused": paused and not churning,
        "guest_bytes": guest_bytes,
        "fill_bytes": fill,
        "fill_seconds": fill_seconds,
        "total_seconds": total_ms / 1e3,
        "downtime_seconds": info.get("downtime", 0) / 1e3,
        "setup_seconds": info.get("setup-time", 0) / 1e3,
        "wall_seconds": wall,
        "wire_bytes": transferred,
        "throughput_bytes_per_second": transferred / (total_ms / 1e3) if total_ms else 0.0,
        "qemu_mbps": ram.get("mbps", 0.0),
        "iterations": ram.get("dirty-sync-count", 0),
        "normal_pages": ram.get("normal", 0),
        "zero_pages": ram.get("duplicate", 0),
        "ram_total_bytes": ram.get("total", 0),
        "ram_blocks": blocks,
        "tag_block_bytes": blocks.get(TAG_BLOCK, 0),
        "tag_share": blocks.get(TAG_BLOCK, 0) / blocks[RAM_BLOCK] if RAM_BLOCK in blocks else 0,
        "spans_churned_before_migration": max(churned_before, default=0),
        "downtime_limit_ms": downtime_limit_ms,
        "max_bandwidth": max_bandwidth,
        "polls": polls,
        "checks": checks,
        "qemu_version": qemu_version(binary),
        "query_migrate": info,
    }


def summary_line(name: str, run: dict[str, Any]) -> str:
    return (
        f"{name:<10} {run['status']:<9} {run['total_seconds']:6.2f} s  "
        f"downtime {run['downtime_seconds'] * 1e3:5.0f} ms  "
        f"{run['wire_bytes'] / GiB:5.2f} GiB  "
        f"{run['throughput_bytes_per_second'] / 1e9:5.2f} GB/s "
        f"(ram.mbps {run['qemu_mbps']:7.0f})  passes {run['iterations']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guest-gib", type=float, default=4.0)
    parser.add_argument("--fill-gib", type=float, default=1.0)
    parser.add_argument(
        "--churn-rate",
        type=int,
        default=DEFAULT_CHURN_RATE,
        help=f"64 KiB spans per second while churning (default {DEFAULT_CHURN_RATE}; "
        f"{CHURN_UNPACED} = as fast as the guest can)",
    )
    parser.add_argument(
        "--no-churn-max",
        dest="churn_max",
        action="store_false",
        help="leave out the case that churns as fast as the guest can",
    )
    parser.add_argument(
        "--paused-idle",
        action="store_true",
        help="stop the idle guest before migrating, as bench_migration.py does",
    )
    parser.add_argument("--downtime-limit-ms", type=int, default=DEFAULT_DOWNTIME_LIMIT_MS)
    parser.add_argument("--max-bandwidth", type=int, default=UNCAPPED, help="bytes/s")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the median")
    parser.add_argument("--warmup", type=int, default=1, help="idle runs to discard first")
    parser.add_argument("--timeout", type=float, default=120.0, help="per migration (s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    guest_bytes, fill = int(args.guest_gib * GiB), int(args.fill_gib * GiB)

    binary = qemu_binary()
    cases = [("idle", False, 0), ("churning", True, args.churn_rate)]
    if args.churn_max:
        cases.append(("churn-max", True, CHURN_UNPACED))
    results: dict[str, Any] = {"qemu_version": qemu_version(binary)}
    for _ in range(args.warmup):
        # The first run after a while is often much slower (the host's first touch of
        # the memory two 4 GiB guests use): run one and discard it.
        qemu_migration(guest_bytes, fill, False, timeout=args.timeout, binary=binary)
    for name, churning, rate in cases:
        runs = []
        for _ in range(args.repeat):
            run = qemu_migration(
                guest_bytes,
                fill,
                churning,
                churn_rate=rate or args.churn_rate,
                paused=args.paused_idle,
                downtime_limit_ms=args.downtime_limit_ms,
                max_bandwidth=args.max_bandwidth,
                timeout=args.timeout,
                binary=binary,
            )
            runs.append(run)
            if not args.json:
                print(summary_line(name, run), flush=True)
        completed = [r for r in runs if r["status"] == "completed"] or runs
        median = statistics.median_low(r["total_seconds"] for r in completed)
        chosen = next(r for r in completed if r["total_seconds"] == median)
        results[name] = {**chosen, "runs": runs}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        first = results["idle"]
        print(
            f"QEMU {results['qemu_version']} TCG, -m {args.guest_gib:g}G, {args.fill_gib:g} GiB"
            f" filled; tags: RAM block {TAG_BLOCK}, {first['tag_block_bytes'] / MiB:.0f} MiB "
            f"(ram_size / {1 / first['tag_share']:.0f}); idle "
            f"{'paused' if args.paused_idle else 'in WFI'}, churning {args.churn_rate} "
            f"spans/s{', churn-max flat out' if args.churn_max else ''}; median of "
            f"{args.repeat}:"
        )
        for name, _, _ in cases:
            print(summary_line(name, results[name]))
    failed = [n for n, _, _ in cases if any(r["status"] != "completed" for r in results[n]["runs"])]
    if failed:
        raise QemuBenchError(f"a migration did not complete: {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
