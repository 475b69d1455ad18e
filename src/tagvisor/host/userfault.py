"""userfaultfd in MISSING mode: how a post-copy destination fills guest RAM on demand.

A VMM registers a range (UFFDIO_REGISTER); a fault on a page nobody has placed yet goes
to its handler, which fetches the page and places it with UFFDIO_COPY. UFFDIO_COPY
places *data*: the new page is not PG_mte_tagged, so when the guest's stage-2 fault
goes on, KVM clears its tags (sanitise_mte_tags). The VMM can only write the tags
afterwards (KVM_ARM_MTE_COPY_TAGS), so there is a window in which the page is present
with zeroed tags. UFFDIO_COPY_MODE_DONTWAKE keeps the faulting thread asleep through
that window, but any other VCPU that touches the page meanwhile sees it.

Linux has no call that places a page together with its tags. :meth:`Userfaultfd.
copy_with_tags` models one as an explicit proposal, ``PROPOSAL_UFFDIO_COPY_MTE``, off
unless the host enables it: the page is placed already tagged, so no window exists.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.arch.tagformat import U8, pack_tags
from tagvisor.host.errors import SyscallError
from tagvisor.host.mapping import NO_FRAME

if TYPE_CHECKING:
    from tagvisor.host.process import HostProcess

#: Called, in the faulting thread, with the page-aligned address of a missing page.
FaultHandler = Callable[[int], None]

#: The name a host enables to model placing pages with their tags (not in Linux).
PROPOSAL_UFFDIO_COPY_MTE = "uffdio-copy-mte"


class Userfaultfd:
    """A registered range of a process whose missing pages go to ``handler``."""

    def __init__(
        self,
        process: HostProcess,
        start: int,
        length: int,
        handler: FaultHandler,
    ) -> None:
        if start % PAGE_SIZE or length % PAGE_SIZE or length <= 0:
            raise SyscallError(errno.EINVAL, "UFFDIO_REGISTER", "range must be whole pages")
        self.process = process
        self.start = start
        self.end = start + length
        self.handler = handler
        self._woken = threading.Condition()
        self._asleep: set[int] = set()
        process.userfaults.append(self)

    @property
    def places_tags(self) -> bool:
        """Whether :meth:`copy_with_tags` works here (the host enables the proposal)."""
        return PROPOSAL_UFFDIO_COPY_MTE in self.process.proposals

    def covers(self, address: int) -> bool:
        """Whether ``address`` lies in the registered range."""
        return self.start <= address < self.end

    def unregister(self) -> None:
        """UFFDIO_UNREGISTER: later faults in the range are ordinary again."""
        if self in self.process.userfaults:
            self.process.userfaults.remove(self)

    # -- placing pages ---------------------------------------------------------------

    def _place(self, address: int, data: bytes) -> NDArray[np.int64]:
        """Put whole pages at ``address``; refuses pages already present (EEXIST)."""
        npages = len(data) // PAGE_SIZE
        end = address + len(data)
        if (
            address % PAGE_SIZE
            or len(data) % PAGE_SIZE
            or not npages
            or not (self.covers(address) and self.covers(end - 1))
        ):
            raise SyscallError(errno.EINVAL, "UFFDIO_COPY", "whole pages inside the range")
        vma = self.process.find_vma(address)
        if vma is None or end > vma.end:
            raise SyscallError(errno.EINVAL, "UFFDIO_COPY", "the pages leave the mapping")
        index = np.arange(vma.page_index(address), vma.page_index(address) + npages)
        if (vma.backing.pfns[index] != NO_FRAME).any():
            raise SyscallError(errno.EEXIST, "UFFDIO_COPY", f"a page at {address:#x} is present")
        pfns = self.process.frames.alloc(npages)
        self.process.frames.data[pfns] = np.frombuffer(data, np.uint8).reshape(npages, -1)
        vma.backing.pfns[index] = pfns
        return pfns

    def copy(self, address: int, data: bytes, *, wake: bool = True) -> None:
        """UFFDIO_COPY of whole pages; with ``wake=False`` (UFFDIO_COPY_MODE_DONTWAKE)
        the faulting thread sleeps on until :meth:`wake`."""
        self._place(address, data)
        if wake:
            self.wake(address, len(data))

    def wake(self, address: int, length: int = PAGE_SIZE) -> None:
        """UFFDIO_WAKE for [address, address + length)."""
        with self._woken:
            self._asleep.difference_update(range(address, address + length, PAGE_SIZE))
            self._woken.notify_all()

    def copy_with_tags(self, address: int, data: bytes, tags: U8) -> None:
        """PROPOSAL (PROPOSAL_UFFDIO_COPY_MTE), not in Linux: place pages with their tags
        (one per byte, 256 a page), already marked tagged, then wake."""
        if PROPOSAL_UFFDIO_COPY_MTE not in self.process.proposals:
            raise SyscallError(
                errno.EINVAL,
                "UFFDIO_COPY(MTE)",
                "placing a page with its tags is a proposal; Linux has no such call "
                f"(a modelled host enables it with {PROPOSAL_UFFDIO_COPY_MTE!r})",
            )
        if tags.size * 16 != len(data):
            raise SyscallError(errno.EINVAL, "UFFDIO_COPY(MTE)", "one tag per 16 bytes")
        pfns = self._place(address, data)
        frames = self.process.frames
        frames.try_mte_tagging(pfns)
        packed = np.empty(tags.size // 2, np.uint8)
        pack_tags(tags, packed, low_nibble_only=True)
        frames.packed_pages[pfns] = packed.reshape(-1, 128)
        frames.tag_inits[pfns] += 1
        frames.set_mte_tagged(pfns)
        self.wake(address, len(data))

    # -- the faulting side -----------------------------------------------------------

    def resolve(self, address: int, timeout: float = 30.0) -> None:
        """Called by the fault path: hand the page to the VMM, sleep until woken."""
        page = address - address % PAGE_SIZE
        with self._woken:
            self._asleep.add(page)
        self.handler(page)
        with self._woken:
            # The page may have been placed (and woken) between the fault and sleeping.
            placed = self._woken.wait_for(
                lambda: page not in self._asleep or self.present(page), timeout
            )
            self._asleep.discard(page)
        if not placed:
            raise SyscallError(errno.EFAULT, "userfault", f"{page:#x} was never placed")

    def present(self, address: int) -> bool:
        """Whether the page at ``address`` has been placed."""
        vma = self.process.find_vma(address)
        return vma is not None and vma.backing.pfns[vma.page_index(address)] != NO_FRAME
