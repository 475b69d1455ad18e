"""The testbed's host-side pieces that need no QEMU: the cpio writer and the framing."""

from __future__ import annotations

import gzip
import stat
from pathlib import Path

import pytest

from tagvisor.testbed.boot import INIT, _suite_spec, unframe
from tagvisor.testbed.errors import TestbedError
from tagvisor.testbed.guest import frame
from tagvisor.testbed.initramfs import CpioWriter, gzip_cpio


def parse_newc(raw: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, data, rdev) of a cpio newc archive (a reader for the test)."""
    entries: dict[str, tuple[int, bytes, tuple[int, int]]] = {}
    offset = 0
    while True:
        assert raw[offset : offset + 6] == b"070701"
        fields = [int(raw[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev = fields[1], fields[6], (fields[9], fields[10])
        namesize = fields[11]
        start = offset + 110
        name = raw[start : start + namesize - 1].decode()
        data_start = start + namesize + (-(110 + namesize) % 4)
        data = raw[data_start : data_start + size]
        offset = data_start + size + (-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data, rdev)


def test_cpio_newc_round_trip(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libc.so.6").write_bytes(b"\x7fELF" + b"x" * 5)
    (tmp_path / "lib" / "ld.so").symlink_to("libc.so.6")

    def build(writer: CpioWriter) -> None:
        writer.char_device("dev/console", 5, 1)
        writer.tree(tmp_path, "opt/root")
        writer.file("init", b"#!/bin/sh\n", 0o755)

    entries = parse_newc(gzip.decompress(gzip_cpio(build)))
    assert stat.S_ISCHR(entries["dev/console"][0])
    assert entries["dev/console"][2] == (5, 1)
    for parent in ("dev", "opt", "opt/root", "opt/root/lib"):
        assert stat.S_ISDIR(entries[parent][0]), parent
    assert entries["opt/root/lib/libc.so.6"][1] == b"\x7fELFxxxxx"
    assert stat.S_ISLNK(entries["opt/root/lib/ld.so"][0])
    assert entries["opt/root/lib/ld.so"][1] == b"libc.so.6"
    assert stat.S_IMODE(entries["init"][0]) == 0o755


def test_results_survive_kernel_lines_on_the_console() -> None:
    payload = {"status": 0, "result": {"a": [1, 2, 3], "text": "x" * 500}}
    lines = frame(payload)
    noisy = []
    for i, line in enumerate(lines):
        noisy.append(line)
        if i % 3 == 0:
            noisy.append("[    4.2] kvm [1]: something happened")
    assert unframe("boot noise\n" + "\n".join(noisy) + "\n") == payload


def test_garbled_results_are_reported() -> None:
    lines = frame({"status": 0, "result": "y" * 400})
    with pytest.raises(TestbedError, match="missing"):
        unframe("\n".join(lines[:2] + lines[3:]))
    corrupted = [lines[0], lines[1][:-2] + "AA", *lines[2:]]
    with pytest.raises(TestbedError, match="SHA-256"):
        unframe("\n".join(corrupted))
    with pytest.raises(TestbedError, match="did not finish"):
        unframe("Kernel panic - not syncing")


def test_suite_spec(tmp_path: Path) -> None:
    assert _suite_spec("tagvisor.conformance.suite") == ("tagvisor.conformance.suite", None)
    suite = tmp_path / "my_suite.py"
    suite.write_text("def run():\n    return 1\n")
    assert _suite_spec(str(suite)) == ("my_suite", suite)
    with pytest.raises(TestbedError, match="not found"):
        _suite_spec(str(tmp_path / "missing.py"))
    with pytest.raises(TestbedError):
        _suite_spec("rm -rf /")


def test_init_runs_the_suite_and_powers_off() -> None:
    script = INIT.format(
        module="pkg.suite",
        pagecache="/mnt/pc",
        guest_ip="10.0.2.15",
        host_ip="10.0.2.2",
        zram_size=1 << 20,
    )
    assert script.startswith("#!/bin/busybox sh\n")
    assert "mount -t ramfs pagecache /mnt/pc" in script
    assert "-m tagvisor.testbed.guest pkg.suite" in script
    assert "mount -t devtmpfs" in script
    assert "echo o > /proc/sysrq-trigger" in script


def test_network_modules_are_loaded_dependencies_first(tmp_path: Path) -> None:
    """Scenario: /init loads /opt/modules in the order file's order, then sets eth0 up.

    The resolver reads each module's depends= from .modinfo; a module the kernel has
    built in is simply absent and skipped.
    """
    from tagvisor.testbed.modules import _depends

    assert _depends(b"x\0depends=net_failover,virtio-ring\0vermagic=6.1\0") == [
        "net_failover",
        "virtio_ring",
    ]
    assert _depends(b"\0depends=\0") == []
    script = INIT.format(
        module="m", pagecache="/p", guest_ip="10.0.2.15", host_ip="10.0.2.2", zram_size=1
    )
    assert "insmod /opt/modules/$module.ko" in script
    assert "ip route add default via 10.0.2.2" in script


def test_init_makes_a_zram_swap_device_before_the_suite() -> None:
    """Scenario: /init insmods /opt/swap-modules in order, sizes zram0, mkswap and swapon,
    all before the suite starts (the host-memory scenarios page out to it)."""
    script = INIT.format(
        module="m", pagecache="/p", guest_ip="10.0.2.15", host_ip="10.0.2.2", zram_size=65536
    )
    steps = [
        "insmod /opt/swap-modules/$module.ko",
        "echo 65536 > /sys/block/zram0/disksize",
        "mkswap /dev/zram0",
        "swapon /dev/zram0",
        "-m tagvisor.testbed.guest m",
    ]
    positions = [script.index(step) for step in steps]
    assert positions == sorted(positions)


def test_a_network_forwards_host_ports_into_the_image() -> None:
    """Scenario: Network((host, guest),) becomes one user-mode virtio NIC with hostfwd."""
    from tagvisor.testbed.boot import Network

    assert Network(((5555, 4444),)).qemu_args() == [
        "-nic",
        "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:5555-10.0.2.15:4444",
    ]


def test_swap_modules_are_zram_and_its_dependencies_from_the_kernel_package(
    tmp_path: Path,
) -> None:
    """Scenario: a kernel package with zram.ko (depends=zsmalloc) and zsmalloc.ko, and an
    unrelated module: swap_modules picks zsmalloc then zram, and nothing else (6.1's
    layout; a kernel with zsmalloc built in has no zsmalloc.ko and gets zram alone)."""
    import subprocess

    from tagvisor.testbed.modules import swap_modules

    root = tmp_path / "pkg"
    modules = root / "lib/modules/6.1.0-test/kernel"
    for path, info in (
        ("drivers/block/zram/zram.ko", b"\0depends=zsmalloc\0"),
        ("mm/zsmalloc.ko", b"\0depends=\0"),
        ("drivers/net/dummy.ko", b"\0depends=\0"),
    ):
        (modules / path).parent.mkdir(parents=True, exist_ok=True)
        (modules / path).write_bytes(b"\x7fELF" + info)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        "Package: linux-image-test\nVersion: 1\nArchitecture: arm64\n"
        "Maintainer: t <t@t>\nDescription: t\n"
    )
    deb = tmp_path / "linux-image-test.deb"
    subprocess.run(["dpkg-deb", "-b", str(root), str(deb)], check=True, capture_output=True)
    chosen = swap_modules(deb, tmp_path / "cache")
    assert [name for name, _ in chosen] == ["zsmalloc", "zram"]
    assert chosen[1][1].endswith(b"depends=zsmalloc\0")
    assert (tmp_path / "cache/order").read_text().split() == ["zsmalloc", "zram"]
