"""CPU time of processes, for comparing what two VMMs' migrations cost the machine.

On the testbed's two CPUs a migration's time cannot be less than the CPU time both
sides spend on it, halved: these figures say how much of it each side used. A process's
figure is its user and system time, all its threads included (the guest's VCPUs
too), from /proc/<pid>/stat (fields 14 and 15, in clock ticks: proc(5)).
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system seconds of process ``pid`` (this one if None) so far; 0.0 for
    a process that is gone."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
