"""Boot the testbed's own Debian kernel as a Linux guest of tagvisor, on the testbed's
real KVM (nested under QEMU's TCG), and bring its console and timings back.

The guest's initrd is tiny: busybox-static from the testbed's userland and an /init
that prints a marker with the guest's uptime and the CPU features (``mte`` among them
when KVM_CAP_ARM_MTE is on), runs the static programs it was given (each followed by
a line with its exit status), then powers off (PSCI SYSTEM_OFF, which KVM turns into
KVM_SYSTEM_EVENT_SHUTDOWN). The image-side suite is
:mod:`tagvisor.testbed.linux_suite`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tagvisor.testbed.boot import DEFAULT_MEMORY_MIB, SuiteRun, run_suite
from tagvisor.testbed.errors import TestbedError
from tagvisor.testbed.initramfs import busybox_initrd
from tagvisor.testbed.linux_suite import ECHO, MARKER
from tagvisor.testbed.parts import Parts, cache_root, fetch
from tagvisor.testbed.qemu_reference import TESTBED_MEMORY_MIB, qemu_reference_files

SUITE: Final = "tagvisor.testbed.linux_suite"
GUEST_INIT: Final = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox echo "{MARKER} uptime $(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox grep -m1 Features /proc/cpuinfo
/bin/busybox echo "CPUs online: $(/bin/busybox grep -c ^processor /proc/cpuinfo)"
{{programs}}{{ending}}
"""
#: How /init ends: it powers the guest off (PSCI SYSTEM_OFF) ...
POWER_OFF: Final = "/bin/busybox poweroff -f"
#: ... or, for a real panic, it exits: the kernel panics with "Attempted to kill init!"
#: (kernel/exit.c, do_exit of the init task), and panic=-1 resets at once.
EXIT_INIT: Final = "exit 3"
#: The line /init prints after each program: ``<PROGRAM_EXIT> <name> <status>``.
PROGRAM_EXIT: Final = "=== TAGVISOR-LINUX-GUEST-PROGRAM"
PROGRAM_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
#: ``quiet``: printing the boot log through an emulated UART dominates under TCG.
GUEST_APPEND: Final = "console=ttyAMA0 panic=-1 rdinit=/init quiet"


@dataclass(frozen=True)
class GuestShape:
    """The Linux guest's machine, as the suite inside the image builds it."""

    mem: int = 256 << 20
    #: Two, so that Linux brings the second up through PSCI CPU_ON.
    vcpus: int = 2
    mte: bool = True
    append: str = GUEST_APPEND
    deadline: float = 420.0
    #: Run the workload session (snapshot, restore, migration: linux_session) rather
    #: than boot to /init and power off.
    session: bool = False
    #: In a session, also run QEMU 10 + KVM on the same kernel (qemu_suite).
    qemu: bool = False
    #: /init exits instead of powering off, so that the kernel panics; the suite
    #: reports the error tagvisor's run gave (tagvisor.vmm.linux.run).
    panic: bool = False


def guest_init(programs: list[str], ending: str = POWER_OFF) -> str:
    """/init: the marker, the CPU features, each program in /bin and its status, then
    ``ending`` (:data:`POWER_OFF` or :data:`EXIT_INIT`)."""
    for name in programs:
        if not PROGRAM_NAME.fullmatch(name):
            raise TestbedError(f"guest program name {name!r} is not a plain file name")
    runs = "".join(
        f'/bin/{name}; /bin/busybox echo "{PROGRAM_EXIT} {name} $?"\n' for name in programs
    )
    return GUEST_INIT.format(programs=runs, ending=ending)


def guest_initrd(
    parts: Parts, programs: dict[str, bytes] | None = None, ending: str = POWER_OFF
) -> bytes:
    """busybox, /init and ``programs`` (static arm64 binaries, run in order by /init)
    as a gzip'd cpio archive (about 1 MB); /init ends with ``ending``."""
    programs = programs or {}
    init = guest_init(list(programs), ending)
    return busybox_initrd(parts.userland / "bin" / "busybox", init, programs)


def boot_linux_guest(
    kernel_suite: str = "6.1",
    shape: GuestShape | None = None,
    *,
    programs: dict[str, bytes] | None = None,
    timeout: float = 600.0,
    say: Callable[[str], None] = print,
) -> SuiteRun:
    """Boot the testbed; inside it, boot its kernel again as tagvisor's guest, whose
    /init runs ``programs`` (and with ``shape.qemu`` QEMU + KVM on the same kernel).
    The guest's console is kept in ``.cache/testbed/linux-guest-console.log``."""
    shape = shape or GuestShape()
    parts = fetch(kernel_suite, say=say)
    files = {
        "Image": parts.kernel.read_bytes(),
        "guest-initrd.gz": guest_initrd(parts, programs, EXIT_INIT if shape.panic else POWER_OFF),
        "linux_guest.json": json.dumps(shape.__dict__).encode(),
    }
    memory = DEFAULT_MEMORY_MIB
    if shape.qemu:
        files.update(qemu_reference_files(parts, say=say))
        memory = TESTBED_MEMORY_MIB
    run = run_suite(
        SUITE, kernel_suite=kernel_suite, timeout=timeout, say=say, files=files, memory_mib=memory
    )
    (cache_root() / "linux-guest-console.log").write_text(guest_console(run))
    return run


def guest_console(run: SuiteRun) -> str:
    """The guest's console: the suite's copy, or else (the suite failed) the lines it
    echoed to the testbed's console as they came."""
    if isinstance(run.result, dict) and isinstance(run.result.get("console"), str):
        return str(run.result["console"])
    lines = [line for line in run.console.splitlines() if line.startswith(ECHO)]
    return "".join(line[len(ECHO) :] + "\n" for line in lines)


def linux_session(
    kernel_suite: str = "6.1",
    *,
    qemu: bool = True,
    timeout: float = 900.0,
    say: Callable[[str], None] = print,
) -> SuiteRun:
    """Boot the testbed; inside it, boot its kernel as tagvisor's guest with the MTE
    workload, snapshot and restore it, then live-migrate it
    (tagvisor.testbed.linux_session), and with ``qemu`` run QEMU 10 + KVM on the same
    kernel first; the result holds every figure."""
    from tagvisor.testbed.workload import programs

    shape = GuestShape(session=True, qemu=qemu)
    return boot_linux_guest(kernel_suite, shape, programs=programs(), timeout=timeout, say=say)
