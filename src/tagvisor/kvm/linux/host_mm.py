"""Forcing the host's memory management on this process's pages: swap-out, soft-offline
migration and KSM merging, as :class:`~tagvisor.kvm.linux.memory.LinuxUserMemory`'s
capabilities.

Each is a madvise: MADV_PAGEOUT (mm/madvise.c, 5.4+) reclaims the range's private pages
now, so with a swap device anonymous pages go to swap; MADV_SOFT_OFFLINE
(madvise_inject_error, CAP_SYS_ADMIN, CONFIG_MEMORY_FAILURE) migrates a page off its
frame and retires the frame; MADV_MERGEABLE hands the range to ksmd, which merges a page
only once it has seen it unchanged on two passes (mm/ksm.c cmp_and_merge_page), so this
waits for three full scans.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from tagvisor.kvm.linux import libc
from tagvisor.kvm.linux.libc import MADV_MERGEABLE, MADV_PAGEOUT, MADV_SOFT_OFFLINE

PAGE: Final = 4096
PAGEMAP: Final = "/proc/self/pagemap"
#: Bit 62 of a pagemap entry: the page is in swap (Documentation/admin-guide/mm/pagemap.rst).
PAGEMAP_SWAPPED: Final = 1 << 62
KSM: Final = Path("/sys/kernel/mm/ksm")
#: Full scans ksmd must finish after MADV_MERGEABLE: one to checksum a page, one to see
#: it unchanged and put it in the unstable tree, one for its twin to find it there;
#: twice that, so a merge that failed once (write_protect_page's page_count check) is
#: tried again. Six took about 0.3 s in the testbed.
KSM_PASSES: Final = 6
KSM_TIMEOUT: Final = 20.0


def _advise(address: int, length: int, advice: int) -> int:
    try:
        libc.madvise(address, length, advice)
    except OSError as exc:
        return -(exc.errno or errno.EIO)
    return 0


def swapped_pages(address: int, npages: int) -> int:
    """How many of ``npages`` pages from ``address`` are in swap, from pagemap."""
    with open(PAGEMAP, "rb") as pagemap:
        pagemap.seek(address // PAGE * 8)
        raw = pagemap.read(npages * 8)
    entries = (int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8))
    return sum(1 for entry in entries if entry & PAGEMAP_SWAPPED)


def page_out(address: int, length: int) -> int | None:
    """MADV_PAGEOUT once on each CPU this thread may run on, then the pages in swap; None
    if the kernel refused the advice.

    A page faulted in recently waits in its CPU's LRU batch (mm/swap.c) until the batch
    drains, and reclaim cannot isolate it from there; madvise_pageout drains only the
    CPU it runs on (lru_add_drain, not lru_add_drain_all), so a call per CPU leaves no
    batch undrained. (A precaution from the source: the pages 6.1 kept resident were
    those a live VM maps, and stayed so through both calls; docs/conformance.md.)
    """
    cpus = os.sched_getaffinity(0)
    try:
        for cpu in sorted(cpus):
            os.sched_setaffinity(0, {cpu})
            if _advise(address, length, MADV_PAGEOUT) < 0:
                return None
    finally:
        os.sched_setaffinity(0, cpus)
    return swapped_pages(address, -(-length // PAGE))


def soft_offline(address: int, length: int) -> int:
    """MADV_SOFT_OFFLINE a page at a time (the kernel takes one page per call anyway):
    the first failure's -errno, else 0."""
    for page in range(address, address + length, PAGE):
        done = _advise(page, PAGE, MADV_SOFT_OFFLINE)
        if done < 0:
            return done
    return 0


def _ksm(name: str) -> int:
    return int((KSM / name).read_text())


def _set_ksm(name: str, value: int) -> None:
    (KSM / name).write_text(f"{value}\n")


def ksm_merge(ranges: Sequence[tuple[int, int]]) -> int | None:
    """MADV_MERGEABLE, then ksmd run until KSM_PASSES more full scans are done, and
    stopped again (run=0 keeps what it merged: Documentation/admin-guide/mm/ksm.rst);
    None where the kernel has no KSM."""
    if not (KSM / "run").is_file():
        return None
    for address, length in ranges:
        done = _advise(address, length, MADV_MERGEABLE)
        if done < 0:
            return done
    # Fast scans for the few pages here; ksmd sleeps 20 ms between 100 pages by default.
    _set_ksm("pages_to_scan", 1000)
    _set_ksm("sleep_millisecs", 1)
    target = _ksm("full_scans") + KSM_PASSES
    _set_ksm("run", 1)
    try:
        deadline = time.monotonic() + KSM_TIMEOUT
        while _ksm("full_scans") < target and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        _set_ksm("run", 0)
    return 0


def ksm_sharing() -> int:
    """/sys/kernel/mm/ksm/pages_sharing: how many mappings share a KSM page now."""
    return _ksm("pages_sharing") if (KSM / "pages_sharing").is_file() else 0
