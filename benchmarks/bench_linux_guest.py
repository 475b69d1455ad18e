"""A running MTE Linux guest, tagvisor against QEMU 10 + KVM, from the same testbed run.

Each run is one ``tagvisor testbed --linux-guest`` session (tagvisor.testbed.linux_session):
inside the testbed, QEMU 10 + KVM boots the same kernel and guest shape, answers
``migrate`` with MTE on, and migrates the guest with mte=off; then tagvisor boots it
with MTE and its workload, snapshots it, and live-migrates it (pre-copy, then
post-copy). The ratios compare figures measured in that one run, so the shared
machine's load falls on both sides alike:

- boot to /init: tagvisor / QEMU (target: at most 1);
- migration time: tagvisor's MTE migration / QEMU's non-MTE one (target: at most 1.25);
- downtime: tagvisor / QEMU non-MTE (target: at most 1; and under 100 ms nested), twice:
  ``downtime`` takes tagvisor's until the destination has everything and says DONE,
  ``downtime_as_qemu`` until the source has sent its last byte, as QEMU measures its
  own (migration/migration.c, migration_calculate_complete: from the stop until the
  source completes; a pre-copy source does not wait for the destination's load);
- tag bytes / page bytes sent (target: at most 1/32), and pages whose granules share a
  tag sent with one tag byte.

Both guests run the same workload, rewriting 64 KiB every 20 ms (QEMU's untagged, as
mte=off refuses its prctl). Two more figures say where the time goes: the CPU seconds
both of tagvisor's processes used against QEMU's two (``migration_cpu``), and the least
migration time tagvisor's CPU seconds allow on the testbed's two CPUs, against QEMU's
time (``cpu_floor``: a migration time ratio below it cannot be had without spending less
CPU); and ``tag_floor``, the same for a VMM that spent QEMU's CPU seconds plus the
kernel's own KVM_ARM_MTE_COPY_TAGS calls for these pages (timed again after the move,
``tag_copies``) and nothing more: no VMM that moves tags through KVM goes below it
here. With ``--runs N`` it prints each run and the range.

    python benchmarks/bench_linux_guest.py [--kernel 6.1] [--runs 3] [--json]
    python benchmarks/bench_linux_guest.py --from-json session.json   # a saved run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

from tagvisor.testbed.linux_guest import linux_session
from tagvisor.testbed.session_report import failures

TARGETS: Final = {
    "boot": 1.0,
    "migration_time": 1.25,
    "downtime": 1.0,
    "downtime_as_qemu": 1.0,
    "tag_bytes_per_page_byte": 1 / 32,
}
DOWNTIME_TARGET_MS: Final = 100.0
#: The testbed's CPUs (tagvisor.testbed.boot: -smp 2): a migration whose two processes
#: use C CPU seconds cannot take less than C / 2 seconds there.
TESTBED_CPUS: Final = 2


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    """The four ratios of one session's result (None where a side is missing)."""
    qemu = result.get("qemu") or {}
    plain = result.get("qemu_nomte_migration") or {}
    migration = result.get("migration") or {}

    def ratio(ours: object, theirs: object) -> float | None:
        if not isinstance(ours, (int, float)) or not isinstance(theirs, (int, float)):
            return None
        return round(ours / theirs, 3) if theirs else None

    ours, theirs = _cpu(migration), _cpu(plain)
    return {
        "boot": ratio(result.get("boot_seconds"), qemu.get("boot_seconds")),
        "migration_time": ratio(migration.get("total_seconds"), plain.get("total_seconds")),
        "downtime": ratio(migration.get("downtime_ms"), plain.get("downtime_ms")),
        "downtime_as_qemu": ratio(migration.get("send_downtime_ms"), plain.get("downtime_ms")),
        "tag_bytes_per_page_byte": ratio(migration.get("tag_bytes"), migration.get("data_bytes")),
        "migration_cpu": ratio(ours, theirs),
        "cpu_floor": ratio(
            None if ours is None else ours / TESTBED_CPUS, plain.get("total_seconds")
        ),
        "tag_floor": ratio(_tag_floor(theirs, migration), plain.get("total_seconds")),
    }


def _tag_floor(theirs: float | None, migration: dict[str, Any]) -> float | None:
    """The least time a migration could take on the testbed's CPUs if it cost QEMU's
    CPU seconds plus the kernel's tag copies (``tag_copies``) and nothing else."""
    copies = migration.get("tag_copies")
    if theirs is None or not isinstance(copies, dict):
        return None
    seconds = [copies.get(key) for key in ("from_guest_seconds", "to_guest_seconds")]
    if not all(isinstance(value, (int, float)) for value in seconds):
        return None
    return (theirs + sum(float(value) for value in seconds if value is not None)) / TESTBED_CPUS


def _cpu(figures: dict[str, Any]) -> float | None:
    """Both sides' CPU seconds of a migration (``cpu_seconds``), None if not measured."""
    cpu = figures.get("cpu_seconds")
    if not isinstance(cpu, dict) or not all(isinstance(v, (int, float)) for v in cpu.values()):
        return None
    return float(sum(cpu.values())) if cpu else None


def one_run(kernel: str) -> dict[str, Any]:
    """One testbed session; its result, or SystemExit with why it failed."""
    run = linux_session(kernel, qemu=True, say=lambda line: print(line, file=sys.stderr))
    if not isinstance(run.result, dict):
        raise SystemExit(f"bench_linux_guest: the testbed run failed: {run.error}")
    problems = failures(run.result)
    if problems:
        raise SystemExit("bench_linux_guest: the session failed: " + "; ".join(problems))
    return run.result


def report(result: dict[str, Any]) -> dict[str, Any]:
    """The figures and ratios of one run."""
    migration = result["migration"]
    return {
        "tagvisor_boot_s": result.get("boot_seconds"),
        "qemu_boot_s": (result.get("qemu") or {}).get("boot_seconds"),
        "tagvisor_migration_s": migration.get("total_seconds"),
        "qemu_nomte_migration_s": (result.get("qemu_nomte_migration") or {}).get("total_seconds"),
        "tagvisor_downtime_ms": migration.get("downtime_ms"),
        "qemu_nomte_downtime_ms": (result.get("qemu_nomte_migration") or {}).get("downtime_ms"),
        "uniform_tag_pages": migration.get("uniform_tag_pages"),
        "pages_sent": migration.get("pages_sent"),
        "tagvisor_cpu_s": migration.get("cpu_seconds"),
        "qemu_nomte_cpu_s": (result.get("qemu_nomte_migration") or {}).get("cpu_seconds"),
        "ratios": ratios(result),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the sessions (or read saved ones) and print each run's ratios and their ranges."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", default="6.1")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--from-json", type=Path, action="append", default=[])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = [json.loads(path.read_text()) for path in args.from_json]
    results += [one_run(args.kernel) for _ in range(args.runs if not results else 0)]
    runs = [report(result) for result in results]
    if args.json:
        print(json.dumps({"runs": runs, "targets": TARGETS}, indent=2))
        return 0
    for number, run in enumerate(runs, 1):
        print(f"run {number}: " + ", ".join(f"{k} {v}" for k, v in run["ratios"].items()))
    for key in runs[0]["ratios"] if runs else ():
        values = [r["ratios"][key] for r in runs if r["ratios"][key] is not None]
        span = f"{min(values)} to {max(values)}" if values else "n/a"
        target = f" (target at most {TARGETS[key]:.4g})" if key in TARGETS else ""
        print(f"{key}: {span}{target}")
    downtimes = [r["tagvisor_downtime_ms"] for r in runs]
    print(f"tagvisor downtime: {downtimes} ms (target under {DOWNTIME_TARGET_MS:g} ms, nested)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
