"""Snapshot files: save a paused machine with every tag, and restore it.

    file := HEADER("TAGVSNAP", 1.3) CONF (VCPU VREG?)* GIC3? MPST? DEVICE* PAGE* END!

The sections are those of tagvisor.snapshot.registry, in its order: CONF the
machine's shape (MachineState), one VCPU section per VCPU (its registers wider or
narrower than 64 bits in a VREG section after it, since 1.1), one section per device
(UART, UCAL, DMA, and any registered kind; since 1.2, before which one DEVS section
held them), PAGE sections the guest's non-zero pages with their tags (pages whose data
and tags are all zero are not stored), END! a summary with the SHA-256 of all memory
and tags. See docs/snapshot.md for the compatibility rule.

Restore reads the file twice: first to verify every checksum, size and address without
touching anything, then to build the machine and fill it. Tags are written with
KVM_ARM_MTE_COPY_TAGS before the guest runs again; otherwise its first touch of each
page would clear them (``with_tags=False`` shows that failure on purpose).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tagvisor import wire
from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.errors import TagvisorError
from tagvisor.kvm.api import Kvm
from tagvisor.kvm.uapi import Cap
from tagvisor.snapshot import pages
from tagvisor.snapshot.container import (
    END_TAG,
    ByteSink,
    FormatError,
    Payload,
    Version,
    iter_sections,
    read_header,
    write_header,
    write_section,
)
from tagvisor.snapshot.guestpages import (
    DigestReplay,
    FreshTags,
    apply_section,
    iter_runs,
    runs_of,
    write_run,
)
from tagvisor.snapshot.pages import EncodeStats, Kind, PageRun
from tagvisor.snapshot.registry import MAJOR, MEMORY, REGISTRY, Loaded, Phase
from tagvisor.snapshot.state import MachineState, VcpuState
from tagvisor.vmm.builder import MachineBuilder
from tagvisor.vmm.machine import Machine, RunState

MAGIC: Final = b"TAGVSNAP"
VERSION: Final = Version(MAJOR, 3)
#: The summary at the end.
END_LIMIT: Final = 64 << 10


def _limits() -> dict[bytes, int]:
    """Every section a snapshot may hold (read when used: device kinds may be added)."""
    limits = REGISTRY.limits(Phase.SETUP, Phase.ITERATE, Phase.COMPLETE)
    limits[END_TAG] = END_LIMIT
    return limits


Progress = Callable[[int, int], None]


class SnapshotError(TagvisorError):
    """A snapshot cannot be taken or restored here; the message says why."""


@dataclass
class SnapshotReport:
    """What :func:`save_snapshot` wrote: the file, the pages of guest RAM, what encoding them cost,
    the SHA-256 of every page's data and tags (the END! summary's digest), and the file's size."""

    path: str
    pages_total: int
    stats: EncodeStats
    digest: str
    file_bytes: int


@dataclass
class Snapshot:
    """What a verified snapshot file holds, without its pages."""

    version: Version
    machine: MachineState
    #: Every state but memory, checked, ready for REGISTRY.apply.
    loaded: Loaded
    digest: str
    pages_stored: int

    @property
    def vcpus(self) -> list[VcpuState]:
        """The VCPUs' register states, in VCPU order."""
        return [state for _, state in sorted(self.loaded.vcpus.items())]


def save_snapshot(machine: Machine, path: Path, progress: Progress | None = None) -> SnapshotReport:
    """Write ``machine`` (which must not be running) to ``path`` atomically: on any
    failure, Ctrl-C included, ``path`` is untouched and no partial file is left."""
    if machine.state is RunState.RUNNING:
        raise SnapshotError("pause the machine before taking a snapshot")
    if machine.state is RunState.STOPPED:
        raise SnapshotError(
            "the guest has stopped (powered off or failed): a snapshot of it could only "
            "restore a guest that never runs again"
        )
    temporary = path.with_name(path.name + ".partial")
    try:
        total, stats, digest = _write_file(machine, temporary, progress)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return SnapshotReport(str(path), total, stats, digest, path.stat().st_size)


def _write_file(
    machine: Machine, temporary: Path, progress: Progress | None
) -> tuple[int, EncodeStats, str]:
    """Write the whole snapshot to ``temporary``; (pages in RAM, stats, digest)."""
    digest = hashlib.sha256()
    stats = EncodeStats()
    total = machine.memory.size // PAGE_SIZE
    done = 0
    with temporary.open("wb") as sink:
        write_header(sink, MAGIC, VERSION)
        for tag, payload in [
            *REGISTRY.save(machine, Phase.SETUP),
            *REGISTRY.save(machine, Phase.COMPLETE),
        ]:
            write_section(sink, tag, payload)
        for region in machine.memory.regions:
            for run in iter_runs(machine, region):
                digest.update(run.data.tobytes())
                digest.update(run.tags.tobytes())
                stats.pages += run.npages
                stats.zero_pages += _write_nonzero(sink, run, stats)
                done += run.npages
                if progress is not None:
                    progress(done, total)
        summary = {
            "digest": digest.hexdigest(),
            "pages_total": total,
            "pages_stored": stats.pages - stats.zero_pages,
        }
        write_section(sink, END_TAG, json.dumps(summary, sort_keys=True).encode())
        sink.flush()
        os.fsync(sink.fileno())
    return total, stats, digest.hexdigest()


def _write_nonzero(sink: ByteSink, run: PageRun, stats: EncodeStats) -> int:
    """Encode the run's pages that are not entirely zero; return how many were zero."""
    kinds = pages.classify(run.data, run.tags)
    for first, count in runs_of(kinds != Kind.ZERO):
        part = PageRun(
            run.gpa + first * PAGE_SIZE,
            run.data[first : first + count],
            run.tags[first : first + count],
        )
        payload, part_stats = pages.encode_parts(part)
        write_section(sink, b"PAGE", payload)
        stats.data_bytes += part_stats.data_bytes
        stats.tag_bytes += part_stats.tag_bytes
        stats.uniform_tag_pages += part_stats.uniform_tag_pages
        stats.wire_bytes += part_stats.wire_bytes
    return int((kinds == Kind.ZERO).sum())


def read_snapshot(path: Path) -> Snapshot:
    """Verify the whole file (checksums, sizes, addresses, every state's fields) and
    return its states."""
    summary: dict[str, object] | None = None
    stored = 0
    replay: DigestReplay | None = None
    with path.open("rb") as source:
        loaded = Loaded(read_header(source, MAGIC, VERSION.major))
        for section in iter_sections(source, _limits()):
            if section.tag == MEMORY.tag:
                if replay is None:
                    replay = DigestReplay(_regions(loaded))
                stored += _verify_pages(section.payload, loaded, replay)
            elif section.tag == END_TAG:
                summary = wire.loads(section.payload, "the END! summary")
            else:
                REGISTRY.load(section, loaded)
    if loaded.machine is None or summary is None:
        raise FormatError("the snapshot lacks its CONF or END! section")
    REGISTRY.check(loaded, loaded.machine.config)
    digest = summary.get("digest")
    if not isinstance(digest, str) or summary.get("pages_stored") != stored:
        raise FormatError("the END! summary does not match the PAGE sections")
    found = (replay or DigestReplay(_regions(loaded))).hexdigest()
    if found != digest:
        raise FormatError(
            f"the pages' digest is {found[:16]}..., the END! summary says {digest[:16]}...: "
            "the pages are not the ones the snapshot was taken with"
        )
    return Snapshot(loaded.version, loaded.machine, loaded, digest, stored)


def _regions(loaded: Loaded) -> list[tuple[int, int]]:
    """(gpa, pages) of the guest's RAM regions: the builder makes one."""
    if loaded.machine is None:
        raise FormatError("a PAGE section comes before the machine's configuration")
    config = loaded.machine.config
    return [(config.ram_base, config.ram_size // PAGE_SIZE)]


def _verify_pages(payload: Payload, loaded: Loaded, replay: DigestReplay) -> int:
    """Check a PAGE section against the machine's RAM and add it to the digest being
    recomputed; return its pages."""
    assert loaded.machine is not None  # _regions made sure
    run = pages.decode(payload)
    _check_in_ram(run, loaded.machine)
    replay.add(run)
    return run.count


def _check_in_ram(run: PageRun, machine: MachineState) -> None:
    config = machine.config
    if (
        run.gpa < config.ram_base
        or run.gpa + run.npages * PAGE_SIZE > config.ram_base + config.ram_size
    ):
        raise FormatError(f"a PAGE section at {run.gpa:#x} lies outside the guest's RAM")
    if not config.mte and run.tags.any():
        raise FormatError("a snapshot of a VM without MTE carries tags")


def restore_snapshot(
    path: Path,
    kvm: Kvm,
    *,
    with_tags: bool = True,
    progress: Progress | None = None,
    console: Callable[[bytes], None] | None = None,
) -> Machine:
    """Build a paused machine from a snapshot: memory, tags, registers and devices;
    ``console`` gets what the guest writes from then on."""
    snapshot = read_snapshot(path)  # nothing is built unless the whole file is sound
    config = snapshot.machine.config
    if config.mte and not kvm.check_extension(Cap.ARM_MTE):
        raise SnapshotError("the snapshot's guest uses MTE but this host's KVM has none")
    if config.irqchip != "none" and not kvm.check_extension(Cap.IRQCHIP):
        raise SnapshotError(
            "the snapshot's guest (a Linux guest) has an in-kernel GICv3, and this KVM has "
            "no in-kernel interrupt controller (KVM_CAP_IRQCHIP is 0): restore it on a real "
            "arm64 /dev/kvm"
        )
    machine = MachineBuilder.from_config(kvm, config, console).build()
    # The new machine has not run: zero pages and zero tags need no writes (FreshTags),
    # so it gets memory only for the pages that hold something, as the guest had.
    fresh = FreshTags(machine)
    done = 0
    with path.open("rb") as source:
        read_header(source, MAGIC, VERSION.major)
        for section in iter_sections(source, _limits()):
            if section.tag == MEMORY.tag:
                if with_tags:
                    page_section = pages.decode_section(section.payload)
                    done += apply_section(machine, page_section, fresh=fresh)
                else:
                    run = pages.decode(section.payload)
                    write_run(machine, run, with_tags=False)
                    done += run.count
                if progress is not None:
                    progress(done, snapshot.pages_stored)
    REGISTRY.apply(snapshot.loaded, machine)
    return machine
