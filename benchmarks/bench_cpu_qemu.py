"""Guest MIPS of QEMU TCG on the CPU benchmark guests, for comparison with tagvisor's A64 core.

Each guest (guests/bench-int: adds, shifts, a compare and a branch; guests/bench-checked:
tag-checked loads and stores with TCF = sync through correctly tagged pointers) runs N
iterations of a loop of a known length, N being the boot block's program argument, and
reports N and its instructions per iteration. It runs under ``qemu-system-aarch64 -M
virt,mte=on -cpu max -accel tcg`` once with a small N and once with a large one, each
``--repeat`` times; with the fastest time of each,

    MIPS = (N_large - N_small) * instructions per iteration / (t_large - t_small) / 1e6

so QEMU's start-up, the guest's boot and power-off cancel out. The large N is chosen
(unless given) so that the large run takes about ``--seconds`` more than the small one.
benchmarks/bench_cpu.py imports :func:`qemu_mips` to print QEMU's figure beside
tagvisor's on the same binaries.

    python benchmarks/bench_cpu_qemu.py [--guest bench-int] [--seconds 3] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from qemu_bench import QemuBenchError, done_status, parse_ucalls, qemu_binary, qemu_command
from qemu_bench import qemu_version as qemu_version_of
from qemu_bench import reports as reports_of

#: Report id of each guest's result (guests/bench-*/main.c): iterations, instructions
#: per iteration, then guest-specific values.
REPORT_IDS: Final = {"bench-int": 0x400, "bench-checked": 0x410}
GUESTS: Final = tuple(REPORT_IDS)
#: Short names accepted for the guests.
ALIASES: Final = {"int": "bench-int", "checked": "bench-checked"}
SMALL_N: Final = 1000
#: A first guess at the large N, used to calibrate it (about 0.3-1 s under QEMU 10).
PROBE_N: Final = {"bench-int": 200_000_000, "bench-checked": 3_000_000}
DEFAULT_SECONDS: Final = 3.0
DEFAULT_REPEAT: Final = 3
RUN_TIMEOUT: Final = 300.0


@dataclass(frozen=True)
class GuestTiming:
    """One QEMU run of a benchmark guest."""

    iterations: int
    insns_per_iteration: int
    seconds: float
    #: The guest's report after the id and the two counts (checksums and the like).
    values: tuple[int, ...]


@dataclass
class MipsResult:
    """QEMU's guest MIPS on one benchmark guest and the runs it came from."""

    guest: str
    qemu_version: str
    insns_per_iteration: int
    small_n: int
    large_n: int
    #: Tag-checked loads and stores per iteration (bench-checked; 0 for bench-int).
    checked_per_iteration: int = 0
    small_seconds: list[float] = field(default_factory=list)
    large_seconds: list[float] = field(default_factory=list)

    @property
    def instructions(self) -> int:
        """Guest instructions the large run executes beyond the small one."""
        return (self.large_n - self.small_n) * self.insns_per_iteration

    @property
    def seconds(self) -> float:
        return min(self.large_seconds) - min(self.small_seconds)

    @property
    def mips(self) -> float:
        return self.instructions / self.seconds / 1e6

    @property
    def checked_per_second(self) -> float:
        """Tag-checked accesses per second (0 for bench-int)."""
        iterations = self.large_n - self.small_n
        return iterations * self.checked_per_iteration / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "instructions": self.instructions,
            "mips": self.mips,
            "checked_per_second": self.checked_per_second,
        }


def guest_name(guest: str) -> str:
    name = ALIASES.get(guest, guest)
    if name not in REPORT_IDS:
        raise ValueError(f"no benchmark guest {guest!r}; there are {', '.join(GUESTS)}")
    return name


def run_timed(guest: str, iterations: int, *, binary: Path | None = None) -> GuestTiming:
    """Boot ``guest`` with N = ``iterations`` under QEMU TCG; wall time to power-off."""
    guest = guest_name(guest)
    command = qemu_command(binary or qemu_binary(), guest, iterations)
    start = time.perf_counter()
    done = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, timeout=RUN_TIMEOUT, check=False
    )
    seconds = time.perf_counter() - start
    output = done.stdout.decode(errors="replace")
    ucalls = parse_ucalls(output)
    found = reports_of(ucalls, REPORT_IDS[guest])
    if done.returncode or done_status(ucalls) != 0 or len(found) != 1:
        raise QemuBenchError(
            f"{guest} with N={iterations}: QEMU exited {done.returncode}, console:\n{output}\n"
            f"{done.stderr.decode(errors='replace')}"
        )
    report = found[0]
    if report[0] != iterations:
        raise QemuBenchError(f"{guest} ran {report[0]} iterations, not {iterations}")
    return GuestTiming(iterations, report[1], seconds, tuple(report[2:]))


def measure_qemu_mips(
    guest: str,
    *,
    small: int = SMALL_N,
    large: int | None = None,
    seconds: float = DEFAULT_SECONDS,
    repeat: int = DEFAULT_REPEAT,
    binary: Path | None = None,
) -> MipsResult:
    """QEMU's guest MIPS on ``guest`` ("bench-int" or "bench-checked"), with the runs.

    ``large`` None: calibrated with one probe run so that the large run takes about
    ``seconds`` longer than the small one. Small and large runs alternate ``repeat``
    times; the fastest of each counts.
    """
    guest = guest_name(guest)
    binary = binary or qemu_binary()
    base = run_timed(guest, small, binary=binary)
    if large is None:
        probe = run_timed(guest, PROBE_N[guest], binary=binary)
        per_iteration = max(probe.seconds - base.seconds, 1e-3) / (PROBE_N[guest] - small)
        large = max(int(seconds / per_iteration), 2 * small)
    result = MipsResult(guest, qemu_version_of(binary), base.insns_per_iteration, small, large)
    if guest == "bench-checked":
        result.checked_per_iteration = base.values[0]
    result.small_seconds.append(base.seconds)
    for index in range(repeat):
        if index:
            result.small_seconds.append(run_timed(guest, small, binary=binary).seconds)
        result.large_seconds.append(run_timed(guest, large, binary=binary).seconds)
    return result


def qemu_mips(
    guest: str,
    *,
    small: int = SMALL_N,
    large: int | None = None,
    seconds: float = DEFAULT_SECONDS,
    repeat: int = DEFAULT_REPEAT,
    binary: Path | None = None,
) -> float:
    """Guest MIPS (millions of guest instructions per second) of QEMU TCG on ``guest``:
    "bench-int" (or "int") or "bench-checked" (or "checked"). See measure_qemu_mips."""
    return measure_qemu_mips(
        guest, small=small, large=large, seconds=seconds, repeat=repeat, binary=binary
    ).mips


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guest", choices=[*GUESTS, *ALIASES], action="append")
    parser.add_argument("--small", type=int, default=SMALL_N, help="small N")
    parser.add_argument("--large", type=int, help="large N (default: calibrated)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results = {}
    for guest in [guest_name(g) for g in args.guest or GUESTS]:
        result = measure_qemu_mips(
            guest, small=args.small, large=args.large, seconds=args.seconds, repeat=args.repeat
        )
        results[guest] = result
        if not args.json:
            checked = (
                f", {result.checked_per_second / 1e6:.1f} M checked accesses/s"
                if result.checked_per_iteration
                else ""
            )
            print(
                f"QEMU {result.qemu_version} TCG  {guest:<14} {result.mips:8.1f} MIPS  "
                f"({result.insns_per_iteration} insns/iteration{checked}; N {result.small_n:,}"
                f" vs {result.large_n:,}: {min(result.small_seconds):.2f} s vs "
                f"{min(result.large_seconds):.2f} s, best of {args.repeat})",
                flush=True,
            )
    if args.json:
        print(json.dumps({name: r.as_dict() for name, r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
