"""QEMU 10 + KVM as the reference VMM inside the testbed: the host side.

:func:`qemu_reference_files` is what a run adds to ``run_suite``'s files so that the
image-side :func:`tagvisor.testbed.qemu_suite.run_qemu_reference` can boot the guest
under QEMU next to tagvisor's: QEMU's reduced arm64 tree (:mod:`tagvisor.testbed.qemu_parts`)
and an initrd whose /init prints the same marker as tagvisor's guest and then waits,
so that QEMU has a live guest to migrate. :func:`qemu_reference` boots a testbed just
for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from tagvisor.testbed.boot import SuiteRun, run_suite
from tagvisor.testbed.errors import TestbedError
from tagvisor.testbed.initramfs import busybox_initrd
from tagvisor.testbed.linux_suite import MARKER
from tagvisor.testbed.parts import Parts, fetch
from tagvisor.testbed.qemu_parts import fetch_qemu
from tagvisor.testbed.qemu_suite import GUEST_INITRD

SUITE: Final = "tagvisor.testbed.qemu_suite"
#: The testbed's memory with QEMU inside: QEMU, the guest Image and initrd in the
#: image's rootfs, and two 256 MiB guests at once while one migrates to the other.
TESTBED_MEMORY_MIB: Final = 2048
#: Like linux_guest's /init, but it never powers off: QEMU migrates the live guest.
WAITING_INIT: Final = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox echo "{MARKER} uptime $(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox grep -m1 Features /proc/cpuinfo
exec /bin/busybox sleep 2147483647
"""


def waiting_initrd(parts: Parts) -> bytes:
    """busybox and :data:`WAITING_INIT` as a gzip'd cpio archive."""
    return busybox_initrd(parts.userland / "bin" / "busybox", WAITING_INIT)


def qemu_reference_files(
    parts: Parts, *, with_kernel: bool = False, say: Callable[[str], None] = print
) -> dict[str, bytes]:
    """The /opt/suite files run_qemu_reference needs: QEMU's tree (``qemu/...``, about
    31 MB) and the waiting initrd; also the guest ``Image`` if ``with_kernel`` (a
    Linux-guest run ships it already). Boot the testbed with
    ``memory_mib=TESTBED_MEMORY_MIB``."""
    files = fetch_qemu(say=say).files()
    files[GUEST_INITRD] = waiting_initrd(parts)
    if with_kernel:
        files["Image"] = parts.kernel.read_bytes()
    return files


def qemu_reference(
    kernel_suite: str = "6.1",
    *,
    vcpus: int = 1,
    timeout: float = 300.0,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Boot a testbed (kernel ``kernel_suite``) that runs only the QEMU reference: its
    run_qemu_reference result, plus the testbed's own times (``testbed``)."""
    parts = fetch(kernel_suite, say=say)
    files = qemu_reference_files(parts, with_kernel=True, say=say)
    files["qemu_reference.json"] = json.dumps({"vcpus": vcpus}).encode()
    run = run_suite(
        SUITE,
        kernel_suite=kernel_suite,
        timeout=timeout,
        say=say,
        files=files,
        memory_mib=TESTBED_MEMORY_MIB,
    )
    return _result(run)


def _result(run: SuiteRun) -> dict[str, Any]:
    if run.status != 0 or not isinstance(run.result, dict):
        tail = "\n".join(run.console.splitlines()[-20:])
        raise TestbedError(f"the QEMU reference failed in the testbed: {run.error}\n{tail}")
    result: dict[str, Any] = dict(run.result)
    result["testbed"] = {
        "kernel": run.kernel,
        "seconds_build": run.seconds_build,
        "seconds_boot": run.seconds_boot,
        "seconds_suite": run.seconds_suite,
    }
    return result
