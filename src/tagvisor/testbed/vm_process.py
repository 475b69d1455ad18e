"""A tagvisor VM in a process of its own, inside the testbed: the destination of the
session's pre-copy migration, then the source of its post-copy one.

Two VMMs on two hosts share no interpreter. In one process a migration's source and
destination take turns on one GIL, and under nested TCG each hand-off between
threads costs about a millisecond (docs/linux-guests.md, "Downtime"); QEMU's pair in
the same session is two processes too. So the session's second VM runs in a child
process (spawned: nothing of the parent's VMs is inherited), which:

1. listens on the loopback and says on which port (``listening``);
2. receives the migrating guest (``incoming``) and reports its digest of memory and
   tags and its apply time (``arrived``); the guest's console lines come to the
   parent as they are written (``console``), the parent's input goes to the guest
   (``input``);
3. on ``migrate``, moves the guest on (post-copy or pre-copy) and reports the
   source's figures (``migrated``), then ends.

Anything that goes wrong in the child comes back as ``error`` with its message.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Final

from tagvisor.kvm.linux import LinuxKvm
from tagvisor.migration.destination import incoming
from tagvisor.migration.source import migrate
from tagvisor.migration.transport import Listener, TcpAddress
from tagvisor.snapshot.guestpages import memory_digest
from tagvisor.testbed.cpu_time import cpu_seconds
from tagvisor.testbed.guest_thread import GuestThread
from tagvisor.testbed.session_report import migration_figures
from tagvisor.testbed.workload import WorkloadError

#: How long the child may take to start (a fresh interpreter imports tagvisor and
#: NumPy under TCG: a few seconds).
START_SECONDS: Final = 120.0


class VmProcess:
    """The parent's handle on the child VM: its console relayed to ``sink`` (a
    ConsoleWatch, fed byte by byte as the guest's console would be)."""

    def __init__(self, sink: Callable[[bytes], None], deadline: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=serve, args=(child, deadline), name="tagvisor-vm", daemon=True
        )
        self._process.start()
        child.close()
        self._sink = sink
        self._replies: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._send_lock = threading.Lock()
        self._relay = threading.Thread(target=self._receive, name="vm-relay", daemon=True)
        self._relay.start()

    def _receive(self) -> None:
        """Console lines to the sink, everything else to whoever waits for it."""
        try:
            while True:
                kind, value = self._pipe.recv()
                if kind == "console":
                    for byte in value:
                        self._sink(bytes([byte]))
                else:
                    self._replies.put((kind, value))
        except (EOFError, OSError):
            self._replies.put(("error", "the VM's process ended"))

    def wait(self, kind: str, timeout: float) -> Any:
        """The child's next reply, which must be ``kind``; its error, or none in
        ``timeout`` seconds, is a WorkloadError."""
        try:
            got, value = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise WorkloadError(f"the VM's process sent no {kind} within {timeout:g} s") from None
        if got != kind:
            raise WorkloadError(f"the VM's process failed: {value}")
        return value

    def console_input(self, data: bytes) -> None:
        """Bytes for the guest's console (the workload's commands)."""
        self._send(("input", data))

    def migrate_to(self, port: int, *, postcopy: bool, passes: int) -> None:
        """Tell the child to move its guest to 127.0.0.1:``port``."""
        self._send(("migrate", (port, postcopy, passes)))

    def _send(self, message: tuple[str, Any]) -> None:
        with self._send_lock:
            self._pipe.send(message)

    def close(self, timeout: float = 10.0) -> None:
        """Wait for the child to end (it does once its guest has moved), else stop it."""
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout)
        self._pipe.close()


class _LineSink:
    """The child's console sink: whole lines to the parent (a message a byte would
    be most of the pipe's traffic)."""

    def __init__(self, send: Callable[[tuple[str, Any]], None]) -> None:
        self.send = send
        self.line = bytearray()

    def __call__(self, byte: bytes) -> None:
        self.line += byte
        if byte == b"\n":
            self.send(("console", bytes(self.line)))
            self.line.clear()


def serve(pipe: Connection, deadline: float) -> None:
    """The child: listen, receive the guest, run it, move it on when told."""
    lock = threading.Lock()

    def send(message: tuple[str, Any]) -> None:
        with lock:
            pipe.send(message)

    try:
        _serve(pipe, send, deadline)
    except BaseException as error:  # the parent reports it; nothing else would
        send(("error", f"{type(error).__name__}: {error}"))


def _serve(pipe: Connection, send: Callable[[tuple[str, Any]], None], deadline: float) -> None:
    kvm = LinuxKvm()
    listener = Listener(TcpAddress("127.0.0.1", 0))
    send(("listening", listener.address.port))
    # The guest comes once the session has booted, checked and snapshotted it.
    cpu_before = cpu_seconds()  # then it waits, idle, until the source connects
    machine, report = incoming(kvm, listener, console=_LineSink(send), timeout=deadline)
    cpu_spent = cpu_seconds() - cpu_before  # before the digest, which reads all of RAM
    arrived = {
        "digest": memory_digest(machine),
        "apply_seconds": report.apply_seconds,
        "cpu_seconds": cpu_spent,
    }
    send(("arrived", arrived))
    guest = GuestThread(machine, deadline)
    while True:
        kind, value = pipe.recv()
        if kind == "input":
            machine.console_input(value)
            continue
        port, postcopy, passes = value
        guest.pause()
        moved = migrate(
            machine, TcpAddress("127.0.0.1", port), postcopy=postcopy, max_iterations=passes
        )
        send(("migrated", migration_figures(moved)))
        return
