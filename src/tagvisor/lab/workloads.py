"""Guest workloads the lab adds to tagvisor.kvm.model.workloads'."""

from __future__ import annotations

from collections.abc import Generator
from typing import Final

import numpy as np

from tagvisor.arch.constants import GRANULES_PER_PAGE, PAGE_SIZE
from tagvisor.kvm.api import VcpuExit
from tagvisor.kvm.model.guest import GuestContext, GuestProgram, mmio_write
from tagvisor.kvm.model.workloads import PROGRESS_MMIO

#: Pages a versioned-churn round rewrites.
ROUND_PAGES: Final = 16


def chain(*programs: GuestProgram) -> GuestProgram:
    """Run ``programs`` one after another on the same VCPU."""

    def program(ctx: GuestContext) -> Generator[VcpuExit, bytes | None, None]:
        for part in programs:
            yield from part(ctx)

    return program


def version_tag(version: int) -> int:
    """The tag every granule of a page gets at ``version`` (never 0: 1 to 15)."""
    return version % 15 + 1


def versioned_churn(base: int, npages: int, *, seed: int = 0) -> GuestProgram:
    """Rewrite random runs of pages, each page's data and tags from one version number.

    A page at version v holds v (a little-endian u64) in every 8 bytes and tag
    ``version_tag(v)`` in every granule, stored tags first, then data, as an allocator
    retags and then fills. Any (data, tags) pair read from it whose versions disagree
    is torn. It reports after the tag store and after the data, so a VMM can stop it in
    between (where a real guest can be, too). Runs until the VMM stops running it.
    """

    def program(ctx: GuestContext) -> Generator[VcpuExit, bytes | None, None]:
        rng = np.random.default_rng(seed)
        version = 0
        while True:
            version += 1
            first = int(rng.integers(0, max(1, npages - ROUND_PAGES)))
            gpa = base + first * PAGE_SIZE
            tags = np.full(ROUND_PAGES * GRANULES_PER_PAGE, version_tag(version), np.uint8)
            ctx.stage2.store_tags(gpa, tags)
            yield mmio_write(PROGRESS_MMIO, version)
            words = np.full(ROUND_PAGES * PAGE_SIZE // 8, version, np.uint64)
            ctx.stage2.write(gpa, words.tobytes())
            yield mmio_write(PROGRESS_MMIO, version)

    return program


def torn(data: bytes | np.ndarray, tags: np.ndarray) -> bool:
    """Whether one page's data and tags come from different versions."""
    version = int(np.frombuffer(bytes(data[:8]), np.uint64)[0])
    expected = version_tag(version) if version else 0
    return bool((tags != expected).any())
