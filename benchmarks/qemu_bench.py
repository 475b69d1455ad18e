"""Helpers shared by the QEMU halves of the benchmarks (bench_cpu_qemu, bench_migration_qemu).

They run the prebuilt guests of ``src/tagvisor/guests`` under ``qemu-system-aarch64 -M
virt,mte=on -cpu max -accel tcg`` (the QEMU ``scripts/fetch-qemu`` installs, or the one
``TAGVISOR_QEMU_SYSTEM`` names), give them the boot configuration block of
docs/guest-abi.md as ``-device loader`` words, read their ucall lines from the console,
and talk QMP over a unix socket. Standard library only, so the benchmarks run wherever
the QEMU does.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import IO, Any, Final

REPO: Final = Path(__file__).resolve().parents[1]
PREBUILT_DIR: Final = REPO / "src" / "tagvisor" / "guests"
FETCH_QEMU: Final = REPO / "scripts" / "fetch-qemu"

BOOT_CONFIG_ADDR: Final = 0x4000_1000
BOOT_MAGIC: Final = 0x4743_5654  # "TVCG"
TCF_SYNC: Final = 1
UCALL_SYNC: Final = 1
UCALL_DONE: Final = 4
MiB: Final = 1 << 20
GiB: Final = 1 << 30


class QemuBenchError(RuntimeError):
    """QEMU is missing, failed, or a guest did not do what the benchmark expects."""


@cache
def qemu_binary() -> Path:
    """``$TAGVISOR_QEMU_SYSTEM``, else what ``scripts/fetch-qemu`` prints (it installs
    QEMU into .cache/qemu the first time and reuses it afterwards)."""
    override = os.environ.get("TAGVISOR_QEMU_SYSTEM")
    if override:
        return Path(override)
    done = subprocess.run(
        [str(FETCH_QEMU)], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode:
        raise QemuBenchError(f"scripts/fetch-qemu failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


@cache
def qemu_version(binary: Path) -> str:
    """``10.0.2`` and the like."""
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else out.strip()


def guest_image(name: str) -> Path:
    """The committed ELF image of guest ``name`` (guests/<name>, scripts/build-guests)."""
    path = PREBUILT_DIR / f"{name}.elf"
    if not path.is_file():
        raise QemuBenchError(f"{path} not found: run scripts/build-guests")
    return path


def boot_loader_args(
    arg: int, *, ram_size: int, mode: int = TCF_SYNC, mte: bool = True, seed: int = 0
) -> list[str]:
    """``-device loader`` options writing the boot block (docs/guest-abi.md, with the
    guests' program argument at offset 24 and IRG seed at 32); zero words are left out."""
    fields = (
        (0, 4, BOOT_MAGIC),
        (4, 4, 1),
        (8, 4, mode),
        (12, 4, int(mte)),
        (16, 8, ram_size),
        (24, 8, arg),
        (32, 4, seed),
    )
    args: list[str] = []
    for offset, width, value in fields:
        if value:
            address = BOOT_CONFIG_ADDR + offset
            args += ["-device", f"loader,addr={address:#x},data={value:#x},data-len={width}"]
    return args


def qemu_command(
    binary: Path,
    guest: str,
    arg: int,
    *,
    ram_size: int = 128 * MiB,
    seed: int = 0,
    extra: Sequence[str] = (),
) -> list[str]:
    """One guest under TCG on ``virt`` with MTE, its console on stdout."""
    return [
        str(binary),
        "-M",
        "virt,mte=on",
        "-cpu",
        "max",
        "-accel",
        "tcg",
        "-m",
        f"{ram_size // MiB}M",
        "-display",
        "none",
        "-nodefaults",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(guest_image(guest)),
        *boot_loader_args(arg, ram_size=ram_size, seed=seed),
        *extra,
    ]


def parse_ucalls(text: str) -> list[tuple[int, ...]]:
    """(cmd, args...) of every ``ucall <cmd> <args>`` console line (hex, no 0x)."""
    found = []
    for line in text.replace("\r", "").splitlines():
        words = line.split()
        if words and words[0] == "ucall" and len(words) > 1:
            found.append(tuple(int(word, 16) for word in words[1:]))
    return found


def reports(ucalls: Sequence[tuple[int, ...]], report_id: int) -> list[tuple[int, ...]]:
    """The values after the id of every UCALL_SYNC report ``report_id``."""
    return [u[2:] for u in ucalls if len(u) > 1 and u[0] == UCALL_SYNC and u[1] == report_id]


def done_status(ucalls: Sequence[tuple[int, ...]]) -> int | None:
    statuses = [u[1] for u in ucalls if u[0] == UCALL_DONE and len(u) > 1]
    return statuses[-1] if statuses else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Console:
    """Collects a QEMU's console (its stdout) on a thread; waits for ucall lines."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for raw in iter(self._stream.readline, b""):
            with self._changed:
                self._lines.append(raw.decode(errors="replace").rstrip("\r\n"))
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def ucalls(self) -> list[tuple[int, ...]]:
        return parse_ucalls(self.text)

    def wait_report(self, report_id: int, timeout: float, *, after: int = 0) -> tuple[int, ...]:
        """The values of the first report ``report_id`` on console line ``after`` or later."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = reports(parse_ucalls("\n".join(self._lines[after:])), report_id)
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    why = "before the console ended" if self._closed else f"within {timeout} s"
                    raise QemuBenchError(
                        f"no report {report_id:#x} {why}; console:\n" + "\n".join(self._lines[-20:])
                    )
                self._changed.wait(left)

    def line_count(self) -> int:
        with self._changed:
            return len(self._lines)


class Qmp:
    """A minimal QMP client over a unix socket: greeting, qmp_capabilities, commands.

    Asynchronous events that arrive between a command and its answer are kept in
    :attr:`events`.
    """

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.connect(str(path))
                break
            except OSError:
                self._sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self._sock.settimeout(timeout)
        self._file = self._sock.makefile("rwb")
        self.events: list[dict[str, Any]] = []
        greeting = self._receive()
        if "QMP" not in greeting:
            raise QemuBenchError(f"not a QMP greeting: {greeting}")
        self.command("qmp_capabilities")

    def _receive(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise QemuBenchError("QMP connection closed")
        message: dict[str, Any] = json.loads(line)
        return message

    def command(self, name: str, **arguments: Any) -> Any:
        """Run ``name``; its ``return`` value, or QemuBenchError with QEMU's ``error``."""
        request: dict[str, Any] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        self._file.write(json.dumps(request).encode() + b"\r\n")
        self._file.flush()
        while True:
            message = self._receive()
            if "event" in message:
                self.events.append(message)
                continue
            if "error" in message:
                raise QemuBenchError(f"QMP {name} {arguments}: {message['error']}")
            return message.get("return")

    def hmp(self, command_line: str) -> str:
        """A human monitor command through QMP (``info ramblock`` and the like)."""
        out: str = self.command("human-monitor-command", **{"command-line": command_line})
        return out

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._sock.close()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Ends a QEMU this module started: SIGTERM, then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ram_blocks(qmp: Qmp) -> dict[str, int]:
    """Name and size in bytes of every RAM block (HMP ``info ramblock``): under TCG with
    ``mte=on`` the allocation tags are a block of their own (``mach-virt.tag``)."""
    blocks = {}
    for line in qmp.hmp("info ramblock").splitlines():
        # Block Name, PSize ("4 KiB"), Offset, Used, Total, HVA, RO
        match = re.match(r"\s*(\S+)\s+\d+ \w+\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)\s", line)
        if match:
            blocks[match.group(1)] = int(match.group(2), 16)
    return blocks
