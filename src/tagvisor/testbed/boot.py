"""Build the testbed image and boot it: the host side.

:func:`run_suite` packs tagvisor's source and a suite into an initramfs over the
cached userland, boots Debian's arm64 kernel under ``qemu-system-aarch64 -M
virt,virtualization=on,mte=on`` (so the guest kernel runs at EL2 and has a real KVM
with MTE), waits for the framed results on the serial console (hard timeout), and
returns them with the suite's exit status.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import py_compile
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tagvisor.testbed import guest
from tagvisor.testbed.errors import TestbedError
from tagvisor.testbed.initramfs import CpioWriter, gzip_cpio, userland_archive
from tagvisor.testbed.modules import network_modules, swap_modules
from tagvisor.testbed.parts import Parts, cache_root, fetch, modules_deb

PACKAGE_DIR: Final = Path(__file__).resolve().parents[1]  # src/tagvisor
#: The whole conformance suite boots, runs and prints its ~10,000 fields in 2-3 min under
#: TCG on a shared 2-core host (the memory scenarios alone add 17-25 s to the suite).
DEFAULT_TIMEOUT: Final = 300.0
GUEST_SRC: Final = "opt/tagvisor/src"
GUEST_SUITE: Final = "opt/suite"
#: A ramfs: its files live in the page cache and are not shmem, like a disk file's
#: pages as far as KVM's MTE rules go (tmpfs files are shmem, which 6.2+ accepts).
PAGECACHE_DIR: Final = "/mnt/pagecache"
#: QEMU's user-mode network: the guest's address, and the host's loopback as the
#: guest reaches it.
GUEST_IP: Final = "10.0.2.15"
HOST_IP: Final = "10.0.2.2"
#: The zram swap device /init makes (bytes; zram stores only what is swapped out).
ZRAM_SIZE: Final = 64 << 20

INIT: Final = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t tmpfs tmp /tmp
/bin/busybox ip link set lo up
if [ -f /opt/modules/order ]; then
    for module in $(/bin/busybox cat /opt/modules/order); do
        /bin/busybox insmod /opt/modules/$module.ko
    done
    /bin/busybox ip link set eth0 up
    /bin/busybox ip addr add {guest_ip}/24 dev eth0
    /bin/busybox ip route add default via {host_ip}
fi
# A swap device in RAM for the host-memory scenarios (zram's modules, if the kernel has
# them as modules; ZRAM_SIZE, tagvisor.conformance.compare.TESTBED_SWAP_PAGES).
for module in $(/bin/busybox cat /opt/swap-modules/order 2>/dev/null); do
    /bin/busybox insmod /opt/swap-modules/$module.ko
done
if [ -e /sys/block/zram0/disksize ]; then
    echo {zram_size} > /sys/block/zram0/disksize
    /bin/busybox mkswap /dev/zram0 >/dev/null && /bin/busybox swapon /dev/zram0
fi
/bin/busybox mkdir -p {pagecache}
/bin/busybox mount -t ramfs pagecache {pagecache}
/bin/busybox mkdir -p /dev/hugepages
/bin/busybox mount -t hugetlbfs none /dev/hugepages 2>/dev/null
echo 1 > /proc/sys/kernel/printk
echo 8 > /proc/sys/vm/nr_hugepages
echo "=== TAGVISOR-TESTBED-INIT $(/bin/busybox uname -r)"
export PYTHONPATH=/opt/tagvisor/src:/opt/suite:/opt/site PYTHONDONTWRITEBYTECODE=1 HOME=/root
export PYTHONHASHSEED=0
/usr/bin/python3.11 -m tagvisor.testbed.guest {module}
echo "=== TAGVISOR-TESTBED-EXIT $?"
echo o > /proc/sysrq-trigger
/bin/busybox sleep 30
"""

QEMU_ARGS: Final = (
    "-M", "virt,virtualization=on,mte=on,gic-version=3",
    "-cpu", "max,pauth-impdef=on",
    "-accel", "tcg,thread=multi",
    "-smp", "2",
    "-nographic", "-no-reboot",
)  # fmt: skip
#: The testbed's memory unless a run asks for more (QEMU inside it needs 2048).
DEFAULT_MEMORY_MIB: Final = 1024
APPEND: Final = "console=ttyAMA0 panic=-1"


@dataclass
class SuiteRun:
    """A finished testbed run."""

    status: int  # the suite's exit status (0: run() returned)
    result: Any  # what run() returned
    kernel: str  # uname -r inside the image
    error: str | None
    console: str  # the whole serial transcript
    seconds_boot: float  # QEMU start to power-off
    seconds_suite: float  # run() inside the image
    seconds_build: float  # the initramfs (host side)
    dmesg: list[str] = field(default_factory=list)
    kernel_package: str = ""
    host: Any = None  # what run_suite's ``alongside`` returned (or the exception it raised)


def unframe(console: str) -> dict[str, Any]:
    """The payload :func:`tagvisor.testbed.guest.frame` printed, checked against its hash."""
    begin = re.search(re.escape(guest.BEGIN) + r" (\d+) ([0-9a-f]{64})", console)
    if begin is None:
        raise TestbedError("no results on the console (the suite did not finish)")
    count, digest = int(begin.group(1)), begin.group(2)
    chunks: dict[int, str] = {}
    for match in re.finditer(re.escape(guest.LINE) + r" (\d+) ([A-Za-z0-9+/=]+)", console):
        chunks.setdefault(int(match.group(1)), match.group(2))
    missing = [i for i in range(count) if i not in chunks]
    if missing:
        raise TestbedError(f"results garbled on the console: chunks {missing[:5]} missing")
    data = "".join(chunks[i] for i in range(count))
    if hashlib.sha256(data.encode()).hexdigest() != digest:
        raise TestbedError("results garbled on the console: SHA-256 mismatch")
    payload: dict[str, Any] = json.loads(base64.b64decode(data))
    return payload


@dataclass(frozen=True)
class Network:
    """QEMU user-mode networking for a run: ``forwards`` are (host port, guest port)
    pairs on 127.0.0.1 into the image; the image reaches the host's loopback at
    :data:`HOST_IP`."""

    forwards: tuple[tuple[int, int], ...] = ()

    def qemu_args(self) -> list[str]:
        """The ``-nic`` arguments: a virtio-net NIC on user-mode networking, with the forwards as
        ``hostfwd`` rules."""
        rules = "".join(f",hostfwd=tcp:127.0.0.1:{h}-{GUEST_IP}:{g}" for h, g in self.forwards)
        return ["-nic", f"user,model=virtio-net-pci{rules}"]


def _source_archive(
    suite_module: str,
    suite_file: Path | None,
    files: dict[str, bytes],
    modules: list[tuple[str, bytes]],
    swap: list[tuple[str, bytes]],
) -> bytes:
    """tagvisor's package (with hash-checked bytecode), the suite and its files, the
    network's kernel modules if any, zram's, and /init."""
    with tempfile.TemporaryDirectory(prefix="tagvisor-testbed-") as tmp:
        staging = Path(tmp) / "tagvisor"
        shutil.copytree(
            PACKAGE_DIR,
            staging,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        for source in staging.rglob("*.py"):
            relative = source.relative_to(staging.parent).as_posix()
            py_compile.compile(
                str(source),
                cfile=str(source.parent / "__pycache__" / f"{source.stem}.cpython-311.pyc"),
                dfile=f"/{GUEST_SRC}/{relative}",
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                doraise=True,
            )

        def build(writer: CpioWriter) -> None:
            writer.tree(staging, f"{GUEST_SRC}/tagvisor")
            if suite_file is not None:
                writer.file(f"{GUEST_SUITE}/{suite_file.name}", suite_file.read_bytes())
            for name, data in files.items():
                writer.file(f"{GUEST_SUITE}/{name}", data)
            if modules:
                for name, data in modules:
                    writer.file(f"opt/modules/{name}.ko", data)
                writer.file("opt/modules/order", "".join(f"{n}\n" for n, _ in modules).encode())
            for name, data in swap:
                writer.file(f"opt/swap-modules/{name}.ko", data)
            writer.file("opt/swap-modules/order", "".join(f"{n}\n" for n, _ in swap).encode())
            writer.file(
                "init",
                INIT.format(
                    module=suite_module,
                    pagecache=PAGECACHE_DIR,
                    guest_ip=GUEST_IP,
                    host_ip=HOST_IP,
                    zram_size=ZRAM_SIZE,
                ).encode(),
                0o755,
            )

        return gzip_cpio(build, level=1)


def _suite_spec(suite: str) -> tuple[str, Path | None]:
    """A dotted module inside tagvisor, or a ``.py`` file on the host."""
    path = Path(suite)
    if suite.endswith(".py"):
        if not path.is_file():
            raise TestbedError(f"suite file {suite} not found")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", path.stem):
            raise TestbedError(f"suite file name {path.name} is not a Python module name")
        return path.stem, path
    if not re.fullmatch(r"[A-Za-z_][\w.]*", suite):
        raise TestbedError(f"suite {suite!r} is neither a module name nor a .py file")
    return suite, None


def build_initrd(
    parts: Parts,
    suite: str,
    *,
    files: dict[str, bytes] | None = None,
    network: Network | None = None,
) -> Path:
    """The initrd for ``suite``: cached userland archive + this run's source archive."""
    root = cache_root()
    key = hashlib.sha256(parts.userland_id.encode()).hexdigest()[:16]
    base = root / f"userland-{key}.cpio.gz"
    if not base.is_file():
        tmp = base.with_suffix(".tmp")
        tmp.write_bytes(userland_archive(parts.userland))
        tmp.replace(base)
        for old in root.glob("userland-*.cpio.gz"):  # archives of older package sets
            if old != base:
                old.unlink()
    module, file = _suite_spec(suite)
    initrd = root / f"initrd-{os.getpid()}.gz"  # per run: testbeds may boot side by side
    tmp = initrd.with_suffix(".tmp")
    with tmp.open("wb") as out:
        with base.open("rb") as source:
            shutil.copyfileobj(source, out)
        network_part = _modules(parts) if network else []
        out.write(_source_archive(module, file, files or {}, network_part, _swap(parts)))
    tmp.replace(initrd)
    return initrd


def _modules(parts: Parts) -> list[tuple[str, bytes]]:
    return network_modules(modules_deb(parts), cache_root() / f"modules-{parts.kernel_package}")


def _swap(parts: Parts) -> list[tuple[str, bytes]]:
    cache = cache_root() / f"modules-{parts.kernel_package}" / "swap"
    return swap_modules(modules_deb(parts), cache)


def qemu_command(
    parts: Parts,
    initrd: Path,
    network: Network | None = None,
    memory_mib: int = DEFAULT_MEMORY_MIB,
) -> list[str]:
    """The QEMU command line that boots ``parts``' kernel with ``initrd``: an ``-M virt`` machine
    with virtualization and MTE on (so KVM runs inside), TCG, ``memory_mib`` of RAM, the serial
    console on QEMU's standard output, and no network unless ``network`` is given."""
    nic = network.qemu_args() if network is not None else ["-nic", "none"]
    return [
        str(parts.qemu),
        *QEMU_ARGS,
        "-m", str(memory_mib),
        *nic,
        "-kernel", str(parts.kernel),
        "-initrd", str(initrd),
        "-append", APPEND,
    ]  # fmt: skip


class ConsoleWatch:
    """The serial console of a running testbed, for a host side that waits on it."""

    def __init__(self, path: Path, process: subprocess.Popen[bytes]) -> None:
        self.path = path
        self.process = process

    def text(self) -> str:
        """Everything the console has printed so far, undecodable bytes replaced."""
        return self.path.read_bytes().decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` on the console, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.text())
            if match is not None:
                return match
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise TestbedError(f"the testbed never printed {pattern!r}")
            time.sleep(0.1)


HostSide = Callable[[ConsoleWatch], Any]


def console_log() -> Path:
    """This process's testbed console, while a run boots (``ConsoleWatcher`` follows it).

    Each process writes its own, so that two testbeds booting at once (two sessions, or
    a suite beside a CLI run) do not interleave their consoles; when a run ends its
    console becomes ``console.log`` in the cache, the last run's, for people to read.
    """
    return cache_root() / f"console-{os.getpid()}.log"


def _keep_last_console(initrd: Path) -> Path:
    """The run's console as the cache's ``console.log`` (and its QEMU stderr as
    ``qemu-stderr.log``); this run's initrd removed. Returns where the console is."""
    root = cache_root()
    for mine, last in (
        (console_log(), root / "console.log"),
        (root / f"qemu-stderr-{os.getpid()}.log", root / "qemu-stderr.log"),
    ):
        if mine.is_file():
            mine.replace(last)
    initrd.unlink(missing_ok=True)
    return root / "console.log"


def _boot(
    command: list[str], timeout: float, alongside: HostSide | None
) -> tuple[str, str, int, Any]:
    """Run QEMU to power-off (``alongside`` on a thread meanwhile): console, stderr, exit
    status, and what ``alongside`` returned (or raised)."""
    log = console_log()
    errors = cache_root() / f"qemu-stderr-{os.getpid()}.log"
    with log.open("wb") as out, errors.open("wb") as err:
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        except OSError as exc:
            raise TestbedError(f"could not start {command[0]}: {exc}") from None
        host: list[Any] = []
        thread = None
        if alongside is not None:

            def host_side() -> None:
                try:
                    host.append(alongside(ConsoleWatch(log, process)))
                except Exception as exc:  # reported with the run, not lost in a thread
                    host.append(exc)

            thread = threading.Thread(target=host_side, name="testbed-host", daemon=True)
            thread.start()
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            console = log.read_bytes().decode(errors="replace")
            tail = "\n".join(console.splitlines()[-20:])
            raise TestbedError(
                f"the testbed did not power off within {timeout:.0f} s (console in {log}):\n{tail}"
            ) from None
        if thread is not None:
            thread.join(timeout)
    console = log.read_bytes().decode(errors="replace")
    stderr = errors.read_bytes().decode(errors="replace")
    return console, stderr, returncode, host[0] if host else None


def run_suite(
    suite: str = "tagvisor.conformance.suite",
    *,
    kernel_suite: str = "6.1",
    timeout: float = DEFAULT_TIMEOUT,
    say: Callable[[str], None] = print,
    files: dict[str, bytes] | None = None,
    network: Network | None = None,
    alongside: HostSide | None = None,
    memory_mib: int = DEFAULT_MEMORY_MIB,
) -> SuiteRun:
    """Fetch what is missing, build the image, boot it, and return the suite's results.

    ``files`` go into the image next to the suite (/opt/suite); ``network`` gives it a
    NIC; ``memory_mib`` is the testbed's RAM (QEMU inside it needs 2048);
    ``alongside(console)`` runs on the host while the image runs (for tests that talk to
    it) and its result comes back as ``SuiteRun.host``.
    """
    parts = fetch(kernel_suite, say=say)
    if not parts.qemu.is_file():
        raise TestbedError(f"{parts.qemu} not found: run scripts/fetch-qemu (QEMU >= 8)")
    started = time.monotonic()
    initrd = build_initrd(parts, suite, files=files, network=network)
    built = time.monotonic()
    command = qemu_command(parts, initrd, network, memory_mib)
    try:
        console, stderr, returncode, host = _boot(command, timeout, alongside)
    finally:
        log = _keep_last_console(initrd)
    finished = time.monotonic()
    if "=== TAGVISOR-TESTBED-INIT" not in console:
        tail = "\n".join((console + stderr).splitlines()[-20:])
        raise TestbedError(
            f"the kernel did not reach /init (QEMU exit {returncode}; console in {log}):\n{tail}"
        )
    try:
        payload = unframe(console)
    except TestbedError as exc:
        tail = "\n".join(console.splitlines()[-25:])
        raise TestbedError(f"{exc}; console in {log}:\n{tail}") from None
    return SuiteRun(
        status=int(payload["status"]),
        result=payload["result"],
        kernel=str(payload["kernel"]),
        error=payload.get("error"),
        console=console,
        seconds_boot=round(finished - built, 2),
        seconds_suite=float(payload["seconds"]),
        seconds_build=round(built - started, 2),
        dmesg=list(payload.get("dmesg", [])),
        kernel_package=parts.kernel_package,
        host=host,
    )
