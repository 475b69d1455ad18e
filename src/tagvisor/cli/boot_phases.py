"""The testbed's boot as it happens: phases read from QEMU's console log, and a line
every few seconds while none comes, so `tagvisor testbed` is never silent for a minute.

The testbed writes QEMU's serial console to a log file (tagvisor.testbed.boot); the
watcher follows that file from a thread, as `tail -f` would, and starts over when the
file is truncated (a new boot).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

#: (marker on the console, what it means), in boot order.
PHASES: Final = (
    ("Booting Linux", "the kernel is booting"),
    ("kvm [1]: ", "the kernel is setting up KVM"),
    ("Run /init", "the kernel is up, starting /init"),
    ("=== TAGVISOR-TESTBED-INIT", "the image is up, running the suite"),
    ("=== TAGVISOR-RESULTS-BEGIN", "the suite finished, reading its results"),
    ("=== TAGVISOR-TESTBED-EXIT", "powering off"),
)
#: Seconds without a new phase after which the watcher says it is still going.
HEARTBEAT: Final = 5.0
#: How often the log is read (seconds).
POLL: Final = 0.25
#: How much of the console's last line a heartbeat shows.
SHOWN: Final = 90


class ConsoleWatcher:
    """Follows ``log`` on a thread and calls ``say`` with each phase it reaches, and
    with a heartbeat (elapsed seconds and the console's last line) when none comes."""

    def __init__(
        self, log: Path, say: Callable[[str], None], *, heartbeat: float = HEARTBEAT
    ) -> None:
        self.log = log
        self.say = say
        self.heartbeat = heartbeat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="testbed-console", daemon=True)
        self._offset = 0
        self._text = ""
        self._next_phase = 0

    def __enter__(self) -> ConsoleWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _follow(self) -> None:
        started = last_news = time.monotonic()
        while not self._stop.wait(POLL):
            if self._read():
                last_news = time.monotonic()
            elif time.monotonic() - last_news >= self.heartbeat:
                last_news = time.monotonic()
                elapsed = last_news - started
                line = self._last_line()
                shown = f": {line[:SHOWN]}" if line else ""
                self.say(f"testbed: still going ({elapsed:.0f} s){shown}")

    def _read(self) -> bool:
        """Read what the log gained; whether a new phase was reached."""
        try:
            size = self.log.stat().st_size
        except FileNotFoundError:
            return False
        if size < self._offset:  # truncated: a new boot
            self._offset, self._text, self._next_phase = 0, "", 0
        if size == self._offset:
            return False
        with self.log.open("rb") as console:
            console.seek(self._offset)
            chunk = console.read(size - self._offset)
        self._offset += len(chunk)
        self._text = (self._text + chunk.decode(errors="replace"))[-(1 << 16) :]
        return self._phases()

    def _phases(self) -> bool:
        reached = False
        while self._next_phase < len(PHASES):
            marker, meaning = PHASES[self._next_phase]
            if marker not in self._text:
                break
            self.say(f"testbed: {meaning}")
            self._next_phase += 1
            reached = True
        return reached

    def _last_line(self) -> str:
        lines = [line.strip() for line in self._text.splitlines() if line.strip()]
        return lines[-1] if lines else ""
