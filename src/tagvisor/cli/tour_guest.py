"""The guest half of the tour: a real A64 heap guest catches a use-after-free on
tagvisor, is snapshotted, live-migrates to a second tagvisor process while it runs,
arrives with every tag, and catches its overflow there.

The heap guest (guests/heap) reports each bug it commits with UCALL_SYNC: 0x210 for the
use-after-free, 0x211 for the overflow, with the pointer, ESR, FAR and TFSR_EL1.
Started with HEAP_HOLD it spins between the two until the VMM releases it, which is the
window the migration uses: the tour's destination (tagvisor.cli.tour_destination)
releases it once it has arrived, so nothing waits on a spin. With TCF none the tags are
all there but nothing is checked: both bugs go uncaught, and the tour says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tagvisor.cli.backend import MODEL_HEADROOM, MODEL_MTE_LEVEL
from tagvisor.cli.snapshot_pages import page_tags
from tagvisor.conformance.programs import HEAP_HOLD
from tagvisor.guests.catalogue import BY_NAME
from tagvisor.guests.reports import HEAP_OVERFLOW, HEAP_UAF
from tagvisor.kvm.model import ModelKvm
from tagvisor.migration import TcpAddress, migrate
from tagvisor.snapshot import save_snapshot
from tagvisor.snapshot.guestpages import memory_digest
from tagvisor.vmm import Machine, MachineBuilder
from tagvisor.vmm.devices.ucall import UcallCmd

HEAP_GUEST: Final = BY_NAME["heap"].image
RAM: Final = 128 << 20
#: Granules of the heap's three adjacent 64-byte blocks a, b and c.
BLOCK_GRANULES: Final = 4
#: Seconds the tour waits for its destination at most.
DESTINATION_TIMEOUT: Final = 120.0


@dataclass
class GuestStory:
    """What happened, step by step, for printing or JSON."""

    mode: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    ok: bool = False

    def add(self, step: str, **facts: Any) -> dict[str, Any]:
        """Record a step and what was found in it."""
        entry = {"step": step, **facts}
        self.steps.append(entry)
        return entry


def _report(machine: Machine, report_id: int) -> tuple[int, ...] | None:
    for call in machine.ucall.calls:
        if call.cmd is UcallCmd.SYNC and call.args and call.args[0] == report_id:
            return call.args[1:]
    return None


def _boot(mode: str) -> Machine:
    kvm = ModelKvm(host_memory=RAM + MODEL_HEADROOM, host_mte_level=MODEL_MTE_LEVEL)
    return (
        MachineBuilder(kvm).memory(RAM).mte(tcf=mode).argument(HEAP_HOLD).image(HEAP_GUEST).build()
    )


def _catch(esr: int, tfsr: int) -> str:
    if esr:
        return f"tag check fault, ESR {esr:#x}"
    if tfsr:
        return f"recorded in TFSR_EL1 ({tfsr:#x})"
    return "not caught: tag checks are off (TCF none), though the tags are all there"


def _use_after_free(machine: Machine, story: GuestStory, say: Any) -> int | None:
    """Run to the use-after-free; the freed block's untagged address, or None."""
    machine.pause_on_report(HEAP_UAF)
    machine.run()
    machine.pause_on_report(None)
    uaf = _report(machine, HEAP_UAF)
    if uaf is None:
        story.add("use-after-free", caught=False, error="the guest stopped first")
        return None
    pointer, esr, far, tfsr = uaf[:4]
    caught = bool(esr or tfsr)
    story.add(
        "use-after-free",
        pointer=hex(pointer),
        esr=hex(esr),
        far=hex(far),
        tfsr=hex(tfsr),
        caught=caught,
    )
    where = f", FAR {far:#x}" if esr else ""
    say(f"1. The guest read freed memory through {pointer:#018x}: {_catch(esr, tfsr)}{where}.")
    return pointer & ((1 << 56) - 1)


def _snapshot(machine: Machine, block: int, story: GuestStory, say: Any) -> None:
    """Save the paused guest and show the heap's tags as the file holds them."""
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "heap.snap"
        snap = save_snapshot(machine, path)
        tags = page_tags(path, block)
    first = (block % 4096) // 16
    shown = [int(tag) for tag in tags[first : first + 3 * BLOCK_GRANULES]]
    stored = snap.stats.pages - snap.stats.zero_pages
    story.add(
        "snapshot",
        file_bytes=snap.file_bytes,
        pages_stored=stored,
        tag_bytes=snap.stats.tag_bytes,
        digest=snap.digest,
        heap_tags=shown,
    )
    groups = [shown[i : i + BLOCK_GRANULES] for i in range(0, len(shown), BLOCK_GRANULES)]
    names = ("a (freed)", "b", "c")
    described = ", ".join(
        f"{name} {' '.join(f'{t:x}' for t in group)}"
        for name, group in zip(names, groups, strict=True)
    )
    say(
        f"2. Snapshot: {stored} pages with {snap.stats.tag_bytes} bytes of tags, "
        f"{snap.file_bytes} bytes on disk. Its tags for the heap at {block:#x}, a "
        f"granule each: {described}."
    )


def _destination() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tagvisor.cli.tour_destination"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    announced = process.stderr.readline()  # "...: listening on tcp:H:P"
    try:
        return process, int(announced.rsplit(":", 1)[-1])
    except ValueError:
        process.kill()
        _, err = process.communicate(timeout=DESTINATION_TIMEOUT)
        raise RuntimeError(f"the tour's destination did not start: {announced}{err}") from None


def run_guest_story(mode: str, say: Any) -> GuestStory:
    """Run the whole story; ``say(text)`` narrates as it goes."""
    story = GuestStory(mode)
    checking = mode != "none"
    machine = _boot(mode)
    say(
        f"Booted the heap guest ({HEAP_GUEST.name}) on tagvisor's A64 core, FEAT_MTE"
        f"{MODEL_MTE_LEVEL}, TCF {mode}."
    )
    block = _use_after_free(machine, story, say)
    if block is None:
        return story
    _snapshot(machine, block, story, say)
    say("3. Starting a second tagvisor process and live-migrating the guest to it ...")
    destination, port = _destination()
    report = migrate(machine, TcpAddress("127.0.0.1", port), max_iterations=6)
    source_digest = memory_digest(machine)
    out, err = destination.communicate(timeout=DESTINATION_TIMEOUT)
    if destination.returncode != 0 or not out.strip():
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
        f"   Live-migrated while the guest ran (held between its bugs): "
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
            if c["cmd"] == "SYNC" and c["args"][:1] == [HEAP_OVERFLOW]
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
    if checking and overflow is not None:
        how = _catch(overflow[1], overflow[3])
        verdict = f"caught again ({how}), with its tags intact." if caught else "NOT caught."
    else:
        verdict = "not caught: tag checks are off (TCF none), as at the source."
    say(f"5. At the destination the guest overflowed into its neighbour: {verdict}")
    uaf_caught = story.steps[0]["caught"]
    story.ok = same and uaf_caught == checking and caught == checking
    return story
