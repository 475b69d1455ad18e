"""Snapshots that keep every tag: a sectioned, versioned, checksummed file per machine."""

from tagvisor.snapshot.container import FormatError
from tagvisor.snapshot.snapshot import (
    Snapshot,
    SnapshotError,
    SnapshotReport,
    read_snapshot,
    restore_snapshot,
    save_snapshot,
)

__all__ = [
    "FormatError",
    "Snapshot",
    "SnapshotError",
    "SnapshotReport",
    "read_snapshot",
    "restore_snapshot",
    "save_snapshot",
]
