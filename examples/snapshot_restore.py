"""Snapshot a guest in the middle of its work and restore it on a new host, twice:
with its tags it finishes its work; without them (as a VMM that ignores MTE would
restore it) it faults on its own pointers.

    .venv/bin/python examples/snapshot_restore.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tagvisor.guests.catalogue import BY_NAME
from tagvisor.kvm.model import ModelKvm
from tagvisor.snapshot import restore_snapshot, save_snapshot
from tagvisor.vmm import MachineBuilder

RAM = 128 << 20
ROUNDS = 40


def host() -> ModelKvm:
    return ModelKvm(host_memory=RAM + (256 << 20), host_mte_level=3)


def main() -> int:
    source = (
        MachineBuilder(host())
        .memory(RAM)
        .mte(tcf="sync")
        .argument(ROUNDS)  # churn: ROUNDS rounds of allocating, freeing and retagging
        .image(BY_NAME["churn"].image)
        .build()
    )
    source.run(max_exits=400)  # part of the way: the heap is full of tagged blocks
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "churn.snap"
        report = save_snapshot(source, path)  # the machine must be paused: it is
        print(f"saved {report.file_bytes} bytes, {report.stats.tag_bytes} of them tags")
        tagged = restore_snapshot(path, host())  # each page's tags before it runs
        untagged = restore_snapshot(path, host(), with_tags=False)
    with_tags = tagged.run()
    without_tags = untagged.run()
    print(f"restored with its tags: exit status {with_tags.exit_status} (0: all rounds done)")
    print(
        f"restored without its tags: exit status {without_tags.exit_status} "
        "(255: a tag check fault on its own pointer)"
    )
    return 0 if with_tags.exit_status == 0 and without_tags.exit_status == 255 else 1


if __name__ == "__main__":
    raise SystemExit(main())
