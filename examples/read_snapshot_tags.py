"""Read the tags a snapshot holds: take one of a running guest, then count its tags
and show the heap's first granules, straight from the file.

    .venv/bin/python examples/read_snapshot_tags.py [SNAPSHOT]

With a path, reads that snapshot instead (e.g. one from `tagvisor snapshot`).
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.cli.snapshot_pages import stored_runs
from tagvisor.guests.catalogue import BY_NAME
from tagvisor.guests.reports import HEAP_UAF
from tagvisor.kvm.model import ModelKvm
from tagvisor.snapshot import read_snapshot, save_snapshot
from tagvisor.vmm import MachineBuilder


def take_snapshot(path: Path) -> None:
    """A snapshot of the heap guest right after its use-after-free."""
    kvm = ModelKvm(host_memory=384 << 20, host_mte_level=3)
    machine = MachineBuilder(kvm).memory(128 << 20).mte().image(BY_NAME["heap"].image).build()
    machine.pause_on_report(HEAP_UAF)
    machine.run()
    save_snapshot(machine, path)


def show(path: Path) -> None:
    snapshot = read_snapshot(path)  # verifies every checksum and the digest first
    print(f"{path}: {snapshot.pages_stored} pages stored, digest {snapshot.digest[:16]}")
    census: Counter[int] = Counter()
    tagged_pages = 0
    for run in stored_runs(path):
        for index, tags in zip(run.indices(), run.tags, strict=True):
            census.update(tags.tolist())  # 256 granules of 16 bytes
            if tags.any():
                tagged_pages += 1
                if tagged_pages == 1:
                    gpa = run.gpa + int(index) * PAGE_SIZE
                    shown = " ".join(f"{tag:x}" for tag in tags[:16])
                    print(f"first tagged page {gpa:#x}, its first 16 granules: {shown}")
    print(f"{tagged_pages} pages hold non-zero tags; granules by tag:")
    for tag in range(16):
        print(f"  {tag:x}: {census[tag]}")


def main(argv: list[str]) -> int:
    if argv:
        show(Path(argv[0]))
        return 0
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "heap.snap"
        take_snapshot(path)
        show(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
