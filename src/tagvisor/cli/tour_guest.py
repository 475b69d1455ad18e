"""The guest half of the tour: a real A64 heap guest catches a use-after-free on
tagvisor, is snapshotted, live-migrates to a second tagvisor process while it runs,
arrives with every tag, and catches its overflow there.

The heap guest (guests/heap) reports each bug it commits with UCALL_SYNC: 0x210 for the
use-after-free, 0x211 for the overflow, with the pointer, ESR, FAR and TFSR_EL1. Its
program argument makes it spin between the two, which is the window the migration uses.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import TcpAddress, migrate
from tagvisor.snapshot import save_snapshot
from tagvisor.snapshot.guestpages import memory_digest
from tagvisor.vmm import Machine, MachineBuilder
from tagvisor.vmm.devices.ucall import UcallCmd

HEAP_GUEST: Final = Path(__file__).resolve().parents[1] / "guests" / "heap.elf"
REPORT_UAF: Final = 0x210
REPORT_OVERFLOW: Final = 0x211
RAM: Final = 128 << 20
#: Iterations of the heap guest's spin between its bugs: long enough for a migration.
SPIN: Final = 4_000_000


@dataclass
class GuestStory:
    """What happened, step by step, for printing or JSON."""

    mode: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    ok: bool = False

    def add(self, step: str, **facts: Any) -> dict[str, Any]:
        entry = {"step": step, **facts}
        self.steps.append(entry)
        return entry


def _report(machine: Machine, report_id: int) -> tuple[int, ...] | None:
    for call in machine.ucall.calls:
        if call.cmd is UcallCmd.SYNC and call.args and call.args[0] == report_id:
            return call.args[1:]
    return None


def run_guest_story(mode: str, say: Any) -> GuestStory:
    """Run the whole story; ``say(text)`` narrates as it goes."""
    story = GuestStory(mode)
    machine = (
        MachineBuilder(ModelKvm(host_memory=RAM + (256 << 20)))
        .memory(RAM)
        .mte(tcf=mode)
        .argument(SPIN)
        .image(HEAP_GUEST)
        .build()
    )
    say(f"Booted the heap guest ({HEAP_GUEST.name}) on tagvisor's A64 core, TCF {mode}.")
    machine.pause_on_report(REPORT_UAF)
    machine.run()
    machine.pause_on_report(None)
    uaf = _report(machine, REPORT_UAF)
    if uaf is None:
        story.add("use-after-free", caught=False, error="the guest stopped first")
        return story
    pointer, esr, far, tfsr = uaf[:4]
    story.add(
        "use-after-free",
        pointer=hex(pointer),
        esr=hex(esr),
        far=hex(far),
        tfsr=hex(tfsr),
        caught=bool(esr or tfsr),
    )
    say(
        f"1. The guest read freed memory through {pointer:#018x}: "
        + (
            f"tag check fault, ESR {esr:#x}, FAR {far:#x}."
            if esr
            else f"recorded in TFSR_EL1 ({tfsr:#x})."
        )
    )

    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "heap.snap"
        snap = save_snapshot(machine, path)
        stored = snap.stats.pages - snap.stats.zero_pages
        story.add(
            "snapshot",
            file_bytes=snap.file_bytes,
            pages_stored=stored,
            tag_bytes=snap.stats.tag_bytes,
            digest=snap.digest,
        )
        say(
            f"2. Snapshot: {stored} pages with {snap.stats.tag_bytes} bytes of tags, "
            f"{snap.file_bytes} bytes on disk."
        )

    destination = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tagvisor.cli.main",
            "incoming",
            "--listen",
            "tcp:127.0.0.1:0",
            "--json",
            "--timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert destination.stderr is not None
    announced = destination.stderr.readline()  # "tagvisor incoming: listening on tcp:H:P"
    port = int(announced.rsplit(":", 1)[-1])
    report = migrate(machine, TcpAddress("127.0.0.1", port), max_iterations=6)
    source_digest = memory_digest(machine)
    out, err = destination.communicate(timeout=120)
    if destination.returncode not in (0, 1):
        story.add("migration", error=err.strip()[-400:])
        return story
    arrived = json.loads(out)
    same = arrived.get("digest_at_arrival") == source_digest
    story.add(
        "migration",
        iterations=report.iterations,
        pages=report.pages_sent,
        tag_bytes=report.tag_bytes,
        downtime_ms=round(report.downtime_seconds * 1e3, 2),
        guest_ran_during=report.guest_exits_during > 0 or report.iterations > 1,
        digests_equal=same,
    )
    say(
        f"3. Live-migrated to a second tagvisor process while the guest ran: "
        f"{report.iterations} passes, {report.pages_sent} pages, {report.tag_bytes} tag bytes, "
        f"downtime {report.downtime_seconds * 1e3:.1f} ms."
    )
    say(
        f"4. Memory and tags at the destination {'equal' if same else 'DIFFER FROM'} the "
        "source's at the pause (SHA-256 of every page and tag)."
    )
    overflow = next(
        (
            c["args"][1:]
            for c in arrived["ucalls"]
            if c["cmd"] == "SYNC" and c["args"][:1] == [REPORT_OVERFLOW]
        ),
        None,
    )
    caught = overflow is not None and bool(overflow[1] or overflow[3])
    story.add(
        "overflow at destination",
        caught=caught,
        esr=hex(overflow[1]) if overflow else None,
        far=hex(overflow[2]) if overflow else None,
        exit_status=arrived.get("exit_status"),
    )
    say(
        "5. At the destination the guest overflowed into its neighbour: "
        + ("caught again, with its tags intact." if caught else "NOT caught.")
    )
    story.ok = bool(uaf) and same and caught
    return story
