"""Run a machine's VCPUs only a share of the time: the migration's auto-converge.

As QEMU's cpu-throttle (softmmu/cpu-throttle.c): every time slice (10 ms) a pacer
thread kicks each VCPU out of KVM_RUN, and each then sleeps long enough that it ran
``share`` of the time, ``slice * (1 - share) / share``. The guest slows down; nothing
else about it changes.

Counting exits instead (run N exits, then rest) works for guests that exit often, but
a Linux guest with an in-kernel GIC and timer can stay inside KVM_RUN for many
milliseconds, so such a throttle let it run in long bursts at full speed, and the
pages it dirtied in the last one were paid in the migration's pause (docs/
linux-guests.md, "Downtime").
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

#: QEMU's CPU_THROTTLE_TIMESLICE_NS.
SLICE_SECONDS: Final = 0.010


class Throttle:
    """A machine's share of the time to run, and the pacer that enforces it."""

    def __init__(self, vcpus: int, kick_all: Callable[[], None]) -> None:
        self._vcpus = vcpus
        self._kick_all = kick_all
        self.share = 1.0
        self._changed = threading.Condition()
        self._pacer: threading.Thread | None = None
        #: Whether a pacer is pacing: cleared under the lock as it decides to end, so
        #: that a throttle set meanwhile starts another (is_alive() would still say so).
        self._pacing = False
        #: Set by the pacer each slice, cleared by each VCPU as it starts its rest.
        self._owed: set[int] = set()

    def set(self, share: float) -> None:
        """Run ``share`` (0 < share <= 1) of the time from now on; 1 ends throttling."""
        if not 0.0 < share <= 1.0:
            raise ValueError(f"a throttle share is in (0, 1], not {share}")
        with self._changed:
            self.share = share
            self._changed.notify_all()
            if share < 1.0 and not self._pacing:
                self._pacing = True
                self._pacer = threading.Thread(target=self._pace, name="throttle", daemon=True)
                self._pacer.start()

    def rest(self, vcpu: int, woken: threading.Event) -> None:
        """Called by VCPU ``vcpu``'s thread between runs: if a slice ended, sleep the
        rest of it (waking early when ``woken`` is set: a pause)."""
        with self._changed:
            if vcpu not in self._owed:
                return
            self._owed.discard(vcpu)
            share = self.share
        if share < 1.0:
            woken.wait(SLICE_SECONDS * (1.0 - share) / share)

    def _pace(self) -> None:
        """Each slice, mark every VCPU as owing a rest and kick them all; end at 1."""
        while True:
            with self._changed:
                if self.share >= 1.0:
                    self._owed.clear()
                    self._pacing = False
                    return
                self._changed.wait(SLICE_SECONDS)
                if self.share >= 1.0:
                    continue
                self._owed.update(range(self._vcpus))
            self._kick_all()
