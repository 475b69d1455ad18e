"""CPU time of processes, as the Linux guest session reports both VMMs' migrations."""

import subprocess
import sys

from tagvisor.testbed.cpu_time import cpu_seconds


def test_this_process_cpu_time_grows_with_work() -> None:
    """Scenario: some tenths of a second of arithmetic show in this process's figure."""
    before = cpu_seconds()
    total = 0
    for value in range(3_000_000):
        total += value * value
    assert total > 0
    assert cpu_seconds() - before > 0.01


def test_another_process_cpu_time_is_read_from_proc_and_a_gone_one_is_zero() -> None:
    """Scenario: a child busy for a moment has CPU time while it lives (read from
    /proc/<pid>/stat, whose command name may hold spaces and parentheses); once it is
    reaped, its pid reads as 0.0 rather than failing."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys\nx = 0\nfor i in range(20_000_000): x += i\n"
         "sys.stdout.write('done\\n'); sys.stdout.flush(); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    assert child.stdout.readline() == b"done\n"
    assert cpu_seconds(child.pid) > 0.05
    child.communicate(b"")
    assert cpu_seconds(child.pid) == 0.0
