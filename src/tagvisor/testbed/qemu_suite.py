"""In the testbed image: QEMU 10 on the same /dev/kvm as tagvisor, as the reference VMM.

:func:`run_qemu_reference` boots the guest kernel and the waiting initrd
(:mod:`tagvisor.testbed.qemu_reference` puts them and QEMU's reduced tree in
/opt/suite) with ``-M virt,mte=on -accel kvm``, times QEMU's start to the guest's
/init marker, asks QMP to ``migrate`` it (QEMU refuses: target/arm/kvm.c,
``kvm_arm_enable_mte``, adds a migration blocker), and then migrates the same guest
with ``mte=off`` to a second QEMU on 127.0.0.1, reading total time and downtime from
``query-migrate``. Standard library only (it runs in the image); :func:`run` is the
suite entry for a testbed boot of its own.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tagvisor.testbed.cpu_time import cpu_seconds
from tagvisor.testbed.linux_suite import MARKER

SUITE_DIR: Final = Path("/opt/suite")
QEMU_DIR: Final = "qemu"
GUEST_INITRD: Final = "qemu-guest-initrd.gz"
#: The same append as tagvisor's Linux guest (linux_guest.GUEST_APPEND).
APPEND: Final = "console=ttyAMA0 panic=-1 rdinit=/init quiet"
MIGRATION_PORT: Final = 4444
#: query-migrate's states that end a migration (QEMU's qapi/migration.json, MigrationStatus).
FINAL_STATES: Final = frozenset({"completed", "failed", "cancelled"})
#: tagvisor's guest initrd (linux_guest.guest_initrd with the workload), when shipped.
WORKLOAD_INITRD: Final = "guest-initrd.gz"
#: The workload's READY without MTE (guests/linux/mte-workload.c).
_WORKLOAD_READY: Final = re.compile(rb"=== TAGVISOR-WORKLOAD READY [^\n]*mte=0")
_MARKER_LINE: Final = re.compile(re.escape(MARKER.encode()))
#: The waiting /init's second line, whole (the UART is slow: it comes after the marker).
_FEATURES_LINE: Final = re.compile(rb"Features\s*:[^\n]*\n")
_UPTIME: Final = re.compile(re.escape(MARKER) + r" uptime ([0-9.]+)")


def guest_uptime(console: str) -> float | None:
    """The guest's uptime in its /init's marker line (seconds since its kernel started:
    the rest of QEMU's boot time is QEMU's own start), if the line is there."""
    match = _UPTIME.search(console)
    return float(match.group(1)) if match else None


class QemuReferenceError(Exception):
    """QEMU, its QMP socket or the guest did something this suite cannot go on from."""


class Qmp:
    """A QMP client on a unix socket: newline-delimited JSON objects (QEMU's
    docs/interop/qmp-spec.rst): a greeting, then one reply per command, with
    asynchronous ``event`` objects in between."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.events: list[dict[str, Any]] = []
        greeting = self._receive()
        if "QMP" not in greeting:
            raise QemuReferenceError(f"QMP greeting without a 'QMP' member: {greeting}")
        self.version = greeting["QMP"].get("version", {}).get("qemu", {})
        answer = self.execute("qmp_capabilities")
        if "return" not in answer:
            raise QemuReferenceError(f"qmp_capabilities refused: {json.dumps(answer)}")

    @classmethod
    def connect(cls, path: Path, timeout: float) -> Qmp:
        """Connect to QEMU's ``-qmp unix:<path>,server,wait=off`` socket, waiting up to
        ``timeout`` s for QEMU to create it."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(str(path))
                return cls(sock)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise QemuReferenceError(
                        f"no QMP socket at {path} after {timeout:.0f} s: did QEMU start?"
                    ) from None
                time.sleep(0.1)
            except BaseException:
                sock.close()
                raise

    def _line(self) -> bytes:
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise QemuReferenceError("QMP sent nothing before the timeout") from None
            if not chunk:
                raise QemuReferenceError(f"QMP closed the connection (pending: {self.buffer!r})")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def _receive(self) -> dict[str, Any]:
        """The next non-empty JSON object QEMU sent."""
        while True:
            line = self._line().strip()
            if line:
                break
        try:
            message = json.loads(line)
        except ValueError:
            raise QemuReferenceError(f"QMP sent a line that is not JSON: {line[:200]!r}") from None
        if not isinstance(message, dict):
            raise QemuReferenceError(f"QMP sent JSON that is not an object: {line[:200]!r}")
        return message

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send ``command`` and return QEMU's whole answer (a ``return`` or an ``error``),
        verbatim; events that come first are kept in :attr:`events`."""
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._receive()
            if "event" in message:
                self.events.append(message)
            elif "return" in message or "error" in message:
                return message
            else:
                raise QemuReferenceError(
                    f"QMP answered {command} with neither return nor "
                    f"error: {json.dumps(message)[:200]}"
                )

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def migration_figures(info: dict[str, Any]) -> dict[str, Any]:
    """``{"total_seconds", "downtime_ms", "status"}`` from a completed ``query-migrate``
    return (QEMU's MigrationInfo: ``total-time`` and ``downtime`` are in ms)."""
    status = info.get("status")
    if status != "completed":
        reason = info.get("error-desc", "no error-desc")
        raise QemuReferenceError(f"migration ended {status!r} ({reason}): {json.dumps(info)[:300]}")
    total, downtime = info.get("total-time"), info.get("downtime")
    if not isinstance(total, int) or not isinstance(downtime, int):
        raise QemuReferenceError(
            f"completed query-migrate without integer total-time/downtime: {json.dumps(info)[:300]}"
        )
    return {"total_seconds": round(total / 1000, 3), "downtime_ms": downtime, "status": status}


@dataclass
class Qemu:
    """One qemu-system-aarch64 process, its console in a file, its QMP socket."""

    name: str
    command: list[str]
    workdir: Path
    #: Its environment: the image's, with QEMU's own library directory.
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    #: Keep the guest console's input open (a pipe nobody writes): the workload reads
    #: commands from it and ends at its end.
    open_input: bool = False

    @property
    def console(self) -> Path:
        """The guest's serial console (QEMU's standard output with -nographic)."""
        return self.workdir / f"{self.name}.console"

    @property
    def qmp_path(self) -> Path:
        """The QMP socket."""
        return self.workdir / f"{self.name}.qmp"

    def start(self) -> None:
        """Start QEMU with its console and standard error in files."""
        self.qmp_path.unlink(missing_ok=True)
        with (
            self.console.open("wb") as out,
            (self.workdir / f"{self.name}.stderr").open("wb") as err,
        ):
            self.started = time.monotonic()
            self.process = subprocess.Popen(
                [*self.command, "-qmp", f"unix:{self.qmp_path},server,wait=off"],
                stdin=subprocess.PIPE if self.open_input else subprocess.DEVNULL,
                stdout=out, stderr=err, env=self.env,
            )  # fmt: skip

    def text(self) -> str:
        """Console and standard error so far."""
        err = self.workdir / f"{self.name}.stderr"
        parts = [p.read_bytes().decode(errors="replace") for p in (self.console, err) if p.exists()]
        return "".join(parts)

    def wait_for(self, pattern: re.Pattern[bytes], timeout: float) -> tuple[float, str]:
        """Seconds from QEMU's start until the console matched ``pattern``, and the match."""
        while True:
            match = pattern.search(self.console.read_bytes())
            if match is not None:
                return round(time.monotonic() - self.started, 2), match.group().decode(
                    errors="replace"
                )
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() - self.started > timeout:
                tail = "\n".join(self.text().splitlines()[-15:])
                raise QemuReferenceError(
                    f"{self.name}: the guest never printed {pattern.pattern!r} within "
                    f"{timeout:.0f} s (QEMU exit {self.process.poll()}):\n{tail}"
                )
            time.sleep(0.05)

    def wait_marker(self, timeout: float) -> float:
        """Seconds from QEMU's start until the guest's /init printed its marker."""
        return self.wait_for(_MARKER_LINE, timeout)[0]

    def stop(self) -> None:
        """Kill QEMU if it still runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def qemu_command(
    suite_dir: Path,
    *,
    mte: bool,
    vcpus: int,
    memory_mib: int,
    append: str,
    initrd: str = GUEST_INITRD,
) -> list[str]:
    """qemu-system-aarch64 on KVM with the guest kernel and ``initrd`` (the waiting one,
    or tagvisor's workload initrd), run on QEMU's own libraries."""
    qemu = suite_dir / QEMU_DIR
    return [
        str(qemu / "bin" / "qemu-system-aarch64"),
        "-M", f"virt,mte={'on' if mte else 'off'},gic-version=3",
        "-accel", "kvm", "-cpu", "host",
        "-smp", str(vcpus), "-m", str(memory_mib),
        "-nographic", "-nic", "none", "-no-reboot",
        "-kernel", str(suite_dir / "Image"),
        "-initrd", str(suite_dir / initrd),
        "-append", append,
    ]  # fmt: skip


def _prepare(suite_dir: Path) -> dict[str, str]:
    """The cpio archive's files are 0644: make QEMU executable; the environment that
    finds its libraries."""
    binary = suite_dir / QEMU_DIR / "bin" / "qemu-system-aarch64"
    if not binary.is_file():
        raise QemuReferenceError(f"no {binary}: add qemu_reference_files(...) to the run's files")
    binary.chmod(0o755)
    library = str(suite_dir / QEMU_DIR / "lib")
    current = os.environ.get("LD_LIBRARY_PATH")
    # QEMU's environment only: the suite's own subprocesses keep the image's libraries.
    return {**os.environ, "LD_LIBRARY_PATH": f"{library}:{current}" if current else library}


def _poll_migration(qmp: Qmp, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = qmp.execute("query-migrate")
        info = answer.get("return")
        if not isinstance(info, dict):
            raise QemuReferenceError(f"query-migrate answered {json.dumps(answer)[:300]}")
        if info.get("status") in FINAL_STATES:
            return info
        if time.monotonic() > deadline:
            raise QemuReferenceError(f"migration still {info.get('status')!r} after {timeout} s")
        time.sleep(0.2)


def _mte_refusal(
    suite_dir: Path, workdir: Path, env: dict[str, str], timeout: float, **shape: Any
) -> dict[str, Any]:
    qemu = Qemu("mte", qemu_command(suite_dir, mte=True, **shape), workdir, env)
    qemu.start()
    try:
        boot = qemu.wait_marker(timeout)
        features = qemu.wait_for(_FEATURES_LINE, timeout)[1].strip()
        qmp = Qmp.connect(qemu.qmp_path, 10.0)
        try:
            answer = qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{MIGRATION_PORT}"})
            blockers = qmp.execute("query-migrate")
        finally:
            qmp.close()
        console = qemu.text()
        return {"boot_seconds": boot, "migrate": answer, "query_migrate": blockers,
                "qemu": qmp.version, "features": features, "console": console,
                "uptime": guest_uptime(console)}  # fmt: skip
    finally:
        qemu.stop()


def _plain_migration(
    suite_dir: Path, workdir: Path, env: dict[str, str], timeout: float, **shape: Any
) -> dict[str, Any]:
    # The same guest as tagvisor's when its initrd is here: the workload then runs
    # untagged (mte=0) and rewrites memory as it does with tags; else a quiet guest.
    workload = (suite_dir / WORKLOAD_INITRD).is_file()
    initrd = WORKLOAD_INITRD if workload else GUEST_INITRD
    command = qemu_command(suite_dir, mte=False, initrd=initrd, **shape)
    source = Qemu("source", command, workdir, env, open_input=workload)
    incoming = [*command, "-incoming", f"tcp:127.0.0.1:{MIGRATION_PORT}"]
    target = Qemu("target", incoming, workdir, env, open_input=workload)
    source.start()
    try:
        boot = source.wait_marker(timeout)
        ready = _WORKLOAD_READY if workload else _FEATURES_LINE
        busy_at, _ = source.wait_for(ready, timeout)
        target.start()
        Qmp.connect(target.qmp_path, 10.0).close()  # listening once QMP answers
        qmp = Qmp.connect(source.qmp_path, 10.0)
        sides = {"source": source, "destination": target}
        cpu_before = {side: _cpu(qemu) for side, qemu in sides.items()}
        try:
            answer = qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{MIGRATION_PORT}"})
            if "error" in answer:
                raise QemuReferenceError(f"migrate with mte=off refused: {json.dumps(answer)}")
            info = _poll_migration(qmp, timeout)
        finally:
            qmp.close()
        # Both processes' CPU from `migrate` until the poll saw it completed (the
        # source's VCPUs included, as tagvisor's figure includes its guest's).
        spent = {side: round(_cpu(qemu) - cpu_before[side], 2) for side, qemu in sides.items()}
        figures = migration_figures(info)
        figures["cpu_seconds"] = spent
        figures["boot_seconds"] = boot
        figures["workload"] = workload
        figures["seconds_to_ready"] = busy_at if workload else None
        figures["guest_uptime"] = guest_uptime(source.text())
        figures["ram_transferred"] = info.get("ram", {}).get("transferred")
        return figures
    finally:
        source.stop()
        target.stop()


def _cpu(qemu: Qemu) -> float:
    """The CPU seconds QEMU's process has used so far (0.0 if it never started)."""
    return 0.0 if qemu.process is None else cpu_seconds(qemu.process.pid)


def run_qemu_reference(
    suite_dir: Path = SUITE_DIR,
    *,
    vcpus: int = 1,
    memory_mib: int = 256,
    append: str = APPEND,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Boot the guest under QEMU + KVM with MTE, ask it to migrate, then migrate it with
    MTE off: ``{"boot_seconds", "migrate", "nomte_migration": {...}, ...}``."""
    env = _prepare(suite_dir)
    workdir = Path("/tmp/qemu-reference")
    workdir.mkdir(exist_ok=True)
    shape = {"vcpus": vcpus, "memory_mib": memory_mib, "append": append}
    refused = _mte_refusal(suite_dir, workdir, env, timeout, **shape)
    moved = _plain_migration(suite_dir, workdir, env, timeout, **shape)
    return {
        "boot_seconds": refused["boot_seconds"],
        "guest_uptime": refused["uptime"],
        "migrate": refused["migrate"],
        "query_migrate": refused["query_migrate"],
        "qemu_version": refused["qemu"],
        "guest_features": refused["features"],
        "console": refused["console"],
        "nomte_migration": moved,
    }


def run() -> dict[str, Any]:
    """The suite entry for a testbed boot of its own (qemu_reference.qemu_reference)."""
    settings = json.loads((SUITE_DIR / "qemu_reference.json").read_text())
    return run_qemu_reference(SUITE_DIR, **settings)
