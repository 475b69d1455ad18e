"""Assemble small AArch64 snippets with binutils, cached per source.

``assemble(source, base)`` returns the flat image of ``source`` linked at ``base``;
``link(source, base)`` the ELF (for qemu-aarch64). Both use
``-march=armv8.5-a+memtag``. Builds are cached under ``.pytest_cache/aarch64-asm`` by a
hash of the source, the base and the assembler's version.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Final

from tests.support.cross import CACHE, SETUP_HINT, ToolchainMissing

AS: Final = "aarch64-linux-gnu-as"
LD: Final = "aarch64-linux-gnu-ld"
OBJCOPY: Final = "aarch64-linux-gnu-objcopy"
MARCH: Final = "-march=armv8.5-a+memtag"
ASM_CACHE: Final = CACHE.parent / "aarch64-asm"


@cache
def _version() -> str:
    missing = [tool for tool in (AS, LD, OBJCOPY) if shutil.which(tool) is None]
    if missing:
        raise ToolchainMissing(f"{', '.join(missing)} not found: {SETUP_HINT}")
    return subprocess.run([AS, "--version"], capture_output=True, text=True, check=True).stdout


def _run(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr}")


def link(source: str, base: int) -> Path:
    """The ELF of ``source`` (GNU as syntax, entry ``_start`` at ``base``), cached."""
    version = _version()
    key = hashlib.sha256(f"{source}\0{base:#x}\0{MARCH}\0{version}".encode()).hexdigest()[:20]
    elf = ASM_CACHE / f"{key}.elf"
    if not elf.exists():
        ASM_CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            text = ".text\n.globl _start\n_start:\n" + source + "\n"
            (work / "a.S").write_text(text)
            _run([AS, MARCH, "-o", str(work / "a.o"), str(work / "a.S")])
            _run([LD, "-static", f"-Ttext={base:#x}", "-e", "_start", "-o", str(work / "a.elf"),
                  str(work / "a.o")])  # fmt: skip
            partial = ASM_CACHE / f".{key}.{os.getpid()}"
            shutil.copy(work / "a.elf", partial)
            os.replace(partial, elf)
    return elf


def assemble(source: str, base: int) -> bytes:
    """The flat binary of ``source`` linked at ``base`` (sections laid out from it)."""
    elf = link(source, base)
    image = elf.with_suffix(".bin")
    if not image.exists():
        partial = elf.with_name(f".{elf.stem}.{os.getpid()}.bin")
        _run([OBJCOPY, "-O", "binary", str(elf), str(partial)])
        os.replace(partial, image)
    return image.read_bytes()
