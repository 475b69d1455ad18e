"""A Linux guest of tagvisor on the testbed's real KVM: Debian's kernel boots to /init.

The oracle test boots the testbed (Debian's arm64 kernel under QEMU's TCG) and, in
it, the same kernel again as tagvisor's guest on the real /dev/kvm, with a busybox
initrd whose /init prints a marker, takes a tag check fault and powers off. Both of
the testbed's kernels run, 6.1 and 6.12: about 13 s of testbed boot each, of which 3
to 5 s from the VMM's start to the marker (docs/linux-guests.md), 30 s in all. The
other tests check the host-side pieces without QEMU.
"""

from __future__ import annotations

import gzip
import stat
from pathlib import Path

import pytest

from tagvisor.kvm.uapi import MpState
from tagvisor.testbed.boot import SuiteRun
from tagvisor.testbed.errors import TestbedError
from tagvisor.testbed.linux_guest import (
    EXIT_INIT,
    PROGRAM_EXIT,
    GuestShape,
    boot_linux_guest,
    guest_init,
    guest_initrd,
)
from tagvisor.testbed.linux_suite import ECHO, MARKER, ConsoleWatch
from tagvisor.testbed.parts import Parts
from tests.linux.test_testbed_image import parse_newc
from tests.support import cross
from tests.support.testbed import run_or_fail

MTE_CHECK = Path(__file__).with_name("mte_check.c")


def parts_with_busybox(tmp_path: Path) -> Parts:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "busybox").write_bytes(b"\x7fELF busybox")
    return Parts(tmp_path / "qemu", tmp_path / "Image", "linux-image-x", tmp_path, "id")


def test_the_guest_initrd_holds_busybox_init_programs_and_a_console(tmp_path: Path) -> None:
    """Scenario: build the guest's initrd with one program from a userland with a
    busybox: /init is executable, prints the marker, runs the program and reports its
    status; busybox and the program are there, /dev/console is 5:1."""
    initrd = guest_initrd(parts_with_busybox(tmp_path), {"probe": b"\x7fELF probe"})
    entries = parse_newc(gzip.decompress(initrd))
    mode, init, _ = entries["init"]
    assert stat.S_IMODE(mode) == 0o755
    assert init == guest_init(["probe"]).encode()
    assert MARKER.encode() in init
    assert f'/bin/probe; /bin/busybox echo "{PROGRAM_EXIT} probe $?"'.encode() in init
    assert entries["bin/busybox"][1] == b"\x7fELF busybox"
    assert entries["bin/probe"][1] == b"\x7fELF probe"
    assert entries["dev/console"][2] == (5, 1)


def test_a_panicking_init_exits_where_the_usual_one_powers_off() -> None:
    """Scenario: /init for a panic run ends by exiting (the kernel then panics), not
    with poweroff, after the same marker and programs."""
    usual, panicking = guest_init(["probe"]), guest_init(["probe"], EXIT_INIT)
    assert usual.rstrip().endswith("poweroff -f")
    assert panicking.rstrip().endswith("exit 3")
    assert "poweroff" not in panicking
    assert usual.rsplit("\n", 2)[0] == panicking.rsplit("\n", 2)[0]


def test_a_program_name_that_is_no_file_name_is_refused() -> None:
    """Scenario: a name with a slash or a shell metacharacter never reaches /init."""
    for name in ("../x", "a;b", ""):
        with pytest.raises(TestbedError, match="not a plain file name"):
            guest_init([name])


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


@pytest.fixture(scope="module", params=["release", "backports"])
def booted(request: pytest.FixtureRequest) -> SuiteRun:
    """One testbed boot per kernel (bookworm's 6.1, backports' 6.12), which is also the
    guest's kernel."""
    flags = ("-O1", "-static", "-march=armv8.5-a+memtag", "-Wall", "-Werror")
    programs = {"mte-check": cross.build(MTE_CHECK, flags).read_bytes()}
    return run_or_fail(lambda: boot_linux_guest(request.param, programs=programs, say=print))


@pytest.mark.oracle
def test_debians_kernel_boots_to_init_as_a_tagvisor_guest_on_real_kvm(booted: SuiteRun) -> None:
    """Scenario: in the testbed, tagvisor boots Debian's kernel (6.1, then 6.12) on
    /dev/kvm with
    the in-kernel GICv3, the AMBA PL011 and MTE on. Its /init prints the marker
    through the PL011 and powers off: KVM_SYSTEM_EVENT_SHUTDOWN, exit status 0, and
    the guest's CPU features list mte; both VCPUs came up (PSCI CPU_ON)."""
    assert booted.status == 0, booted.error
    result = booted.result
    print(f"Linux {booted.kernel} guest: marker {result['seconds_to_marker']} s after start")
    assert result["seconds_to_marker"] is not None, result["console"]
    assert result["exit_status"] == 0
    assert result["system_event"] == 1
    features = next(line for line in result["console"].splitlines() if "Features" in line)
    assert " mte" in features
    assert "CPUs online: 2" in result["console"]


@pytest.mark.oracle
def test_each_vcpus_psci_power_state_is_what_kvm_says(booted: SuiteRun) -> None:
    """Scenario: KVM_GET_MP_STATE of both VCPUs when built (VCPU 1 with
    KVM_ARM_VCPU_POWER_OFF: RUNNABLE, STOPPED) and after PSCI SYSTEM_OFF (KVM's
    kvm_prepare_system_event stops every VCPU: STOPPED, STOPPED)."""
    states = booted.result["mp_states"]
    assert states["built"] == [MpState.RUNNABLE, MpState.STOPPED]
    assert states["powered_off"] == [MpState.STOPPED, MpState.STOPPED]


@pytest.mark.oracle
def test_the_guests_gic_state_survives_a_save_and_restore(booted: SuiteRun) -> None:
    """Scenario: after the guest powered off, its GICv3's registers (distributor,
    both redistributors and CPU interfaces, line levels) are read, written into a
    fresh VM's GIC in QEMU's restore order and read back: every value survives, and
    Linux had changed some (the timer's PPI, the UART's SPI, priorities, masks). A
    GICv3 of 64 interrupts and 2 VCPUs has 133 registers (docs/linux-guests.md)."""
    trip = booted.result["gic_round_trip"]
    assert trip["lost"] == []
    assert trip["changed_by_linux"] > 0
    assert trip["registers"] == 133


@pytest.mark.oracle
def test_a_process_in_the_linux_guest_takes_a_sync_tag_check_fault(booted: SuiteRun) -> None:
    """Scenario: in the same guest, mte_check.c tags a PROT_MTE granule with IRG + STG
    and stores through the wrong tag: SIGSEGV with SEGV_MTESERR (9) at the faulting
    address (its tag cleared, no SA_EXPOSE_TAGBITS), exit status 0, so MTE works end
    to end in a guest tagvisor booted."""
    console = booted.result["console"]
    assert "MTE-CHECK fault signal 11 si_code 9 at the faulting address" in console, console
    assert f"{PROGRAM_EXIT} mte-check 0" in console


@pytest.fixture(scope="module")
def panicked() -> SuiteRun:
    """One testbed boot of 6.1 whose guest's /init exits (about 22 s)."""
    shape = GuestShape(panic=True, deadline=120.0)
    return run_or_fail(lambda: boot_linux_guest("6.1", shape, say=print))


@pytest.mark.oracle
def test_a_real_kernel_panic_ends_the_run_with_the_panic_line_and_the_console(
    panicked: SuiteRun,
) -> None:
    """Scenario: in the testbed, tagvisor boots Debian's 6.1 on /dev/kvm with an /init
    that prints the marker and exits. Linux panics ("Attempted to kill init!"),
    panic=-1 makes it reset at once (PSCI SYSTEM_RESET), and tagvisor's run ends with
    LinuxPanicError naming the panic and the reset, with the console's last lines:
    no hang until the deadline, no traceback."""
    assert panicked.status == 0, panicked.error
    result = panicked.result
    assert result["error_class"] == "LinuxPanicError", result
    message = result["message"]
    assert "Kernel panic - not syncing: Attempted to kill init!" in message
    assert "KVM_SYSTEM_EVENT_RESET" in message
    assert "and then hung" not in message
    assert MARKER in result["console"]
