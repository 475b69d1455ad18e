"""Python-level guest workloads that drive guest memory at GiB scale.

Each is a :data:`~tagvisor.kvm.model.guest.GuestProgram`: it runs under KVM_RUN on a
model VCPU, reaches memory only through stage 2 (so first touches initialise tags,
write-protected pages take permission faults and dirty logging sees every data and tag
store), and reports progress to the VMM with an 8-byte MMIO store, as a real guest
would through a ucall. Work is done in vectorised batches, never per granule.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Final

import numpy as np

from tagvisor.arch.constants import PAGE_SIZE, TAG_GRANULE
from tagvisor.kvm.api import VcpuExit
from tagvisor.kvm.model.guest import GuestContext, GuestProgram, mmio_write

#: Where workloads report progress: the VMM's progress register (docs/guest-abi.md).
PROGRESS_MMIO: Final = 0x0900_1000
#: Pages touched per stage-2 call: big enough to amortise, small enough to interleave.
BATCH_PAGES: Final = 4096


def touch_pages(base: int, npages: int, *, write: bool = True) -> GuestProgram:
    """Touch every page of [base, base + npages pages), reporting pages done per batch."""

    def program(ctx: GuestContext) -> Generator[VcpuExit, bytes | None, None]:
        done = 0
        while done < npages:
            count = min(BATCH_PAGES, npages - done)
            ctx.stage2.map_pages(base + done * PAGE_SIZE, count * PAGE_SIZE, write=write)
            done += count
            yield mmio_write(PROGRESS_MMIO, done)

    return program


def retag(base: int, length: int, *, seed: int = 0) -> GuestProgram:
    """Give every granule of the range a random non-zero tag (one STG per granule)."""

    def program(ctx: GuestContext) -> Generator[VcpuExit, bytes | None, None]:
        rng = np.random.default_rng(seed)
        step = BATCH_PAGES * PAGE_SIZE
        for offset in range(0, length, step):
            chunk = min(step, length - offset)
            tags = rng.integers(1, 16, chunk // TAG_GRANULE, dtype=np.uint8)
            ctx.stage2.store_tags(base + offset, tags)
            yield mmio_write(PROGRESS_MMIO, offset + chunk)

    return program


def fill_tagged(base: int, length: int, *, seed: int = 0) -> GuestProgram:
    """Fill the range with random data and random non-zero tags (a busy tagged heap)."""

    def program(ctx: GuestContext) -> Generator[VcpuExit, bytes | None, None]:
        rng = np.random.default_rng(seed)
        step = BATCH_PAGES * PAGE_SIZE
        for offset in range(0, length, step):
            chunk = min(step, length - offset)
            ctx.stage2.write(base + offset, rng.bytes(chunk))
            ctx.stage2.store_tags(
                base + offset, rng.integers(1, 16, chunk // TAG_GRANULE, dtype=np.uint8)
            )
            yield mmio_write(PROGRESS_MMIO, offset + chunk)

    return program


def churn(
    base: int, length: int, *, rounds: int, span: int = 64 << 10, seed: int = 0
) -> GuestProgram:
    """Keep re-allocating random spans of a tagged heap: new tags, new data.

    Each round picks a random span (``span`` bytes, granule aligned), retags it with
    random tags in 256-byte allocations and overwrites its data, like an allocator
    under load. After every round it reports the round number, so a VMM can migrate
    while it runs. ``rounds`` = 0 churns until the VMM stops running the VCPU.
    """

    def program(ctx: GuestContext) -> Generator[VcpuExit, bytes | None, None]:
        rng = np.random.default_rng(seed)
        spans = max(1, length // span)
        done = 0
        while rounds == 0 or done < rounds:
            start = base + int(rng.integers(0, spans)) * span
            allocations = span // 256
            tags = np.repeat(rng.integers(1, 16, allocations, dtype=np.uint8), 256 // 16)
            ctx.stage2.store_tags(start, tags)
            ctx.stage2.write(start, rng.bytes(span))
            done += 1
            yield mmio_write(PROGRESS_MMIO, done)

    return program
