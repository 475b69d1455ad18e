"""Build small AArch64 Linux programs with Debian's cross compiler and run them under
qemu-aarch64. Shared by the tests that hold tagvisor against real headers and QEMU.

Builds are cached under ``.pytest_cache/aarch64`` keyed by a hash of the source, the
flags and the compiler's version, so a suite builds each program once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

CROSS_CC: Final = "aarch64-linux-gnu-gcc"
QEMU_USER: Final = "qemu-aarch64"
CACHE: Final = Path(__file__).resolve().parents[2] / ".pytest_cache" / "aarch64"
SETUP_HINT: Final = (
    "needs qemu-aarch64 (Debian package qemu-user) and the aarch64 cross compiler "
    "(gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, linux-libc-dev-arm64-cross); "
    "run scripts/setup as root to install them"
)


class ToolchainMissing(RuntimeError):
    """The cross compiler or qemu-aarch64 is not installed."""


def require_toolchain() -> None:
    missing = [tool for tool in (CROSS_CC, QEMU_USER) if shutil.which(tool) is None]
    if missing:
        raise ToolchainMissing(f"{', '.join(missing)} not found: {SETUP_HINT}")


def build(source: Path, cflags: Sequence[str] = ("-O1", "-static")) -> Path:
    """Compile ``source`` once (cached) and return the binary's path."""
    require_toolchain()
    version = subprocess.run(
        [CROSS_CC, "--version"], capture_output=True, text=True, check=True
    ).stdout
    key = hashlib.sha256(
        source.read_bytes() + "\0".join(cflags).encode() + version.encode()
    ).hexdigest()[:16]
    binary = CACHE / f"{source.stem}-{key}"
    if not binary.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = CACHE / f".{binary.name}.{os.getpid()}"
        result = subprocess.run(
            [CROSS_CC, *cflags, "-o", str(partial), str(source)],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise RuntimeError(f"building {source.name} failed:\n{result.stderr}")
        os.replace(partial, binary)  # atomic: a concurrent build never sees half a file
    return binary


def run(binary: Path, stdin: str = "", qemu_args: Sequence[str] = ("-cpu", "max")) -> str:
    """Run ``binary`` under qemu-aarch64 and return its standard output."""
    result = subprocess.run(
        [QEMU_USER, *qemu_args, str(binary)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode:
        raise RuntimeError(f"{binary.name} exited {result.returncode}:\n{result.stderr}")
    return result.stdout
