"""tagvisor inspect: what a snapshot file or a captured migration stream holds.

    tagvisor inspect heap.snap                 # sections, pages, a histogram of tags
    tagvisor inspect heap.snap --plot tags.png # and a map of the guest's tags
    tagvisor inspect stream.bin --json         # a captured TAGVMIGR stream, for scripts

A snapshot is verified whole first (tagvisor.snapshot.read_snapshot). A migration
stream (the source's side, as captured from the wire) is read section by section up
to END! or to where the capture ends; a page sent in several passes counts once, with
its last tags. The map has one pixel per 4 KiB page, 256 pages (1 MiB) a row, coloured
by the tag most of its granules hold (tag 0 grey); black pages are not stored (all
zero). Exit status 0, 66 for a missing file, 1 for a damaged or foreign one.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.cli.common import add_command, input_file, output_file, print_json
from tagvisor.cli.errors import CliError
from tagvisor.cli.png import write_png
from tagvisor.migration import protocol
from tagvisor.snapshot import pages, read_snapshot
from tagvisor.snapshot.container import END_TAG, iter_sections, read_header
from tagvisor.snapshot.registry import REGISTRY, Phase
from tagvisor.snapshot.snapshot import END_LIMIT
from tagvisor.snapshot.snapshot import MAGIC as SNAPSHOT_MAGIC
from tagvisor.wire import FormatError

#: Pages a row of the map: 1 MiB.
MAP_WIDTH = 256
#: Pixels a page is wide and high in the PNG.
SCALE = 2
#: A colour per tag (0 grey, then 15 that tell apart), and black for a page not stored.
PALETTE = np.array(
    [
        (96, 96, 96), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
        (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60),
        (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200),
        (128, 0, 0),
    ],
    dtype=np.uint8,
)  # fmt: skip


@dataclass
class Census:
    """What a file holds, counted."""

    kind: str
    sections: Counter[str] = field(default_factory=Counter)
    section_bytes: Counter[str] = field(default_factory=Counter)
    #: gpa -> the page's 256 tags, the last time it was sent.
    page_tags: dict[int, NDArray[np.uint8]] = field(default_factory=dict)
    complete: bool = True
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def add_pages(self, payload: bytes | bytearray | memoryview) -> None:
        """Count a PAGE section's pages (a later copy of a page replaces an earlier)."""
        run = pages.decode(payload)
        for index, tags in zip(run.indices(), run.tags, strict=True):
            self.page_tags[run.gpa + int(index) * PAGE_SIZE] = np.array(tags, np.uint8)

    def histogram(self) -> list[int]:
        """Granules of the stored pages holding each tag, 0 to 15."""
        if not self.page_tags:
            return [0] * 16
        every = np.concatenate(list(self.page_tags.values()))
        return [int(n) for n in np.bincount(every, minlength=16)[:16]]


def _limits(*phases: Phase) -> dict[bytes, int]:
    limits = REGISTRY.limits(*phases)
    limits[END_TAG] = END_LIMIT
    return limits


def _count_sections(census: Census, source: BinaryIO, limits: dict[bytes, int]) -> None:
    try:
        for section in iter_sections(source, limits):
            tag = section.tag.decode(errors="replace").strip()
            census.sections[tag] += 1
            census.section_bytes[tag] += len(section.payload)
            if section.tag == b"PAGE":
                census.add_pages(section.payload)
    except FormatError as error:
        census.complete = False
        census.notes.append(f"the stream stops early: {error}")


def snapshot_census(path: Path) -> Census:
    """A verified snapshot, counted."""
    snapshot = read_snapshot(path)
    census = Census("snapshot")
    config = snapshot.machine.config
    census.machine = {
        "ram_base": config.ram_base,
        "ram_size": config.ram_size,
        "vcpus": config.vcpus,
        "mte": config.mte,
        "tcf": config.tcf,
        "profile": snapshot.machine.profile,
        "mte_level": snapshot.machine.mte_level,
        "digest": snapshot.digest,
    }
    with path.open("rb") as source:
        read_header(source, SNAPSHOT_MAGIC, snapshot.version.major)
        _count_sections(census, source, _limits(Phase.SETUP, Phase.ITERATE, Phase.COMPLETE))
    return census


def stream_census(path: Path) -> Census:
    """A captured migration stream (source to destination), counted as far as it goes."""
    census = Census("migration stream")
    with path.open("rb") as source:
        read_header(source, protocol.MAGIC, protocol.VERSION.major)
        _count_sections(census, source, protocol.limits())
    return census


def census_of(path: Path) -> Census:
    """Whichever kind of file ``path`` is, counted; CliError for anything else."""
    with path.open("rb") as source:
        magic = source.read(8)
    try:
        if magic == SNAPSHOT_MAGIC:
            return snapshot_census(path)
        if magic == protocol.MAGIC:
            return stream_census(path)
    except FormatError as error:
        raise CliError(f"{path} is damaged: {error}") from None
    raise CliError(f"{path} is neither a tagvisor snapshot nor a migration stream")


def dominant_tags(census: Census) -> tuple[int, NDArray[np.int16]]:
    """(lowest gpa, the tag most granules of each page hold, -1 for pages not
    stored), over the guest's RAM when the file names it, else the pages seen."""
    if census.machine:
        base, size = census.machine["ram_base"], census.machine["ram_size"]
    elif census.page_tags:
        base = min(census.page_tags)
        size = max(census.page_tags) + PAGE_SIZE - base
    else:
        return 0, np.zeros(0, np.int16)
    result = np.full(size // PAGE_SIZE, -1, np.int16)
    for gpa, tags in census.page_tags.items():
        result[(gpa - base) // PAGE_SIZE] = int(np.bincount(tags, minlength=16).argmax())
    return base, result


def tag_map(census: Census) -> NDArray[np.uint8]:
    """The map as RGB pixels: a page a pixel, MAP_WIDTH pages a row."""
    _, tags = dominant_tags(census)
    rows = max(1, -(-tags.size // MAP_WIDTH))
    padded = np.full(rows * MAP_WIDTH, -1, np.int16)
    padded[: tags.size] = tags
    pixels = np.zeros((rows * MAP_WIDTH, 3), np.uint8)
    stored = padded >= 0
    pixels[stored] = PALETTE[padded[stored]]
    grid = pixels.reshape(rows, MAP_WIDTH, 3)
    return np.repeat(np.repeat(grid, SCALE, axis=0), SCALE, axis=1)


def summary(path: Path, census: Census) -> dict[str, Any]:
    """The census as JSON."""
    mixed = sum(int(len(set(tags.tolist())) > 1) for tags in census.page_tags.values())
    return {
        "path": str(path),
        "kind": census.kind,
        "complete": census.complete,
        "machine": census.machine,
        "sections": dict(census.sections),
        "section_bytes": dict(census.section_bytes),
        "pages_stored": len(census.page_tags),
        "pages_with_mixed_tags": mixed,
        "tag_histogram": census.histogram(),
        "notes": census.notes,
    }


def _print(value: dict[str, Any]) -> None:
    print(f"{value['path']}: {value['kind']}{'' if value['complete'] else ' (incomplete)'}")
    machine = value["machine"]
    if machine:
        print(
            f"  machine: {machine['ram_size'] >> 20} MiB at {machine['ram_base']:#x}, "
            f"{machine['vcpus']} VCPU(s), MTE {'on' if machine['mte'] else 'off'} "
            f"(FEAT_MTE{machine['mte_level']}), profile {machine['profile']}, "
            f"digest {machine['digest'][:16]}"
        )
    sections = ", ".join(
        f"{tag} x{count} ({value['section_bytes'][tag]} B)"
        for tag, count in value["sections"].items()
    )
    print(f"  sections: {sections}")
    print(
        f"  pages stored: {value['pages_stored']}, "
        f"{value['pages_with_mixed_tags']} of them with more than one tag"
    )
    histogram = value["tag_histogram"]
    total = max(sum(histogram), 1)
    print("  granule tags in the stored pages:")
    for tag, count in enumerate(histogram):
        if count:
            bar = "#" * max(1, round(40 * count / total))
            print(f"    {tag:x}  {count:>9}  {100 * count / total:5.1f}%  {bar}")
    for note in value["notes"]:
        print(f"  note: {note}")


def _inspect(args: argparse.Namespace) -> int:
    path = input_file(args.file, "snapshot or stream file")
    if args.plot is not None:
        output_file(args.plot)
    census = census_of(path)
    value = summary(path, census)
    if args.plot is not None:
        write_png(args.plot, tag_map(census))
        value["plot"] = str(args.plot)
    if args.json:
        print_json(value)
    else:
        _print(value)
        if args.plot is not None:
            print(
                f"  tag map: {args.plot} ({SCALE}x{SCALE} pixels a page, {MAP_WIDTH} pages a row)"
            )
    return 0


def register(commands: Any) -> None:
    """Add the ``inspect`` command."""
    parser = add_command(
        commands, "inspect", "what a snapshot or a captured migration stream holds", __doc__
    )
    parser.add_argument("file", type=Path, help="a snapshot, or a captured TAGVMIGR stream")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="write a map of the tags")
    parser.add_argument("--json", action="store_true", help="print the census as JSON")
    parser.set_defaults(run=_inspect)
