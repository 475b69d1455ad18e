"""Faulting in the destination's fresh memory just ahead of the pages that land in it.

A destination writes every page it receives into memory its process has never touched,
and the first write to each page is a page fault: the kernel finds a frame, zeroes it
and maps it. Taken one at a time inside ``recv_into`` those faults are most of the
receiving thread's time (0.25 s per GiB where the hypervisor backs the memory already,
1.2 to 2.6 s per GiB on a VM whose hypervisor takes free memory back, as the one
tagvisor is benchmarked on) and they stall the stream. A :class:`Prefaulter` thread
takes them ahead of time with ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14), 2 MiB per
call, which releases the GIL (ctypes) and costs less per page than faults taken one by
one.

It works for the model, whose host RAM is one array of page frames that the allocator
hands out lowest first (tagvisor.host.frames): the thread stays at most ``ahead``
frames ahead of the frames handed out so far, starts above the frames a preallocated
host faulted in already (``FrameTable.backed``), and stops after ``limit`` frames (the
pages the source announced), so it faults in at most ``ahead`` frames that no page
ends up in, whatever the source claims, and none when the source is right.
Populating changes nothing the model can see: a never-used frame reads as zeros
before and after, and a frame that is being written meanwhile is simply present
already. Where the call does not exist, or for any other backend, the thread does
nothing.
"""

from __future__ import annotations

import threading
from typing import Final

import numpy as np

from tagvisor.arch.constants import PACKED_TAGS_PER_PAGE, PAGE_SIZE
from tagvisor.host.frames import FrameTable
from tagvisor.host.populate import available, populate_range

__all__ = ["AHEAD_FRAMES", "CHUNK_FRAMES", "Prefaulter", "available"]

#: Frames populated per call: big enough that the call's overhead is nothing, small
#: enough that the thread keeps just ahead of the stream.
CHUNK_FRAMES: Final = (2 << 20) // PAGE_SIZE
#: How far ahead of the frames handed out the thread may run (frames): a few
#: sections' worth, the most memory it can fault in for nothing.
AHEAD_FRAMES: Final = (64 << 20) // PAGE_SIZE
#: How long the thread waits when it is far enough ahead (seconds).
_WAIT: Final = 0.001


class Prefaulter:
    """Populates a frame table's never-used frames (data and tags) just ahead of the
    allocator, on a thread of its own, until :meth:`stop` or up to ``limit`` frames
    from the first never-used one; without a frame table (another backend) it does
    nothing."""

    def __init__(self, frames: FrameTable | None, limit: int, *, ahead: int = AHEAD_FRAMES) -> None:
        self.frames = frames
        self.limit = limit
        self.ahead = ahead
        #: Frames this thread populated (for tests and reports).
        self.populated = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="migration-prefault", daemon=True)

    def start(self) -> Prefaulter:
        """Start the thread (when there are frames to fault in and the host can); returns self."""
        if self.frames is not None and self.limit > 0 and available():
            self._thread.start()
        return self

    def stop(self, *, wait: bool = False) -> None:
        """Tell the thread to stop after its current call (``wait``: and wait for it;
        there is no need to, the thread changes nothing the model sees)."""
        self._stopping.set()
        if wait and self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        frames = self.frames
        assert frames is not None
        used = frames.ever_used
        nframes = frames.nframes
        # The allocator hands out the lowest free frame first; never-used frames above
        # the lowest one are the next to go (recycled frames are backed already), and
        # the stream's pages take at most ``limit`` of them.
        frontier = int(np.argmin(used)) if nframes and not used.all() else nframes
        # Frames below ``backed`` were faulted in when the host was made (prealloc).
        cursor, end = max(frontier, frames.backed), min(nframes, frontier + self.limit)
        data = frames.data.ctypes.data
        tags = frames.packed_pages.ctypes.data
        while cursor < end and not self._stopping.is_set():
            # Reads of ``used`` race with the allocator; a stale value only makes the
            # thread wait a little or populate a frame that is already present.
            window = used[frontier : cursor + 1]
            step = int(np.argmin(window))  # the first frame not handed out yet
            frontier += step if window.size and not window[step] else window.size
            if cursor < frontier:  # the stream overtook the thread: skip what is taken
                cursor = frontier
                continue
            if cursor - frontier >= self.ahead:
                self._stopping.wait(_WAIT)
                continue
            count = min(CHUNK_FRAMES, end - cursor)
            # A failure (out of memory, say) is left for the stream's own faults to meet.
            populate_range(data + cursor * PAGE_SIZE, count * PAGE_SIZE)
            populate_range(tags + cursor * PACKED_TAGS_PER_PAGE, count * PACKED_TAGS_PER_PAGE)
            cursor += count
            self.populated += count
