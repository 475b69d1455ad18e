"""PROPOSAL, not Linux: a KVM_GET_DIRTY_LOG variant that also returns the tags.

The seed thread (Andrew Jones, Sep 2020): "Maybe we need a new version of
KVM_GET_DIRTY_LOG that also provides the tags for all addresses of each dirty page",
and Steven Price's answer, that it "would also require a lot of return space (size of
slot/32)". Modelled here as an explicit proposal, ``PROPOSAL_DIRTY_LOG_TAGS``, off
unless a host enables it (``ModelKvm(proposals=...)``), like ``uffdio-copy-mte``.

The call harvests the slot's dirty log exactly as KVM_GET_DIRTY_LOG does (report,
clear, write-protect) and, under the same lock, writes the packed tags of every page it
reports into the user buffer at ``addr + page * 128``: 128 bytes per page of the slot,
slot size / 32 in all, the space the thread named. Pages that are not reported keep
whatever the buffer held. Because the tags are read in the same step as the page is
write-protected, any later guest store to the page - data or tag - dirties it again.

``DIRTY_LOG_TAGS_ALL`` reports every page with memory behind it (the first harvest of
a log that starts all dirty, as KVM_DIRTY_LOG_INITIALLY_SET would).
"""

from __future__ import annotations

import errno
from typing import Final

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import PACKED_TAGS_PER_PAGE, PAGE_SIZE
from tagvisor.host.process import HostProcess
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model.memslots import Memslot

#: The name a host enables to model the dirty log that returns tags (not in Linux).
PROPOSAL_DIRTY_LOG_TAGS: Final = "dirty-log-tags"
#: Report (and return the tags of) every populated page, not only the dirty ones.
DIRTY_LOG_TAGS_ALL: Final = 1
IOCTL: Final = "KVM_GET_DIRTY_LOG(TAGS)"


def buffer_size(memslot: Memslot) -> int:
    """The return space the call needs: 128 bytes per page, slot size / 32."""
    return memslot.npages * PACKED_TAGS_PER_PAGE


def check_enabled(process: HostProcess) -> None:
    """EINVAL unless the host models the dirty-log-with-tags proposal."""
    if PROPOSAL_DIRTY_LOG_TAGS not in process.proposals:
        raise KvmError(
            errno.EINVAL,
            IOCTL,
            "a dirty log that returns tags is a proposal; Linux has no such call "
            f"(a modelled host enables it with {PROPOSAL_DIRTY_LOG_TAGS!r})",
        )


def write_page_tags(
    process: HostProcess, memslot: Memslot, pages: NDArray[np.intp], addr: int
) -> None:
    """Put the packed tags of the slot's ``pages`` at ``addr + page * 128``.

    Pages never tagged read as zero tags, as COPY_TAGS FROM_GUEST gives them.
    """
    if process.accessible_prefix(addr, buffer_size(memslot), write=True) < buffer_size(memslot):
        raise KvmError(errno.EFAULT, IOCTL, f"the tag buffer at {addr:#x} is not slot size / 32")
    if not pages.size:
        return
    populated = process.populated(memslot.userspace_addr, memslot.npages)[pages]
    pages = pages[populated]
    if not pages.size:
        return
    frames = process.frames
    pfns = np.concatenate(
        [
            process.fault_in(memslot.hva_of(first), count * PAGE_SIZE, write=False)
            for first, count in _runs(pages)
        ]
    )
    packed = frames.packed_pages[pfns].copy()
    packed[~frames.mte_tagged[frames.folio_head[pfns]]] = 0
    view = process.contiguous_view(addr, buffer_size(memslot), write=True)
    if view is not None:
        view.reshape(-1, PACKED_TAGS_PER_PAGE)[pages] = packed
        return
    for page, row in zip(pages.tolist(), packed, strict=True):
        process.write(addr + page * PACKED_TAGS_PER_PAGE, row.tobytes())


def _runs(pages: NDArray[np.intp]) -> list[tuple[int, int]]:
    """(first page, count) of each run of consecutive pages in ascending ``pages``."""
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [pages.size]))
    return [(int(pages[a]), int(b - a)) for a, b in zip(starts, ends, strict=True)]
