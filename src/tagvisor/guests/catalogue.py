"""What each shipped guest does, what its program argument means, and whether it ends.

docs/guests.md and `tagvisor run --help` are made from this table, so the two cannot
drift apart from each other.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Where the prebuilt images are (shipped as package data).
IMAGES: Final = Path(__file__).resolve().parent


@dataclass(frozen=True)
class GuestInfo:
    """One shipped guest, as a user needs to know it before running it."""

    name: str
    does: str
    argument: str
    #: Whether it powers off by itself with the default argument (0).
    ends: bool
    #: What to do when it does not end (or None when it does).
    forever: str | None = None

    @property
    def image(self) -> Path:
        """The ELF file."""
        return IMAGES / f"{self.name}.elf"


GUESTS: Final = (
    GuestInfo(
        "heap",
        "a tagged heap allocator (Scudo-like); commits a use-after-free, an overflow, an "
        "underflow and a double free, and reports what MTE caught",
        "N spins N iterations between its first two bugs (0: none)",
        ends=True,
    ),
    GuestInfo(
        "mte-smoke",
        "every MTE instruction once (IRG, ADDG/SUBG/GMI, the STG family, STGM/LDGM/STZGM, "
        "DC GVA/GZVA, TCMA, tag access off), a report per result",
        "bit 0 set: end with an undefined instruction (a panic, status 255)",
        ends=True,
    ),
    GuestInfo(
        "churn",
        "allocates, frees, retags and rewrites a heap and a 4 MiB region, a report per "
        "round: the load for snapshots and live migration",
        "N rounds (0: forever)",
        ends=False,
        forever="churn runs until stopped: Ctrl-C, `tagvisor remote ... stop`, "
        "or --arg N for N rounds",
    ),
    GuestInfo(
        "fill",
        "fills RAM with random data and random non-zero tags, then idles or keeps "
        "rewriting it: the migration benchmarks' guest",
        "bits 31:0 MiB to fill (0: 1 GiB or all RAM after the image), bits 63:32 spans "
        "of 64 KiB rewritten per second after the fill (0: idle)",
        ends=False,
        forever="fill never powers off: after its FILL_DONE report it idles (or churns) "
        "until stopped with Ctrl-C or `tagvisor remote ... stop`",
    ),
    GuestInfo(
        "kvm-probe",
        "what KVM and the VMM do to a page's tags, seen from inside (the conformance "
        "suite's guest; under `run` the VMM prepares no pages and acts on no report)",
        "none",
        ends=True,
    ),
    GuestInfo(
        "mte-traps",
        "reads and writes every MTE system register and runs IRG, STG and LDG from its "
        "own vector table, reporting each ESR_EL1 (the conformance suite's guest for "
        "MTE traps; run it with and without --no-mte)",
        "none",
        ends=True,
    ),
    GuestInfo(
        "tag-owner",
        "reads the tags of 4 pages of a second memslot at RAM + 64 MiB at its first "
        "touch, then stores a tag on all of them (the conformance suite's memory guest; "
        "under `run` there is no such slot and its first access is an MMIO exit)",
        "the tag to store (1-15; 0: only read)",
        ends=True,
    ),
    GuestInfo(
        "bench-int",
        "a plain integer loop, to count guest instructions per second",
        "N iterations (0: 1,000,000)",
        ends=True,
    ),
    GuestInfo(
        "bench-checked",
        "a loop of tag-checked loads and stores, to count checked instructions per second",
        "N iterations (0: 1,000,000)",
        ends=True,
    ),
)

BY_NAME: Final = {guest.name: guest for guest in GUESTS}


def help_table(width: int = 88) -> str:
    """The guests as `run --help` lists them, wrapped to ``width`` columns."""
    lines = ["shipped guests (docs/guests.md):"]
    indent = " " * 17
    for guest in GUESTS:
        ends = "ends" if guest.ends else "runs until stopped"
        for text, first in (
            (guest.does, f"  {guest.name:<15}"),
            (f"--arg: {guest.argument}; {ends}", indent),
        ):
            lines.append(textwrap.fill(text, width, initial_indent=first, subsequent_indent=indent))
    return "\n".join(lines)
