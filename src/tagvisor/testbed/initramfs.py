"""A cpio ("newc") initramfs writer, and the testbed's two archives.

The kernel unpacks every gzip'd cpio archive concatenated in the initrd, in order, so
the image is two parts: the userland (busybox, Python, NumPy: built once per package
set and cached) and a small one with tagvisor's source, the suite and ``/init``, built
for every run. Written in Python so no ``cpio`` tool or root is needed (the
``/dev/console`` node is just a header).
"""

from __future__ import annotations

import gzip
import io
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Final

TRAILER: Final = "TRAILER!!!"

#: Parts of the unpacked packages the testbed never uses (kept out of the image).
PRUNE: Final = (
    "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/test",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo",
    "usr/lib/python3.11/__phello__",
    "usr/lib/aarch64-linux-gnu/gconv",
    "usr/lib/aarch64-linux-gnu/audit",
)


class CpioWriter:
    """Writes cpio newc entries (``070701``), padded to 4 bytes, with a trailer."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.inode = 1000
        self.seen: set[str] = set()

    def _header(self, name: str, mode: int, size: int, rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        self.inode += 1
        fields = (
            self.inode, mode, 0, 0, 1, 0, size, 0, 0, rdev[0], rdev[1], len(encoded), 0
        )  # fmt: skip
        header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
        self.out.write(header + encoded)
        self._pad(len(header) + len(encoded))

    def _pad(self, length: int) -> None:
        self.out.write(b"\0" * (-length % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        """A directory entry and those of its parents, each written once."""
        if name in self.seen:
            return
        self.parents(name)
        self.seen.add(name)
        self._header(name, stat.S_IFDIR | mode, 0)

    def parents(self, name: str) -> None:
        """The directory entries of ``name``'s parents that are not written yet."""
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.directory("/".join(parts[:i]))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """A regular file holding ``data``, after its parent directories."""
        self.parents(name)
        self.seen.add(name)
        self._header(name, stat.S_IFREG | mode, len(data))
        self.out.write(data)
        self._pad(len(data))

    def symlink(self, name: str, target: str) -> None:
        """A symbolic link to ``target``, after its parent directories."""
        self.parents(name)
        self.seen.add(name)
        data = target.encode()
        self._header(name, stat.S_IFLNK | 0o777, len(data))
        self.out.write(data)
        self._pad(len(data))

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        """A character device node ``major:minor`` (e.g. dev/console), after its parent
        directories."""
        self.parents(name)
        self.seen.add(name)
        self._header(name, stat.S_IFCHR | mode, 0, (major, minor))

    def tree(self, root: Path, prefix: str = "", prune: Iterable[str] = ()) -> None:
        """Everything under ``root`` as ``prefix/<relative path>``."""
        skip = {root / p for p in prune}
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if here / d not in skip)
            relative = here.relative_to(root).as_posix()
            base = "/".join(p for p in (prefix, relative) if p and p != ".")
            if base:
                self.directory(base)
            for entry in [*dirnames, *sorted(filenames)]:
                path = here / entry
                name = f"{base}/{entry}" if base else entry
                if path.is_symlink():
                    if entry in dirnames:
                        dirnames.remove(entry)  # os.walk does not follow it anyway
                    self.symlink(name, os.readlink(path))
                elif path.is_file():
                    mode = stat.S_IMODE(path.stat().st_mode)
                    self.file(name, path.read_bytes(), mode)

    def close(self) -> None:
        """End the archive with the ``TRAILER!!!`` entry."""
        self._header(TRAILER, 0, 0)


def gzip_cpio(build: object, level: int = 6) -> bytes:
    """Run ``build(writer)`` and return the gzip'd archive."""
    raw = io.BytesIO()
    writer = CpioWriter(raw)
    assert callable(build)
    build(writer)
    writer.close()
    return gzip.compress(raw.getvalue(), compresslevel=level, mtime=0)


def userland_archive(tree: Path) -> bytes:
    """The base image: the unpacked packages, plus the mount points /init needs."""

    def build(writer: CpioWriter) -> None:
        for directory in ("dev", "proc", "sys", "tmp", "run", "root", "opt"):
            writer.directory(directory)
        writer.char_device("dev/console", 5, 1)
        writer.char_device("dev/null", 1, 3, 0o666)
        writer.tree(tree, prune=PRUNE)
        writer.symlink("bin/sh", "busybox")

    return gzip_cpio(build)


def busybox_initrd(busybox: Path, init: str, programs: dict[str, bytes] | None = None) -> bytes:
    """A Linux guest's initrd: busybox-static (from the testbed's userland), /dev/console,
    ``programs`` in /bin and ``init`` as /init, gzip'd cpio (about 1 MB without programs)."""
    from tagvisor.testbed.errors import TestbedError

    if not busybox.is_file():
        raise TestbedError(f"{busybox} is missing: the testbed userland has no busybox-static")

    def build(writer: CpioWriter) -> None:
        for directory in ("dev", "proc", "sys"):
            writer.directory(directory)
        writer.char_device("dev/console", 5, 1)
        writer.file("bin/busybox", busybox.read_bytes(), 0o755)
        writer.symlink("bin/sh", "busybox")
        for name, binary in (programs or {}).items():
            writer.file(f"bin/{name}", binary, 0o755)
        writer.file("init", init.encode(), 0o755)

    return gzip_cpio(build)
