"""QEMU 10 + KVM as the reference VMM inside the testbed (issue 13).

QEMU itself runs in the Linux guest session's testbed boot (its oracle test is in
tests/linux/test_linux_session.py): it boots the testbed's kernel on /dev/kvm with MTE,
refuses to migrate it, and migrates the same guest with MTE off to a second QEMU. These
tests check the pieces without QEMU: apt's closure, the ELF reader, QMP's framing,
query-migrate.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tagvisor.testbed.boot import DEFAULT_MEMORY_MIB, qemu_command
from tagvisor.testbed.errors import TestbedError
from tagvisor.testbed.linux_suite import MARKER
from tagvisor.testbed.parts import Parts
from tagvisor.testbed.qemu_parts import (
    PACKAGE,
    QemuParts,
    library_closure,
    needed,
    parse_simulation,
)
from tagvisor.testbed.qemu_reference import WAITING_INIT, waiting_initrd
from tagvisor.testbed.qemu_suite import (
    QemuReferenceError,
    Qmp,
    _prepare,
    guest_uptime,
    migration_figures,
)
from tests.linux.test_testbed_image import parse_newc

SIMULATION = """NOTE: This is only a simulation!
Reading package lists...
Inst libc6 (2.36-9+deb12u14 Debian:12.13/stable, Debian-Security:12/stable-security [arm64])
Inst zlib1g [1:1.2.13.dfsg-1] (1:1.2.13.dfsg-1+deb12u1 Debian:12.13/stable [arm64])
Inst qemu-system-arm (1:10.0.2+ds-2+deb13u1~bpo12+1 Debian Backports:bookworm-backports [arm64])
Conf libc6 (2.36-9+deb12u14 Debian:12.13/stable, Debian-Security:12/stable-security [arm64])
Conf qemu-system-arm (1:10.0.2+ds-2+deb13u1~bpo12+1 Debian Backports:bookworm-backports [arm64])
"""


def test_apts_simulation_gives_each_package_and_its_version() -> None:
    """Scenario: apt-get -s prints Inst lines (one with the installed version in
    brackets) and Conf lines: every Inst package with its new version, nothing else."""
    assert parse_simulation(SIMULATION) == {
        "libc6": "2.36-9+deb12u14",
        "zlib1g": "1:1.2.13.dfsg-1+deb12u1",
        PACKAGE: "1:10.0.2+ds-2+deb13u1~bpo12+1",
    }


def test_a_simulation_without_qemu_is_refused_with_apts_words() -> None:
    """Scenario: the lists have no backports (apt would install other things, or says
    it cannot find the package): the error says so and quotes apt's last lines."""
    with pytest.raises(
        TestbedError, match=r"(?s)would not install qemu-system-arm.*Unable to locate"
    ):
        parse_simulation("Reading package lists...\nE: Unable to locate package qemu-system-arm\n")


def test_the_elf_reader_finds_the_same_needed_libraries_as_readelf() -> None:
    """Scenario: the host's /bin/ls (a dynamic ELF64 LE like Debian's arm64 QEMU):
    the DT_NEEDED names, in order, are readelf's."""
    names = needed(Path("/bin/ls"))
    assert "libc.so.6" in names
    if shutil.which("readelf"):
        out = subprocess.run(
            ["readelf", "-d", "/bin/ls"], capture_output=True, text=True, check=True
        ).stdout
        shown = [
            line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line
        ]
        assert names == shown


def test_a_static_elf_needs_nothing_and_a_non_elf_is_named(tmp_path: Path) -> None:
    """Scenario: an ELF64 LE header with no program headers (no PT_DYNAMIC) needs no
    library; a shell script is refused as not an ELF file."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<HH", header, 0x36, 56, 0)
    (tmp_path / "static").write_bytes(bytes(header))
    assert needed(tmp_path / "static") == []
    (tmp_path / "script").write_bytes(b"#!/bin/sh\n")
    with pytest.raises(TestbedError, match="not a little-endian 64-bit ELF"):
        needed(tmp_path / "script")


def fake_tree(tmp_path: Path, libraries: dict[str, str]) -> Path:
    for path in ("usr/bin/qemu", *libraries.values()):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"")
    return tmp_path


def test_the_library_closure_is_transitive_and_each_library_once(tmp_path: Path) -> None:
    """Scenario: qemu needs libglib and libz, libglib needs libz and libpcre: three
    libraries, found in the multiarch directories, each once."""
    tree = fake_tree(
        tmp_path,
        {
            "libglib": "usr/lib/aarch64-linux-gnu/libglib",
            "libz": "lib/aarch64-linux-gnu/libz",
            "libpcre": "usr/lib/aarch64-linux-gnu/libpcre",
        },
    )
    graph = {"qemu": ["libglib", "libz"], "libglib": ["libz", "libpcre"]}
    found = library_closure(tree, "usr/bin/qemu", lambda path: graph.get(path.name, []))
    assert found == [
        "lib/aarch64-linux-gnu/libz",
        "usr/lib/aarch64-linux-gnu/libglib",
        "usr/lib/aarch64-linux-gnu/libpcre",
    ]


def test_a_library_no_package_holds_is_named(tmp_path: Path) -> None:
    """Scenario: a NEEDED library that none of the unpacked packages has: the error
    names it (apt's closure and the ELF files disagree)."""
    tree = fake_tree(tmp_path, {})
    with pytest.raises(TestbedError, match=r"libmissing\.so\.1 .*none of the unpacked"):
        library_closure(tree, "usr/bin/qemu", lambda path: ["libmissing.so.1"])


def test_the_image_files_are_the_tree_under_qemu(tmp_path: Path) -> None:
    """Scenario: a reduced tree with a binary, a library and the versions record:
    the files go under qemu/, the record stays on the host."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "bin" / "qemu-system-aarch64").write_bytes(b"ELF")
    (tmp_path / "lib" / "libz.so.1").write_bytes(b"z")
    (tmp_path / ".versions.json").write_text("{}")
    files = QemuParts(tmp_path, {PACKAGE: "1:10"}).files()
    assert files == {"qemu/bin/qemu-system-aarch64": b"ELF", "qemu/lib/libz.so.1": b"z"}


def test_the_waiting_guest_prints_the_marker_and_never_powers_off(tmp_path: Path) -> None:
    """Scenario: the initrd QEMU boots: busybox, and an /init that prints the same
    marker as tagvisor's guest, then sleeps (QEMU migrates a live guest)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "busybox").write_bytes(b"\x7fELF busybox")
    parts = Parts(tmp_path / "qemu", tmp_path / "Image", "linux-image-x", tmp_path, "id")
    entries = parse_newc(gzip.decompress(waiting_initrd(parts)))
    assert entries["init"][1] == WAITING_INIT.encode()
    assert MARKER in WAITING_INIT
    assert "poweroff" not in WAITING_INIT
    assert entries["bin/busybox"][1] == b"\x7fELF busybox"


def test_the_testbeds_memory_is_a_parameter_of_the_boot(tmp_path: Path) -> None:
    """Scenario: a run that asks for 2048 MiB gets -m 2048; others keep the default."""
    parts = Parts(tmp_path / "qemu", tmp_path / "Image", "linux-image-x", tmp_path, "id")
    plain = qemu_command(parts, tmp_path / "initrd")
    assert plain[plain.index("-m") + 1] == str(DEFAULT_MEMORY_MIB)
    bigger = qemu_command(parts, tmp_path / "initrd", memory_mib=2048)
    assert bigger[bigger.index("-m") + 1] == "2048"
    assert bigger.count("-m") == 1


def qmp_with(*lines: bytes) -> tuple[Qmp, socket.socket]:
    """A Qmp client whose peer has already sent ``lines``."""
    ours, theirs = socket.socketpair()
    theirs.sendall(b"".join(lines))
    ours.settimeout(2.0)
    return Qmp(ours), theirs


GREETING = (
    b'{"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2}}, "capabilities": []}}\r\n'
)
OK = b'{"return": {}}\r\n'


def sent(theirs: socket.socket) -> list[dict[str, Any]]:
    theirs.settimeout(0.5)
    data = theirs.recv(65536)
    return [json.loads(line) for line in data.splitlines()]


def test_qmp_negotiates_capabilities_then_returns_answers_verbatim() -> None:
    """Scenario: QEMU's greeting, the capabilities reply, an event and migrate's
    error: qmp_capabilities goes first, the event is kept aside and the error comes
    back as QEMU wrote it."""
    refusal = {
        "error": {"class": "GenericError", "desc": "Live migration disabled due to MTE enabled"}
    }
    event = b'{"event": "MIGRATION", "data": {"status": "setup"}}\n'
    qmp, theirs = qmp_with(GREETING, OK, event, json.dumps(refusal).encode() + b"\n")
    assert qmp.version == {"major": 10, "minor": 0, "micro": 2}
    assert qmp.execute("migrate", {"uri": "tcp:127.0.0.1:4444"}) == refusal
    assert qmp.events == [json.loads(event)]
    assert sent(theirs) == [
        {"execute": "qmp_capabilities"},
        {"execute": "migrate", "arguments": {"uri": "tcp:127.0.0.1:4444"}},
    ]


def test_qmp_answers_split_across_reads_are_joined() -> None:
    """Scenario: the reply arrives in two pieces and with an empty line before it."""
    ours, theirs = socket.socketpair()
    ours.settimeout(2.0)
    theirs.sendall(GREETING + OK + b"\n" + b'{"return": {"sta')
    qmp = Qmp(ours)
    theirs.sendall(b'tus": "active"}}\n')
    assert qmp.execute("query-migrate") == {"return": {"status": "active"}}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ((b'{"hello": 1}\n',), "greeting without a 'QMP'"),
        ((GREETING, b"not json\n"), "not JSON"),
        ((GREETING, b"[1, 2]\n"), "not an object"),
        (
            (GREETING, b'{"error": {"class": "CommandNotFound", "desc": "x"}}\n'),
            "capabilities refused",
        ),
        ((GREETING, b'{"return": {}'), "closed the connection"),
        ((GREETING, b'{"answer": 42}\n'), "neither return nor error"),
    ],
)
def test_unexpected_qmp_answers_are_named(lines: tuple[bytes, ...], message: str) -> None:
    """Scenario: a peer that is not QEMU's QMP, garbage, JSON of the wrong shape, a
    refused negotiation, a connection closed mid-message, an unknown message: each
    stops with what was wrong."""
    ours, theirs = socket.socketpair()
    ours.settimeout(2.0)
    theirs.sendall(b"".join(lines))
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(QemuReferenceError, match=message):
        Qmp(ours)


def test_qmp_silence_is_a_timeout_not_a_hang() -> None:
    """Scenario: QEMU never sends its greeting: the client stops at its timeout."""
    ours, _theirs = socket.socketpair()
    ours.settimeout(0.2)
    with pytest.raises(QemuReferenceError, match="nothing before the timeout"):
        Qmp(ours)


def test_a_completed_migration_gives_total_time_and_downtime() -> None:
    """Scenario: query-migrate's return once completed (times in ms)."""
    info = {"status": "completed", "total-time": 2777, "downtime": 59, "ram": {"transferred": 5}}
    assert migration_figures(info) == {
        "total_seconds": 2.777,
        "downtime_ms": 59,
        "status": "completed",
    }


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (
            {"status": "failed", "error-desc": "Unable to write to socket"},
            "'failed' .*Unable to write",
        ),
        ({"status": "cancelled"}, "'cancelled'"),
        ({"status": "completed", "total-time": "fast", "downtime": 1}, "without integer"),
        ({"status": "completed"}, "without integer"),
    ],
)
def test_a_migration_that_did_not_complete_is_named(info: dict[str, Any], message: str) -> None:
    """Scenario: a failed or cancelled migration, or a completed one without figures."""
    with pytest.raises(QemuReferenceError, match=message):
        migration_figures(info)


def test_an_image_without_qemu_says_which_files_to_add(tmp_path: Path) -> None:
    """Scenario: run_qemu_reference in an image whose run did not ship QEMU's tree."""
    with pytest.raises(QemuReferenceError, match="qemu_reference_files"):
        _prepare(tmp_path)


def test_qemu_is_made_executable_and_only_its_environment_sees_its_libraries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: the image's cpio gives QEMU mode 0644 and the suite already has an
    LD_LIBRARY_PATH: QEMU becomes executable, its environment puts qemu/lib first, and
    the suite's own environment is left as it was."""
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/other")
    binary = tmp_path / "qemu" / "bin" / "qemu-system-aarch64"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"ELF")
    env = _prepare(tmp_path)
    assert binary.stat().st_mode & 0o111 == 0o111
    assert env["LD_LIBRARY_PATH"] == f"{tmp_path / 'qemu' / 'lib'}:/opt/other"
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/other"


def test_the_guests_uptime_is_read_from_its_marker_line() -> None:
    """Scenario: a console with the boot noise, the marker and its uptime; and one
    where the marker never came."""
    assert guest_uptime(f"[    0.0] Booting\n{MARKER} uptime 4.10\nFeatures: fp\n") == 4.1
    assert guest_uptime("[    0.0] Booting\n") is None
