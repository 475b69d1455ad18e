"""In the testbed image: boot the testbed's own Debian kernel as a guest, with tagvisor
on the real KVM, and time it to its /init's marker.

The host side (:mod:`tagvisor.testbed.linux_guest`) puts the kernel, a tiny initrd
whose /init prints :data:`MARKER` and powers off, and ``linux_guest.json`` (the
machine's shape) in /opt/suite. Standard library plus tagvisor (and its fdt, NumPy).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

SUITE_DIR: Final = Path("/opt/suite")
MARKER: Final = "=== TAGVISOR-LINUX-GUEST-INIT"
#: Each guest console line is echoed to the testbed's console with this prefix.
ECHO: Final = "[guest] "


class ConsoleWatch:
    """The guest's console sink: echoes whole lines and notes when the marker came."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.line = bytearray()
        self.marker_at: float | None = None
        self.marker_line = ""
        #: Called with each whole line (e.g. WorkloadConsole.feed), on the VCPU's thread.
        self.listeners: list[Callable[[str], None]] = []

    def __call__(self, byte: bytes) -> None:
        if byte != b"\n":
            self.line += byte
            return
        text = self.line.decode(errors="replace").rstrip("\r")
        self.line.clear()
        sys.stdout.write(ECHO + text + "\n")
        sys.stdout.flush()
        if self.marker_at is None and MARKER in text:
            self.marker_at = time.monotonic() - self.started
            self.marker_line = text
        for listener in self.listeners:
            listener(text)


def guest_machine(kvm: Any, shape: dict[str, Any], watch: ConsoleWatch) -> Any:
    """The Linux guest's machine as ``shape`` (linux_guest.json) says, paused."""
    from tagvisor.vmm import MachineBuilder

    return (
        MachineBuilder(kvm)
        .memory(int(shape["mem"]))
        .mte(bool(shape["mte"]))
        .vcpus(int(shape["vcpus"]))
        .console(watch)
        .linux(SUITE_DIR / "Image", SUITE_DIR / "guest-initrd.gz", str(shape["append"]))
        .build()
    )


def gic_round_trip(kvm: Any, machine: Any, vcpus: int) -> dict[str, Any]:
    """Save the stopped guest's GIC, restore it into a fresh VM's, read it back: how
    many registers there are, how many Linux changed, and any that did not survive."""
    from tagvisor.kvm.uapi import VcpuFeature
    from tagvisor.vmm.linux.gic import create_gicv3
    from tagvisor.vmm.linux.gic_state import restore_gic, save_gic
    from tagvisor.vmm.linux.guest import kvm_mpidrs
    from tagvisor.vmm.linux.platform import gic_layout

    layout = gic_layout(vcpus)
    mpidrs = kvm_mpidrs(vcpus)
    saved = save_gic(machine.irqchip, mpidrs, layout.nr_irqs)
    vm = kvm.create_vm()
    fresh = []
    for index in range(vcpus):
        vcpu = vm.create_vcpu(index)
        init = vm.arm_preferred_target()
        init.features[0] = 1 << VcpuFeature.PSCI_0_2
        vcpu.arm_vcpu_init(init)
        fresh.append(vcpu)
    gic = create_gicv3(vm, layout)
    reset = save_gic(gic, mpidrs, layout.nr_irqs)
    restore_gic(gic, saved)
    back = save_gic(gic, mpidrs, layout.nr_irqs)
    pairs = list(zip(saved.values, back.values, strict=True))
    lost = [
        f"group {a[0].group} attr {a[0].attr:#x}: {a[1]:#x} -> {b[1]:#x}"
        for a, b in pairs
        if a[1] != b[1]
    ]
    changed = sum(a[1] != r[1] for a, r in zip(saved.values, reset.values, strict=True))
    return {"registers": len(saved.values), "changed_by_linux": changed, "lost": lost[:20]}


def panic_run(machine: Any, deadline: float, started: float) -> dict[str, Any]:
    """Run a guest whose /init exits: what tagvisor's run said (the error's class and
    message, or how the run ended if it raised none) and the console."""
    from tagvisor.vmm.linux.run import LinuxBootError, console_text, run_linux

    out: dict[str, Any] = {"error_class": None, "message": None, "system_event": None}
    try:
        result = run_linux(machine, deadline)
        out["system_event"] = result.system_event
    except LinuxBootError as error:
        out["error_class"], out["message"] = type(error).__name__, str(error)
    out["seconds_total"] = round(time.monotonic() - started, 2)
    out["console"] = console_text(machine)
    return out


def run() -> dict[str, Any]:
    """Inside the testbed: boot the guest kernel with tagvisor on this /dev/kvm, wait
    for its /init marker, and report the console, the times and the GIC's state."""
    from tagvisor.kvm.linux import LinuxKvm
    from tagvisor.vmm.linux.run import console_text, run_linux

    shape = json.loads((SUITE_DIR / "linux_guest.json").read_text())
    if shape.get("session"):
        return session(shape)
    started = time.monotonic()
    watch = ConsoleWatch(started)
    kvm = LinuxKvm()
    machine = guest_machine(kvm, shape, watch)
    built = time.monotonic() - started
    mp_before = [vcpu.get_mp_state() for vcpu in machine.vcpus]
    if shape.get("panic"):
        return panic_run(machine, float(shape["deadline"]), started)
    result = run_linux(machine, float(shape["deadline"]))
    seconds = time.monotonic() - started
    return {
        "gic_round_trip": gic_round_trip(kvm, machine, int(shape["vcpus"])),
        "mp_states": {
            "built": mp_before,
            "powered_off": [vcpu.get_mp_state() for vcpu in machine.vcpus],
        },
        "seconds_build": round(built, 2),
        "seconds_to_marker": None if watch.marker_at is None else round(watch.marker_at, 2),
        "seconds_total": round(seconds, 2),
        "marker_line": watch.marker_line,
        "exit_status": result.exit_status,
        "system_event": result.system_event,
        "error": result.error,
        "exits": result.exits,
        "exits_by_reason": result.by_reason,
        "console": console_text(machine),
    }


def session(shape: dict[str, Any]) -> dict[str, Any]:
    """Inside the testbed: boot the guest with its MTE workload, then snapshot and
    restore it, then live-migrate it (tagvisor.testbed.linux_session), and report
    every figure; an error ends the session with what was measured so far."""
    from tagvisor.kvm.linux import LinuxKvm
    from tagvisor.testbed.guest_thread import GuestThread
    from tagvisor.testbed.linux_session import postcopy_step, precopy_step, snapshot_step
    from tagvisor.testbed.vm_process import VmProcess
    from tagvisor.testbed.workload import GLIBC_PREFIX, WorkloadConsole

    out: dict[str, Any] = {}
    if shape.get("qemu"):
        out.update(qemu_side(int(shape["vcpus"]), int(shape["mem"]) >> 20))
    started = time.monotonic()
    watch = ConsoleWatch(started)
    glibc: list[str] = []
    watch.listeners.append(lambda line: glibc.append(line) if GLIBC_PREFIX in line else None)
    kvm = LinuxKvm()
    deadline = float(shape["deadline"])
    machine = guest_machine(kvm, shape, watch)
    console = WorkloadConsole(send=machine.console_input)
    watch.listeners.append(console.feed)
    out["glibc_mtag"] = glibc
    guest = GuestThread(machine, deadline)
    vm: VmProcess | None = None
    try:
        at, ready = console.wait("READY", deadline)
        out["boot_seconds"] = None if watch.marker_at is None else round(watch.marker_at, 2)
        out["seconds_to_ready"] = round(at - started, 2)
        out["ready"] = ready.fields
        _, verified = console.command("verify", "VERIFIED", 120)
        out["verified"] = verified.fields
        # A TICK just before the pause, to compare the guest's clock across the restore.
        console.wait("TICK", 12)
        # The pre-copy migration's destination, started now (after the timed boot):
        # its interpreter starts while the snapshot is saved and restored.
        vm = VmProcess(watch, deadline)
        guest, out["snapshot"] = snapshot_step(kvm, guest, console, watch, Path("/tmp"), deadline)
        out["migration"] = precopy_step(guest, console, vm)
        guest, out["postcopy"] = postcopy_step(kvm, vm, console, watch, deadline)
        console.command("exit", "EXIT", 120)
        result = guest.join(120)
        out["exit"] = {"system_event": result.system_event, "exit_status": result.exit_status}
    except Exception as error:  # the figures so far still come back
        out["error"] = f"{type(error).__name__}: {error}"
        guest.pause()
    finally:
        if vm is not None:
            vm.close()
    out["ticks"] = sum(event.kind == "TICK" for _, event in console.log)
    out["seconds_total"] = round(time.monotonic() - started, 2)
    return out


def qemu_side(vcpus: int, memory_mib: int) -> dict[str, Any]:
    """QEMU 10 + KVM on the same kernel and guest shape (tagvisor.testbed.qemu_suite):
    its boot, its answer to ``migrate`` with MTE on, its migration with MTE off; run
    before tagvisor's guests so that both have the testbed to themselves."""
    from tagvisor.testbed.qemu_suite import run_qemu_reference

    try:
        qemu = run_qemu_reference(SUITE_DIR, vcpus=vcpus, memory_mib=memory_mib)
    except Exception as error:  # tagvisor's session still runs; the report says why
        return {"qemu": {"error": f"{type(error).__name__}: {error}"}}
    qemu.pop("console", None)
    return {"qemu": qemu, "qemu_nomte_migration": qemu.pop("nomte_migration")}
