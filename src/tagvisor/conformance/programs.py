"""Conformance scenarios that boot the guest programs through the VMM, on either backend.

On the model the guest runs on :mod:`tagvisor.cpu`; on the real kernel it runs under
KVM (in the testbed, the nested guest of a QEMU-emulated host). The results are the
console transcript (every report the guest made, as the runtime echoes them), the exit
status, and what the VMM saw from outside: the number of MMIO exits and, for
``kvm-probe``, the dirty log. NumPy and the standard library only, like the rest of
the VMM.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final

from tagvisor.conformance.scenarios import Result, copy_tags, scenario
from tagvisor.kvm.api import Kvm
from tagvisor.kvm.uapi import KVM_ARM_TAGS_TO_GUEST
from tagvisor.migration import Listener, TcpAddress, incoming, migrate
from tagvisor.snapshot import restore_snapshot, save_snapshot
from tagvisor.snapshot.guestpages import memory_digest
from tagvisor.vmm.builder import RAM_BASE, MachineBuilder
from tagvisor.vmm.devices.ucall import Ucall, UcallCmd
from tagvisor.vmm.machine import Machine, RunResult

GUEST_DIR: Final = Path(__file__).resolve().parents[1] / "guests"
RAM_SIZE: Final = 32 << 20
#: A guest that has not powered off by then is paused and reported as such.
TIMEOUT: Final = 120.0
CHURN_ROUNDS: Final = 6
PAGE: Final = 4096
HEAP_UAF: Final = 0x210
HEAP_OVERFLOW: Final = 0x211
#: The heap guest's argument that makes it wait between the two bugs until the VMM
#: stores a non-zero word at HEAP_RELEASE (guests/heap/main.c): the window for a
#: migration, whatever the host's speed.
HEAP_HOLD: Final = 2**64 - 1
HEAP_RELEASE: Final = RAM_BASE + 0x1000 + 40
MOVED_RAM: Final = 16 << 20

# kvm-probe (guests/kvm-probe/main.c): its pages and reports.
PROBE_BASE: Final = RAM_BASE + (16 << 20)
PROBE_LOG_RESET: Final = 0x610
PROBE_LOG_READ: Final = 0x611
PLANTED_TAG: Final = 0x5
PLANTED_THEN_WRITTEN_TAG: Final = 0xA
VMM_WORD: Final = 0x1122_3344_5566_7788
VMM_WORD_AFTER_TAGS: Final = 0x5555_AAAA_5555_AAAA
LOGGED_PAGES: Final = (4, 5, 6, 7)


class Session:
    """A machine booting one of the shipped guests, and its console."""

    def __init__(
        self,
        kvm: Kvm,
        guest: str,
        *,
        argument: int = 0,
        tcf: str = "sync",
        ram: int = RAM_SIZE,
        mte: bool = True,
    ) -> None:
        self.console = bytearray()
        self.machine: Machine = (
            MachineBuilder(kvm)
            .memory(ram)
            .mte(mte, tcf=tcf)
            .argument(argument)
            .image(GUEST_DIR / f"{guest}.elf")
            .console(self.console.extend)
            .build()
        )

    def run(self) -> Result:
        """Run to power-off (or TIMEOUT), and what the guest and the VMM saw."""
        started = time.monotonic()
        result = run_with_watchdog(self.machine)
        return {
            "console": self.console.decode(errors="replace").splitlines(),
            **outcome_of(result),
            "_seconds": round(time.monotonic() - started, 2),
        }


def run_with_watchdog(machine: Machine) -> RunResult:
    """Run ``machine`` until it stops or pauses; after TIMEOUT seconds the watchdog pauses it."""
    watchdog = threading.Timer(TIMEOUT, machine.pause)
    watchdog.daemon = True
    watchdog.start()
    try:
        return machine.run()
    finally:
        watchdog.cancel()


def outcome_of(result: RunResult) -> dict[str, Any]:
    """What the VMM saw of a run: the machine's state, the guest's exit status, the PSCI system
    event, any error, and the MMIO exits."""
    return {
        "state": result.state.value,
        "status": result.exit_status,
        "system_event": None if result.system_event is None else int(result.system_event),
        "error": result.error,
        "mmio_exits": result.by_reason.get("MMIO", 0),
    }


def release(machine: Machine) -> None:
    """Let a heap guest started with HEAP_HOLD go on to its next bug."""
    machine.memory.write(HEAP_RELEASE, (1).to_bytes(8, "little"))


def reported(machine: Machine, report: int) -> bool:
    """Whether the guest made a SYNC ucall whose first argument is ``report``."""
    return any(c.cmd is UcallCmd.SYNC and c.args[:1] == (report,) for c in machine.ucall.calls)


def boot(kvm: Kvm, guest: str, *, argument: int = 0, tcf: str = "sync") -> Result:
    """Boot the shipped guest ``guest`` in an MTE machine in tag check mode ``tcf`` and run it to
    the end (:meth:`Session.run`)."""
    return Session(kvm, guest, argument=argument, tcf=tcf).run()


@scenario("guest program mte-smoke: every MTE instruction, reported from inside the guest")
def guest_mte_smoke(kvm: Kvm) -> Result:
    """The mte-smoke guest's console and outcome."""
    return boot(kvm, "mte-smoke")


@scenario("guest program heap: use-after-free, overflow, underflow caught, sync mode")
def guest_heap_sync(kvm: Kvm) -> Result:
    """The heap guest's console and outcome in synchronous mode: its use-after-free, overflow
    and underflow, each caught."""
    return boot(kvm, "heap", tcf="sync")


@scenario("guest program heap in asymmetric mode (loads sync, stores set TFSR_EL1)")
def guest_heap_asymm(kvm: Kvm) -> Result:
    """The heap guest's console and outcome in asymmetric mode: loads fault at once, stores are
    reported through TFSR_EL1."""
    return boot(kvm, "heap", tcf="asymm")


@scenario(f"guest program churn: {CHURN_ROUNDS} rounds of allocate/verify/retag")
def guest_churn(kvm: Kvm) -> Result:
    """The churn guest's console and outcome after CHURN_ROUNDS rounds."""
    return boot(kvm, "churn", argument=CHURN_ROUNDS)


def _plant_tags(kvm: Kvm, session: Session, gpa: int, tag: int) -> int:
    """COPY_TAGS TO_GUEST of one page of ``tag`` from a VMM buffer; its outcome."""
    buffer = kvm.user_memory.map_anonymous(PAGE)
    kvm.user_memory.write(buffer, bytes([tag]) * (PAGE // 16))
    return copy_tags(session.machine.vm, gpa, PAGE, buffer, KVM_ARM_TAGS_TO_GUEST)


@scenario(
    "kvm-probe: tags planted before the first touch survive it, untouched pages read "
    "tag 0; a store that changes only tags (STG) marks its page in the dirty log"
)
def guest_first_touch_and_dirty_log(kvm: Kvm) -> Result:
    """Tags planted with COPY_TAGS before the guest first touches a page, a VMM write after them,
    and which of kvm-probe's pages the dirty log reports after the guest stores tags only: the
    outcomes, the console, and ``dirty_page<n>``."""
    session = Session(kvm, "kvm-probe")
    memory = session.machine.memory
    region = memory.region_of(PROBE_BASE)
    planted = _plant_tags(kvm, session, PROBE_BASE, PLANTED_TAG)
    memory.write(PROBE_BASE + PAGE, VMM_WORD.to_bytes(8, "little"))
    planted_then_written = _plant_tags(
        kvm, session, PROBE_BASE + 3 * PAGE, PLANTED_THEN_WRITTEN_TAG
    )
    memory.write(PROBE_BASE + 3 * PAGE, VMM_WORD_AFTER_TAGS.to_bytes(8, "little"))
    memory.start_dirty_log()
    first = (PROBE_BASE - region.gpa) // PAGE
    logged: dict[str, bool] = {}

    def on_ucall(call: Ucall) -> None:
        if call.cmd is not UcallCmd.SYNC or not call.args:
            return
        if call.args[0] == PROBE_LOG_RESET:
            memory.take_dirty(region)
        elif call.args[0] == PROBE_LOG_READ:
            dirty = memory.take_dirty(region)
            logged.update({f"dirty_page{page}": bool(dirty[first + page]) for page in LOGGED_PAGES})

    session.machine.ucall.listener = on_ucall
    result = session.run()
    result.update(logged, planted=planted, planted_then_written=planted_then_written)
    return result


@scenario(
    "snapshot of the heap guest paused in its use-after-free report, restored into a "
    "new VM: memory and tags equal, and it goes on to catch its overflow"
)
def snapshot_restore_heap(kvm: Kvm) -> Result:
    """Pause the heap guest in its use-after-free report, snapshot it, restore it into a new VM
    and run it: whether the pages' digests match, the console, the outcome and the tag bytes
    stored."""
    session = Session(kvm, "heap", ram=MOVED_RAM)
    session.machine.pause_on_report(HEAP_UAF)
    paused = run_with_watchdog(session.machine)
    with tempfile.TemporaryDirectory(prefix="tagvisor-conformance-") as work:
        path = Path(work) / "heap.snap"
        saved = save_snapshot(session.machine, path)
        restored = restore_snapshot(path, kvm)
    at_restore = memory_digest(restored)
    result = run_with_watchdog(restored)
    return {
        "paused": paused.state.value,
        "digests_equal": saved.digest == at_restore,
        "console": restored.console.text.splitlines(),
        **outcome_of(result),
        "tag_bytes": saved.stats.tag_bytes,
        "_file_bytes": saved.file_bytes,
    }


def send_held_heap(kvm: Kvm, address: TcpAddress, *, max_iterations: int) -> Result:
    """Boot the heap guest, pause it in its use-after-free report, migrate it (held)."""
    session = Session(kvm, "heap", ram=MOVED_RAM, argument=HEAP_HOLD)
    session.machine.pause_on_report(HEAP_UAF)
    paused = run_with_watchdog(session.machine)
    session.machine.pause_on_report(None)
    report = migrate(session.machine, address, max_iterations=max_iterations)
    return {
        "paused": paused.state.value,
        "uaf_reported": reported(session.machine, HEAP_UAF),
        "source_after": session.machine.state.value,
        "source_digest": memory_digest(session.machine),
        "iterations": report.iterations,
        "downtime_ms": round(report.downtime_seconds * 1e3, 1),
    }


def receive_held_heap(kvm: Kvm, listener: Listener) -> Result:
    """Take a migration of a held heap guest, release it, run it to the end."""
    machine, report = incoming(kvm, listener, timeout=TIMEOUT)
    digest = memory_digest(machine)
    overflow_before = reported(machine, HEAP_OVERFLOW)
    release(machine)
    finished = outcome_of(run_with_watchdog(machine))
    return {
        "arrival_digest": digest,
        "overflow_at_destination": not overflow_before and reported(machine, HEAP_OVERFLOW),
        "console": machine.console.text.splitlines(),
        "pages": report.pages_received,
        **finished,
    }


@scenario(
    "live migration of the heap guest between two VMs over loopback TCP, started in "
    "its use-after-free report: memory and tags equal at the switch, the guest finishes"
)
def migrate_heap_between_vms(kvm: Kvm) -> Result:
    """Migrate the held heap guest to a second VM of the same backend (:func:`send_held_heap`,
    :func:`receive_held_heap`): whether it arrived with the same digest, whether it caught its
    overflow there, the source's state after, and the destination's outcome."""
    listener = Listener(TcpAddress("127.0.0.1", 0))
    arrived: list[Result] = []
    receiver = threading.Thread(
        target=lambda: arrived.append(receive_held_heap(kvm, listener)),
        name="incoming",
        daemon=True,
    )
    receiver.start()
    sent = send_held_heap(kvm, listener.address, max_iterations=6)
    receiver.join(TIMEOUT)
    if not arrived:
        return {"paused": sent["paused"], "arrived": False}
    result = arrived[0]
    digest, pages = result.pop("arrival_digest"), result.pop("pages")
    return {
        "paused": sent["paused"],
        "arrived": True,
        "source_after": sent["source_after"],
        "digests_equal": digest == sent["source_digest"],
        **result,
        "_pages": pages,
        "_iterations": sent["iterations"],
        "_downtime_ms": sent["downtime_ms"],
    }
