"""Conformance scenarios that boot the guest programs through the VMM, on either backend.

On the model the guest runs on :mod:`tagvisor.cpu`; on the real kernel it runs under
KVM (in the testbed, the nested guest of a QEMU-emulated host). The results are the
console transcript (every report the guest made, as the runtime echoes them), the exit
status, and what the VMM saw from outside: the number of MMIO exits and, for
``kvm-probe``, the dirty log. NumPy and the standard library only, like the rest of
the VMM.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Final

from tagvisor.conformance.scenarios import Result, copy_tags, scenario
from tagvisor.kvm.api import Kvm
from tagvisor.kvm.uapi import KVM_ARM_TAGS_TO_GUEST
from tagvisor.vmm.builder import RAM_BASE, MachineBuilder
from tagvisor.vmm.devices.ucall import Ucall, UcallCmd
from tagvisor.vmm.machine import Machine

GUEST_DIR: Final = Path(__file__).resolve().parents[1] / "guests"
RAM_SIZE: Final = 32 << 20
#: A guest that has not powered off by then is paused and reported as such.
TIMEOUT: Final = 120.0
CHURN_ROUNDS: Final = 6
PAGE: Final = 4096

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

    def __init__(self, kvm: Kvm, guest: str, *, argument: int = 0, tcf: str = "sync") -> None:
        self.console = bytearray()
        self.machine: Machine = (
            MachineBuilder(kvm)
            .memory(RAM_SIZE)
            .mte(True, tcf=tcf)
            .argument(argument)
            .image(GUEST_DIR / f"{guest}.elf")
            .console(self.console.extend)
            .build()
        )

    def run(self) -> Result:
        """Run to power-off (or TIMEOUT), and what the guest and the VMM saw."""
        started = time.monotonic()
        watchdog = threading.Timer(TIMEOUT, self.machine.pause)
        watchdog.daemon = True
        watchdog.start()
        try:
            result = self.machine.run()
        finally:
            watchdog.cancel()
        return {
            "console": self.console.decode(errors="replace").splitlines(),
            "state": result.state.value,
            "status": result.exit_status,
            "system_event": None if result.system_event is None else int(result.system_event),
            "error": result.error,
            "mmio_exits": result.by_reason.get("MMIO", 0),
            "_seconds": round(time.monotonic() - started, 2),
        }


def boot(kvm: Kvm, guest: str, *, argument: int = 0, tcf: str = "sync") -> Result:
    return Session(kvm, guest, argument=argument, tcf=tcf).run()


@scenario("guest program mte-smoke: every MTE instruction, reported from inside the guest")
def guest_mte_smoke(kvm: Kvm) -> Result:
    return boot(kvm, "mte-smoke")


@scenario("guest program heap: use-after-free, overflow, underflow caught, sync mode")
def guest_heap_sync(kvm: Kvm) -> Result:
    return boot(kvm, "heap", tcf="sync")


@scenario("guest program heap in asymmetric mode (loads sync, stores set TFSR_EL1)")
def guest_heap_asymm(kvm: Kvm) -> Result:
    return boot(kvm, "heap", tcf="asymm")


@scenario(f"guest program churn: {CHURN_ROUNDS} rounds of allocate/verify/retag")
def guest_churn(kvm: Kvm) -> Result:
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
