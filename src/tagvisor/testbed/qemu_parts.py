"""QEMU 10 for arm64, to run inside the testbed image as the reference VMM on its KVM.

``qemu-system-arm`` comes from bookworm-backports (10.0.x) through the testbed's private
arm64 apt configuration (:class:`tagvisor.testbed.parts.Apt`): ``apt-get -s`` names its
dependency closure (about 83 packages), each is downloaded and unpacked with ``dpkg -x``,
and only what ``qemu-system-aarch64 -M virt -nic none -kernel`` opens is kept: the
binary and its NEEDED shared-library closure (read from the ELF files themselves); with
``-kernel`` and no NIC it loads no firmware nor option ROM (shown in the testbed). The
result lives under the testbed cache, keyed by the packages' versions, and goes into
the image under ``/opt/suite/qemu``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tagvisor.testbed.errors import TestbedError
from tagvisor.testbed.parts import Apt, KernelChoice, _run, cache_root

PACKAGE: Final = "qemu-system-arm"
#: bookworm-backports holds QEMU 10.0 (bookworm's own 7.2 has QEMU issue #1416).
CHOICE: Final = KernelChoice("qemu", "bookworm", "backports")
BINARY: Final = "usr/bin/qemu-system-aarch64"
#: Where the dynamic loader looks on Debian arm64 (multiarch first).
LIBRARY_DIRS: Final = ("usr/lib/aarch64-linux-gnu", "lib/aarch64-linux-gnu", "usr/lib", "lib")
#: The tree's name under /opt/suite in the image.
IMAGE_DIR: Final = "qemu"
#: The loader the binary's PT_INTERP names, provided by the image's own libc6.
LOADER: Final = "ld-linux-aarch64.so.1"

_INST: Final = re.compile(r"^Inst (\S+?)(?::arm64)? (?:\[[^\]]*\] )?\((\S+) ", re.MULTILINE)


def parse_simulation(text: str) -> dict[str, str]:
    """The packages and versions ``apt-get -s install`` would install (its ``Inst`` lines)."""
    found = dict(_INST.findall(text))
    if PACKAGE not in found:
        tail = "\n".join(text.strip().splitlines()[-10:])
        raise TestbedError(
            f"apt-get -s install {PACKAGE} would not install {PACKAGE} (arm64); is "
            f"bookworm-backports in the package lists? its output ends:\n{tail}"
        )
    return found


# ELF64 little-endian only: Debian's arm64 binaries (and the host's, for tests).
_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NEEDED, _DT_STRTAB = 1, 5


def needed(path: Path) -> list[str]:
    """The DT_NEEDED names of the ELF file ``path``, in order (none for a static one)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise TestbedError(f"{path} is not a little-endian 64-bit ELF file")
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    for index in range(phnum):
        kind, _, offset, vaddr, _, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + index * phentsize
        )
        if kind == _PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif kind == _PT_DYNAMIC:
            dynamic = (offset, filesz)
    if dynamic is None:
        return []
    entries = [struct.unpack_from("<qQ", data, dynamic[0] + at) for at in range(0, dynamic[1], 16)]
    strtab = next((value for tag, value in entries if tag == _DT_STRTAB), None)
    if strtab is None:
        raise TestbedError(f"{path}: a dynamic section without DT_STRTAB")
    # DT_STRTAB is a virtual address: the PT_LOAD segment holding it maps it to the file.
    base = next((o + strtab - v for v, o, size in loads if v <= strtab < v + size), None)
    if base is None:
        raise TestbedError(f"{path}: DT_STRTAB {strtab:#x} lies in no PT_LOAD segment")
    names = []
    for tag, value in entries:
        if tag == _DT_NEEDED:
            end = data.index(b"\0", base + value)
            names.append(data[base + value : end].decode())
    return names


def library_closure(
    tree: Path, binary: str, read_needed: Callable[[Path], list[str]] = needed
) -> list[str]:
    """The tree-relative paths of every shared library ``binary`` loads, transitively,
    found in :data:`LIBRARY_DIRS` under ``tree`` (TestbedError naming a missing one)."""
    found: dict[str, str] = {}
    pending = list(read_needed(tree / binary))
    while pending:
        name = pending.pop(0)
        if name in found:
            continue
        where = next((d for d in LIBRARY_DIRS if (tree / d / name).exists()), None)
        if where is None:
            raise TestbedError(
                f"{name} (needed by {binary}'s closure) is in none of the unpacked packages "
                f"under {tree}: a dependency apt-get -s did not name"
            )
        found[name] = f"{where}/{name}"
        pending.extend(read_needed((tree / where / name).resolve()))
    return sorted(found.values())


@dataclass(frozen=True)
class QemuParts:
    """The reduced QEMU tree on the host: ``bin/`` and ``lib/``."""

    tree: Path
    versions: dict[str, str]

    @property
    def version(self) -> str:
        """The qemu-system-arm package version (``1:10.0.2+ds-1~bpo12+1``)."""
        return self.versions[PACKAGE]

    def files(self) -> dict[str, bytes]:
        """The tree as ``/opt/suite`` files (``qemu/bin/...``), for run_suite's ``files``."""
        return {
            f"{IMAGE_DIR}/{path.relative_to(self.tree).as_posix()}": path.read_bytes()
            for path in sorted(self.tree.rglob("*"))
            if path.is_file() and path.name != ".versions.json"
        }


def _key(versions: dict[str, str]) -> str:
    text = ",".join(f"{name}={versions[name]}" for name in sorted(versions))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _reduce(unpacked: Path, tree: Path, libraries: Iterable[str]) -> None:
    """Copy the binary and its libraries (flat, into ``lib/``) but the C library and its
    loader, which the image's libc6 (the same bookworm version) provides."""
    tmp = tree.with_name(tree.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "bin").mkdir(parents=True)
    (tmp / "lib").mkdir()
    shutil.copyfile(unpacked / BINARY, tmp / "bin" / Path(BINARY).name)
    for library in libraries:
        if Path(library).name != LOADER and not Path(library).name.startswith("libc.so"):
            shutil.copyfile((unpacked / library).resolve(), tmp / "lib" / Path(library).name)
    shutil.rmtree(tree, ignore_errors=True)
    tmp.replace(tree)


def fetch_qemu(*, refresh: bool = False, say: Callable[[str], None] = print) -> QemuParts:
    """QEMU's reduced arm64 tree, downloaded and reduced the first time (and again when
    ``refresh`` finds newer package versions)."""
    root = cache_root()
    stamp = root / "qemu-parts.json"
    if not refresh and stamp.is_file():
        recorded = json.loads(stamp.read_text())
        tree = Path(recorded["tree"])
        if (tree / "bin" / Path(BINARY).name).is_file():
            return QemuParts(tree, dict(recorded["versions"]))
    # Its own apt root: the kernel and userland fetches rewrite theirs (sources.list).
    apt = Apt(root / "apt-qemu", CHOICE)
    say(f"testbed: reading arm64 package lists ({apt.dist}) for {PACKAGE}")
    apt.update()
    simulated = _run(
        ["apt-get", *apt.options, "-s", "-t", apt.dist, "--no-install-recommends",
         "install", PACKAGE],
        f"apt-get -s install {PACKAGE} (arm64, {apt.dist})",
    )  # fmt: skip
    versions = parse_simulation(simulated)
    tree = root / f"qemu-{_key(versions)}"
    if refresh or not (tree / "bin" / Path(BINARY).name).is_file():
        say(f"testbed: downloading {len(versions)} arm64 packages for {PACKAGE}")
        unpacked = root / "qemu-unpacked"
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir()
        for name, version in versions.items():
            deb = apt.download(name, version)
            _run(["dpkg-deb", "-x", str(deb), str(unpacked)], f"dpkg-deb -x {deb.name}")
        _reduce(unpacked, tree, library_closure(unpacked, BINARY))
        shutil.rmtree(unpacked, ignore_errors=True)
        (tree / ".versions.json").write_text(json.dumps(versions))
    stamp.write_text(json.dumps({"tree": str(tree), "versions": versions}))
    return QemuParts(tree, versions)
