"""One machine under control: it runs on a thread of its own while requests pause it,
resume it, snapshot it, migrate it or stop it.

:class:`Controller` is what the control socket (tagvisor.api.server) drives, and what
a library user can drive directly. Every request is carried out whole or refused with a
:class:`~tagvisor.api.protocol.RequestError`; none stops the guest unless it asks to.
A migration that fails leaves the guest running here, as it was.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Final

from tagvisor.api.protocol import PROTOCOL, Request, RequestError
from tagvisor.errors import TagvisorError
from tagvisor.migration import MigrationCommitted, migrate, parse_address
from tagvisor.snapshot import save_snapshot
from tagvisor.vmm import Machine
from tagvisor.vmm.machine import RunResult, RunState

#: How long a pause may take before the request fails (seconds): a VCPU leaves
#: KVM_RUN at its next exit, which a kick makes immediate.
PAUSE_TIMEOUT: Final = 30.0
#: How often a pause is re-asserted while the runner is still inside run(): a pause
#: that lands just before run() starts is cleared by it.
PAUSE_RETRY: Final = 0.05


class Controller:
    """Runs ``machine`` on a thread and carries out requests on it, one at a time.

    ``machine`` may be None for a destination still waiting for its guest; requests
    other than ``status`` and ``stop`` are refused until :meth:`attach`.
    """

    def __init__(self, machine: Machine | None = None, *, backend: str = "model") -> None:
        self.backend = backend
        self._machine = machine
        self._cond = threading.Condition()
        self._want_run = False
        self._in_run = False
        self._busy: str | None = None
        self._ended: str | None = None
        self._ended_event = threading.Event()
        self._result: RunResult | None = None
        self._migration: dict[str, int] = {}
        self._migrated_to: str | None = None
        self._runner: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------

    def attach(self, machine: Machine) -> None:
        """Give a waiting controller its machine (it stays paused until :meth:`start`)."""
        with self._cond:
            if self._machine is not None:
                raise RequestError("wrong-state", "this controller has a machine already")
            self._machine = machine

    def start(self, *, running: bool = True) -> None:
        """Start the runner thread; the guest runs at once unless ``running`` is False."""
        with self._cond:
            if self._machine is None:
                raise RequestError("no-machine", "there is no machine to run yet")
            self._want_run = running
        self._runner = threading.Thread(target=self._run_loop, name="machine", daemon=True)
        self._runner.start()

    def wait(self, timeout: float | None = None) -> str | None:
        """Wait until the machine has ended; why it ended ("powered-off", "failed",
        "migrated", "stopped"), or None after ``timeout`` seconds."""
        self._ended_event.wait(timeout)
        return self._ended

    @property
    def ended(self) -> str | None:
        """Why the machine ended, or None while it lives."""
        return self._ended

    @property
    def machine(self) -> Machine | None:
        """The machine under control (None while a destination waits for it)."""
        return self._machine

    @property
    def result(self) -> RunResult | None:
        """How the machine's last run ended (None before any)."""
        return self._result

    @property
    def migrated_to(self) -> str | None:
        """Where the guest went, once a migration succeeded."""
        return self._migrated_to

    def _run_loop(self) -> None:
        machine = self._machine
        assert machine is not None
        while True:
            with self._cond:
                while not self._want_run and self._ended is None:
                    self._cond.wait()
                if self._ended is not None:
                    return
                self._in_run = True
            result = machine.run()
            with self._cond:
                self._in_run = False
                self._result = result
                if result.state is RunState.STOPPED:
                    self._end("failed" if result.error else "powered-off")
                self._cond.notify_all()

    def _end(self, why: str) -> None:
        """Record the end (the first reason wins); the caller holds the condition."""
        if self._ended is None:
            self._ended = why
            self._ended_event.set()
            self._cond.notify_all()

    def _halt(self) -> bool:
        """Pause the guest and wait until the runner is idle; whether it was running."""
        machine = self._machine
        assert machine is not None
        deadline = time.monotonic() + PAUSE_TIMEOUT
        with self._cond:
            was_running = self._want_run
            self._want_run = False
            while self._in_run:
                if time.monotonic() > deadline:
                    raise RequestError("timeout", f"the guest did not pause in {PAUSE_TIMEOUT} s")
                machine.pause()
                self._cond.wait(PAUSE_RETRY)
        return was_running

    def _carry_on(self, was_running: bool) -> None:
        with self._cond:
            self._busy = None
            if was_running and self._ended is None:
                self._want_run = True
            self._cond.notify_all()

    # -- requests --------------------------------------------------------------------

    def execute(self, request: Request) -> dict[str, Any]:
        """Carry out ``request``; its result, or RequestError."""
        arguments = request.arguments
        if request.command == "status":
            return self.status()
        if request.command == "pause":
            return self.pause()
        if request.command == "resume":
            return self.resume()
        if request.command == "snapshot":
            return self.snapshot(arguments["path"])
        if request.command == "migrate":
            return self.migrate(
                arguments["to"],
                postcopy=arguments.get("postcopy", False),
                compress=arguments.get("compress", False),
                iterations=arguments.get("iterations", 8),
            )
        if request.command == "stop":
            return self.stop()
        raise RequestError("unknown-command", f"no command {request.command!r}")

    def state(self) -> str:
        """One word: waiting, running, paused, snapshotting, migrating, or why it ended."""
        with self._cond:
            if self._ended is not None:
                return self._ended
            if self._machine is None:
                return "waiting"
            if self._busy is not None:
                return self._busy
            return "running" if self._want_run else "paused"

    def status(self) -> dict[str, Any]:
        """What the machine is doing, its shape and how far it got."""
        status: dict[str, Any] = {
            "protocol": PROTOCOL,
            "backend": self.backend,
            "state": self.state(),
        }
        machine = self._machine
        if machine is not None:
            config = machine.config
            status.update(
                exits=machine.exits,
                exit_status=machine.exit_status,
                ram_bytes=config.ram_size,
                vcpus=config.vcpus,
                mte=config.mte,
                tcf=config.tcf,
                ucalls=len(machine.ucall.calls),
            )
        if self._result is not None and self._result.error:
            status["error"] = self._result.error
        if self._migration:
            status["migration"] = dict(self._migration)
        if self._migrated_to is not None:
            status["migrated_to"] = self._migrated_to
        return status

    def _claim(self, what: str) -> Machine:
        """Mark the controller busy with ``what``; the machine, or RequestError."""
        with self._cond:
            if self._ended is not None:
                raise RequestError("wrong-state", f"the machine has ended ({self._ended})")
            if self._machine is None:
                raise RequestError("no-machine", "no guest yet: the destination is waiting")
            if self._busy is not None:
                raise RequestError("busy", f"the machine is {self._busy}; try again after it")
            self._busy = what
            return self._machine

    def pause(self) -> dict[str, Any]:
        """Pause the guest (a paused guest stays paused)."""
        self._claim("pausing")
        try:
            self._halt()
        finally:
            self._carry_on(False)
        return self.status()

    def resume(self) -> dict[str, Any]:
        """Let a paused guest run on (a running guest runs on)."""
        self._claim("resuming")
        self._carry_on(True)
        return self.status()

    def snapshot(self, path: str) -> dict[str, Any]:
        """Save the guest to ``path`` (relative to the server's directory); the guest
        runs on afterwards if it was running."""
        target = Path(path)
        if target.is_dir():
            raise RequestError("bad-argument", f"{path} is a directory: name a file in it")
        machine = self._claim("snapshotting")
        was_running = False
        try:
            was_running = self._halt()
            report = save_snapshot(machine, target)
        except (TagvisorError, OSError) as error:
            if isinstance(error, RequestError):
                raise
            raise RequestError("failed", f"the snapshot failed: {_reason(error)}") from error
        finally:
            self._carry_on(was_running)
        return {
            "path": str(target.resolve()),
            "file_bytes": report.file_bytes,
            "pages_total": report.pages_total,
            "pages_stored": report.stats.pages - report.stats.zero_pages,
            "tag_bytes": report.stats.tag_bytes,
            "digest": report.digest,
            "state": self.state(),
        }

    def migrate(
        self, to: str, *, postcopy: bool = False, compress: bool = False, iterations: int = 8
    ) -> dict[str, Any]:
        """Live-migrate the guest to a ``tagvisor incoming`` at ``to``. On success the
        machine here ends ("migrated"); on failure the guest carries on here."""
        try:
            address = parse_address(to)
        except ValueError as error:
            raise RequestError("bad-argument", str(error)) from None
        machine = self._claim("migrating")
        was_running = False
        try:
            was_running = self._halt()
            report = migrate(
                machine,
                address,
                run_guest=was_running,
                max_iterations=iterations,
                compress=compress,
                postcopy=postcopy,
                progress=self._migration_progress,
            )
        except MigrationCommitted as error:
            # The guest belongs to the destination now: resuming it here would run it
            # twice. It stays paused and the machine here ends.
            self._hand_over(str(address))
            raise RequestError("migration-unconfirmed", str(error)) from error
        except (TagvisorError, OSError) as error:
            self._carry_on(was_running)
            if isinstance(error, RequestError):
                raise
            where = "running" if was_running else "paused"
            raise RequestError(
                "migration-failed", f"{_reason(error)}; the guest is still {where} here"
            ) from error
        self._hand_over(str(address))
        return {"to": str(address), **report.as_dict()}

    def _hand_over(self, to: str) -> None:
        with self._cond:
            self._migrated_to = to
            self._busy = None
            self._end("migrated")

    def _migration_progress(self, iteration: int, sent: int, left: int) -> None:
        self._migration = {"iteration": iteration, "pages_sent": sent, "pages_left": left}

    def stop(self) -> dict[str, Any]:
        """End the machine here (the guest does not get to finish)."""
        with self._cond:
            busy = self._busy
        if busy is not None:
            raise RequestError("busy", f"the machine is {busy}; try again after it")
        if self._machine is not None and self._ended is None:
            self._claim("stopping")
            self._halt()
        with self._cond:
            self._busy = None
            self._end("stopped")
        return self.status()


def _reason(error: BaseException) -> str:
    """An error's message without Python's decoration (an OSError's errno, path)."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror.lower()}{where}"
    return str(error)
