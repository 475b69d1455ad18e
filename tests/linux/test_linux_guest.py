"""A Linux guest of tagvisor on the testbed's real KVM: Debian's kernel boots to /init.

The oracle test boots the testbed (Debian's arm64 kernel under QEMU's TCG) and, in
it, the same kernel again as tagvisor's guest on the real /dev/kvm, with a busybox
initrd whose /init prints a marker and powers off: about 15 s of testbed boot, of
which 3 to 4 s from the VMM's start to the marker (docs/linux-guests.md). The other
tests check the host-side pieces without QEMU.
"""

from __future__ import annotations

import gzip
import stat
from pathlib import Path

import pytest

from tagvisor.testbed.boot import SuiteRun
from tagvisor.testbed.errors import TestbedError
from tagvisor.testbed.linux_guest import GUEST_INIT, boot_linux_guest, guest_initrd
from tagvisor.testbed.linux_suite import ECHO, MARKER, ConsoleWatch
from tagvisor.testbed.parts import Parts
from tests.linux.test_testbed_image import parse_newc


def parts_with_busybox(tmp_path: Path) -> Parts:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "busybox").write_bytes(b"\x7fELF busybox")
    return Parts(tmp_path / "qemu", tmp_path / "Image", "linux-image-x", tmp_path, "id")


def test_the_guest_initrd_holds_busybox_init_and_a_console(tmp_path: Path) -> None:
    """Scenario: build the guest's initrd from a userland with a busybox: /init is
    executable and prints the marker, busybox is there, /dev/console is 5:1."""
    entries = parse_newc(gzip.decompress(guest_initrd(parts_with_busybox(tmp_path))))
    mode, init, _ = entries["init"]
    assert stat.S_IMODE(mode) == 0o755
    assert init == GUEST_INIT.encode()
    assert MARKER.encode() in init
    assert entries["bin/busybox"][1] == b"\x7fELF busybox"
    assert entries["dev/console"][2] == (5, 1)


def test_a_userland_without_busybox_is_named(tmp_path: Path) -> None:
    """Scenario: the userland lacks bin/busybox: TestbedError says so."""
    with pytest.raises(TestbedError, match="busybox"):
        guest_initrd(Parts(tmp_path, tmp_path, "k", tmp_path, "id"))


def test_the_console_watch_notes_the_marker_and_echoes_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Scenario: two lines reach the sink a byte at a time; the second has the marker."""
    watch = ConsoleWatch(started=0.0)
    for byte in f"Booting\n{MARKER} uptime 1.5\n".encode():
        watch(bytes([byte]))
    assert watch.marker_line == f"{MARKER} uptime 1.5"
    assert watch.marker_at is not None
    assert capsys.readouterr().out.splitlines() == [ECHO + "Booting", f"{ECHO}{MARKER} uptime 1.5"]


@pytest.fixture(scope="module")
def booted() -> SuiteRun:
    try:
        return boot_linux_guest("release", say=print)
    except TestbedError as exc:
        problem = str(exc)
    pytest.fail(f"the testbed could not run: {problem}", pytrace=False)


@pytest.mark.oracle
def test_debians_kernel_boots_to_init_as_a_tagvisor_guest_on_real_kvm(booted: SuiteRun) -> None:
    """Scenario: in the testbed, tagvisor boots Debian's 6.1 kernel on /dev/kvm with
    the in-kernel GICv3, the AMBA PL011 and MTE on. Its /init prints the marker
    through the PL011 and powers off: KVM_SYSTEM_EVENT_SHUTDOWN, exit status 0, and
    the guest's CPU features list mte."""
    assert booted.status == 0, booted.error
    result = booted.result
    print(f"Linux guest: marker {result['seconds_to_marker']} s after the VMM started")
    assert result["seconds_to_marker"] is not None, result["console"]
    assert result["exit_status"] == 0
    assert result["system_event"] == 1
    features = next(line for line in result["console"].splitlines() if "Features" in line)
    assert " mte" in features
