"""Run a bare-metal guest under ``qemu-system-aarch64 -M virt,mte=on -cpu max``.

The QEMU is the one ``scripts/fetch-qemu`` unpacks into ``.cache/qemu`` (QEMU >= 8:
Debian 12's 7.2 aliases the tags of a page's granules at EL1, QEMU issue #1416), or the
binary named by ``TAGVISOR_QEMU_SYSTEM``. When neither is usable the oracle tests fail
with :data:`SETUP_HINT` rather than skip.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

from tagvisor.testbed.parts import fetched_qemu
from tests.support.guests import DEFAULT_RAM_SIZE, BootConfig
from tests.support.transcript import Transcript, parse_transcript

MIN_VERSION: Final = (8, 0)
SETUP_HINT: Final = (
    "run scripts/setup as root: it installs qemu-system-aarch64 >= 8 from "
    "bookworm-backports into .cache/qemu with scripts/fetch-qemu"
)
DEFAULT_TIMEOUT: Final = 20.0


class QemuSystemMissing(RuntimeError):
    """No usable qemu-system-aarch64 (missing, not runnable, or older than 8.0)."""


class GuestRunError(RuntimeError):
    """QEMU failed, or the guest did not power off in time."""


def qemu_system_binary() -> Path:
    override = os.environ.get("TAGVISOR_QEMU_SYSTEM")
    return Path(override) if override else fetched_qemu()


@cache
def qemu_version(binary: Path) -> tuple[int, int, int]:
    """The version ``binary --version`` reports."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise QemuSystemMissing(f"{binary} does not run ({exc}): {SETUP_HINT}") from exc
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise QemuSystemMissing(f"{binary} --version said {out!r}: {SETUP_HINT}")
    major, minor, micro = (int(group) for group in match.groups())
    return major, minor, micro


def require_qemu_system() -> Path:
    """The qemu-system-aarch64 to use, or :class:`QemuSystemMissing` saying what to do."""
    binary = qemu_system_binary()
    if not binary.is_file():
        raise QemuSystemMissing(f"{binary} not found: {SETUP_HINT}")
    version = qemu_version(binary)
    if version[:2] < MIN_VERSION:
        raise QemuSystemMissing(
            f"{binary} is QEMU {'.'.join(map(str, version))}; the oracle needs >= 8.0 "
            f"(7.2 has QEMU issue #1416, tags aliased within a page): {SETUP_HINT}"
        )
    return binary


@dataclass(frozen=True)
class GuestRun:
    """One QEMU run: the parsed console transcript and how it ended."""

    transcript: Transcript
    #: False when the run was stopped at its time limit (``stop_after``).
    powered_off: bool
    stderr: str


def qemu_command(
    binary: Path, elf: Path, config: BootConfig | None, *, machine_mte: bool = True
) -> list[str]:
    """The command line for one run of ``elf`` with ``config`` (None: no block)."""
    ram = config.ram_size if config is not None else DEFAULT_RAM_SIZE
    return [
        str(binary),
        "-M",
        f"virt,mte={'on' if machine_mte else 'off'}",
        "-cpu",
        "max",
        "-m",
        f"{ram >> 20}M",
        "-nographic",
        "-nodefaults",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(elf),
        *(config.qemu_loader_args() if config is not None else []),
    ]


def _text(stream: str | bytes | None) -> str:
    if stream is None:
        return ""
    return stream.decode(errors="replace") if isinstance(stream, bytes) else stream


def run_guest(
    elf: Path,
    config: BootConfig | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    stop_after: float | None = None,
    machine_mte: bool = True,
) -> GuestRun:
    """Boot ``elf`` and return its transcript once it powers off.

    ``stop_after`` (seconds) ends a guest that runs on, and returns what it printed
    until then; without it a guest still running after ``timeout`` is an error.
    """
    command = qemu_command(require_qemu_system(), elf, config, machine_mte=machine_mte)
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=stop_after if stop_after is not None else timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout)
        if stop_after is None:
            raise GuestRunError(
                f"{elf.name} did not power off within {timeout} s; it printed:\n{output}"
            ) from exc
        return GuestRun(parse_transcript(output), powered_off=False, stderr=_text(exc.stderr))
    if done.returncode != 0:
        raise GuestRunError(
            f"qemu-system-aarch64 exited {done.returncode} running {elf.name}:\n"
            f"{done.stderr}\n{' '.join(command)}"
        )
    return GuestRun(parse_transcript(done.stdout), powered_off=True, stderr=done.stderr)
