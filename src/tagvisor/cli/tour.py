"""tagvisor tour: memory tagging, from one granule to a live-migrated guest.

Part 1: a tiny tagging heap (the way Scudo and glibc's MTE support work: a random tag
per allocation from IRG, stored over the allocation's granules with STG, a new tag on
free) on the architecture model, where an overflow and a use after free meet the tag
check. Part 2: the real A64 heap guest catches its use-after-free on tagvisor, is
snapshotted, live-migrates to a second tagvisor process while it runs, arrives with
every tag, and catches its overflow there. Exit status 0 when all of that held.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.text import Text

from tagvisor.arch import (
    TAG_GRANULE,
    CheckOutcome,
    FlatTaggedMemory,
    MteState,
    TagCheckFault,
    TagCheckMode,
    check_access,
    strip_top_byte,
)
from tagvisor.arch.sysregs import RgsrEl1
from tagvisor.arch.taggen import gmi, irg
from tagvisor.arch.tagmove import stg
from tagvisor.cli.tour_guest import run_guest_story

HEAP_BASE = 0x4000_0000
HEAP_SIZE = 4096
SHOWN_GRANULES = 12

MODES = {
    "sync": TagCheckMode.SYNC,
    "async": TagCheckMode.ASYNC,
    "asymm": TagCheckMode.ASYMM,
    "none": TagCheckMode.NONE,
}


class TourHeap:
    """A bump allocator that tags each allocation, on the architecture model."""

    def __init__(self, memory: FlatTaggedMemory, state: MteState) -> None:
        self.memory = memory
        self.state = state
        self.next = memory.base
        self.sizes: dict[int, int] = {}

    def _tag_range(self, ptr: int, size: int) -> None:
        for offset in range(0, size, TAG_GRANULE):
            stg(self.state, self.memory, ptr + offset, ptr)

    def malloc(self, size: int) -> int:
        """A pointer to ``size`` fresh bytes with a tag unlike its left neighbour's."""
        rounded = -(-size // TAG_GRANULE) * TAG_GRANULE
        address = self.next
        self.next += rounded
        exclude = 1  # tag 0 stays for untagged use, as Scudo and glibc do
        if address > self.memory.base:
            left = self.memory.tags.tag_at((address - self.memory.base) // TAG_GRANULE - 1)
            exclude |= 1 << left
        ptr = irg(self.state, address, exclude)
        self._tag_range(ptr, rounded)
        self.sizes[strip_top_byte(ptr)] = rounded
        return ptr

    def free(self, ptr: int) -> None:
        """Retag the block with a tag unlike its old one and its neighbours'."""
        address = strip_top_byte(ptr)
        rounded = self.sizes.pop(address)
        exclude = gmi(ptr, 1)
        first = (address - self.memory.base) // TAG_GRANULE
        for neighbour in (first - 1, first + rounded // TAG_GRANULE):
            if 0 <= neighbour < self.memory.tags.granules:
                exclude |= 1 << self.memory.tags.tag_at(neighbour)
        fresh = irg(self.state, ptr, exclude)
        self._tag_range(fresh, rounded)


@dataclass
class Step:
    """One thing the tour did, and what MTE made of it."""

    action: str
    pointer: str
    size: int
    write: bool
    outcome: str
    fault_address: str | None = None
    pointer_tag: int | None = None
    memory_tag: int | None = None


@dataclass
class TourReport:
    """Part 1 of the tour: each step, what was caught, and the tags it left."""

    mode: str
    steps: list[Step] = field(default_factory=list)
    tfsr_tf0: bool = False
    overflow_caught: bool = False
    use_after_free_caught: bool = False
    tags: list[int] = field(default_factory=list)


def _access(
    heap: TourHeap, report: TourReport, action: str, ptr: int, size: int, *, write: bool
) -> Step:
    step = Step(action, f"{ptr:#018x}", size, write, outcome="")
    try:
        outcome = check_access(heap.state, heap.memory, ptr, size, write=write)
    except TagCheckFault as fault:
        step.outcome = "sync fault"
        step.fault_address = f"{fault.address:#018x}"
        step.pointer_tag = fault.logical_tag
        step.memory_tag = fault.allocation_tag
    else:
        step.outcome = {
            CheckOutcome.MATCH: "ok",
            CheckOutcome.UNCHECKED: "ok (unchecked)",
            CheckOutcome.IGNORED: "not caught (TCF = none)",
            CheckOutcome.ASYNC_RECORDED: "async fault recorded in TFSRE0_EL1",
        }[outcome]
        address = strip_top_byte(ptr)
        if write:
            heap.memory.write_data(address, bytes([0x5A]) * size)
        else:
            heap.memory.read_data(address, size)
    report.steps.append(step)
    return step


def run_tour(mode: TagCheckMode, seed: int) -> TourReport:
    """Run the tour's scenario and return what happened (no printing)."""
    memory = FlatTaggedMemory(HEAP_BASE, HEAP_SIZE)
    state = MteState.linux_user(mode)
    # Seed the LFSR so a given --seed always shows the same tags.
    state.rgsr = RgsrEl1(tag=0, seed=(seed * 0x9E37 + 1) & 0xFFFF or 1)
    heap = TourHeap(memory, state)
    report = TourReport(mode=mode.name.lower())

    a = heap.malloc(32)
    b = heap.malloc(48)
    _access(heap, report, "write a[0..31]", a, 32, write=True)
    _access(heap, report, "read b[0..47]", b, 48, write=False)
    overflow = _access(heap, report, "overflow: write a[32..39]", a + 32, 8, write=True)
    heap.free(a)
    uaf = _access(heap, report, "use after free: read a[0..7]", a, 8, write=False)

    caught = ("sync fault", "async fault recorded in TFSRE0_EL1")
    report.overflow_caught = overflow.outcome in caught
    report.use_after_free_caught = uaf.outcome in caught
    report.tfsr_tf0 = state.tfsre0_el1.tf0
    report.tags = memory.tags.get(0, SHOWN_GRANULES).tolist()
    return report


def _tag_map(tags: list[int]) -> Text:
    """One coloured cell per granule: its tag in hex."""
    palette = ["white", "red", "green", "yellow", "blue", "magenta", "cyan", "bright_red"]
    line = Text("  tags by granule (16 B each): ")
    for tag in tags:
        line.append(f" {tag:x}", style=f"bold {palette[tag % len(palette)]}")
    return line


def _print(report: TourReport, console: Console) -> None:
    console.print(f"[bold]tagvisor tour[/] - tag check mode: [bold]{report.mode}[/]")
    console.print(
        "A heap of 4 KiB Normal Tagged memory. malloc gives each block a random tag "
        "(IRG) and stores it on the block's granules (STG); free retags the block."
    )
    for step in report.steps:
        line = f"  {step.action:<29} via {step.pointer}: {step.outcome}"
        if step.fault_address:
            line += f"\n{'':6}FAR {step.fault_address}, pointer tag {step.pointer_tag:x}"
            line += f", memory tag {step.memory_tag:x}"
        console.print(line, highlight=False)
    console.print(_tag_map(report.tags))
    verdict = "caught" if report.overflow_caught else "missed"
    console.print(f"overflow: {verdict}; ", end="")
    verdict = "caught" if report.use_after_free_caught else "missed"
    console.print(f"use after free: {verdict}")
    if report.mode in ("async", "asymm") and report.tfsr_tf0:
        console.print(
            "Asynchronous faults are only flagged (TFSRE0_EL1.TF0); Linux reports them "
            "as SIGSEGV/SEGV_MTEAERR at the next kernel entry, without an address."
        )


def _run(args: argparse.Namespace) -> int:
    report = run_tour(MODES[args.mode], args.seed)
    console = Console()
    if not args.json:
        console.print("[bold]Part 1 - tags on the architecture model[/]")
        _print(report, console)
    if args.quick:
        if args.json:
            print(json.dumps(asdict(report), indent=2))
        return 0
    mode = args.mode
    if not args.json:
        console.print("\n[bold]Part 2 - a real guest: catch, snapshot, migrate, catch again[/]")
    story = run_guest_story(mode, (lambda text: None) if args.json else console.print)
    if args.json:
        print(json.dumps({"model": asdict(report), "guest": asdict(story)}, indent=2))
    elif story.ok and mode == "none":
        console.print("Every tag travelled with its page; with TCF none, nothing checked them.")
    elif story.ok:
        console.print("Every tag travelled with its page: MTE kept working across the move.")
    return 0 if story.ok else 1


def register(commands: Any) -> None:
    """Add the ``tour`` command to the top-level parser's subcommands."""
    parser = commands.add_parser(
        "tour",
        help="tag a heap and watch MTE catch an overflow and a use-after-free",
        description=(__doc__ or "").replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mode",
        choices=sorted(MODES),
        default="sync",
        help="tag check fault mode (SCTLR_EL1.TCF0); default: sync",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed for the IRG tag generator")
    parser.add_argument(
        "--quick", action="store_true", help="only part 1 (the model), not the guest story"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=_run)
