"""Kernel modules for the testbed's network and swap, taken from the kernel's own package.

Debian builds virtio-net (and, in 6.1, virtio-pci) as modules, and zram (6.1: with
zsmalloc) too, and the initramfs has no /lib/modules. :func:`network_modules` and
:func:`swap_modules` read the cached linux-image .deb once, pick the modules wanted with
everything they depend on (from each module's ``depends=`` in .modinfo), decompress
.ko.xz (6.12 compresses them), and return them in load order for /init's ``insmod``.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

from tagvisor.testbed.errors import TestbedError

#: What a virtio-net-pci NIC needs; modules built into a kernel are simply absent.
NETWORK: Final = ("virtio_pci", "virtio_net")
#: A swap device in RAM for the host-memory scenarios (tagvisor.conformance.host_memory).
SWAP: Final = ("zram",)
#: A module's .modinfo holds at most a few KiB; a bound for a hostile package.
MAX_MODULE: Final = 16 << 20


def _name(member: str) -> str | None:
    match = re.search(r"/([^/]+)\.ko(?:\.xz)?$", member)
    return match.group(1).replace("-", "_") if match else None


def _depends(image: bytes) -> list[str]:
    match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", image)
    if not match or not match.group(1):
        return []
    return [name.decode().replace("-", "_") for name in match.group(1).split(b",")]


class _Lazy:
    """A module's bytes, decompressed the first time they are asked for."""

    def __init__(self, data: bytes, xz: bool, decompress: Callable[[bytes], bytes]) -> None:
        self._data, self._xz, self._decompress = data, xz, decompress

    def bytes(self) -> bytes:
        if self._xz:
            self._data, self._xz = self._decompress(self._data), False
        return self._data


def _read_modules(deb: Path) -> dict[str, _Lazy]:
    """Every module of the package under kernel/drivers/{net,virtio} and net/core."""
    import lzma  # here, not at the top: the image, which imports this package, has no liblzma

    wanted = ("/kernel/drivers/net/", "/kernel/drivers/virtio/", "/kernel/net/core/", "/lib/")
    found: dict[str, bytes] = {}
    compressed: set[str] = set()
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            for member in tar:
                name = _name(member.name)
                if name is None or not member.isfile() or member.size > MAX_MODULE:
                    continue
                if not any(part in member.name for part in wanted):
                    continue
                source = tar.extractfile(member)
                assert source is not None
                found[name] = source.read()
                if member.name.endswith(".xz"):
                    compressed.add(name)
    # Only the modules a run loads are decompressed (the package has thousands).
    return {name: _Lazy(data, name in compressed, lzma.decompress) for name, data in found.items()}


def network_modules(deb: Path, cache: Path) -> list[tuple[str, bytes]]:
    """(name, .ko bytes) for :data:`NETWORK` and their dependencies, dependencies first."""
    return modules_with_dependencies(NETWORK, deb, cache)


def swap_modules(deb: Path, cache: Path) -> list[tuple[str, bytes]]:
    """(name, .ko bytes) for :data:`SWAP` and their dependencies, dependencies first."""
    return modules_with_dependencies(SWAP, deb, cache)


def modules_with_dependencies(
    wanted: tuple[str, ...], deb: Path, cache: Path
) -> list[tuple[str, bytes]]:
    """(name, .ko bytes) for ``wanted`` and their dependencies, dependencies first; the
    choice and the modules cached in ``cache``."""
    if not deb.is_file():
        raise TestbedError(f"{deb} is missing: fetch the testbed's parts again")
    cache.mkdir(parents=True, exist_ok=True)
    order_file = cache / "order"
    if not order_file.is_file():
        available = _read_modules(deb)
        order: list[str] = []

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in order or name not in available:
                return  # loaded already, or built into the kernel
            if name in chain:
                raise TestbedError(f"module dependency cycle: {' -> '.join((*chain, name))}")
            for dependency in _depends(available[name].bytes()):
                visit(dependency, (*chain, name))
            order.append(name)

        for name in wanted:
            visit(name, ())
        for name in order:
            (cache / f"{name}.ko").write_bytes(available[name].bytes())
        order_file.write_text("\n".join(order) + "\n")
    names = order_file.read_text().split()
    return [(name, (cache / f"{name}.ko").read_bytes()) for name in names]
