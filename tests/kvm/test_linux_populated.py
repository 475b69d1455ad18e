"""Which pages of a mapping have memory of their own (the real backend's
LinuxUserMemory.populated), on this machine's own kernel: no KVM is involved."""

from __future__ import annotations

import ctypes

import pytest

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.kvm.linux.memory import LinuxUserMemory


def test_pages_only_read_have_no_memory_of_their_own_where_frames_are_visible() -> None:
    """Scenario: 8 private anonymous pages; page 2 is written, page 5 only read (the
    kernel maps its shared zero page there, which reads as present in pagemap). Page 2
    is populated; page 5 too where frame numbers are hidden (without CAP_SYS_ADMIN the
    zero page cannot be told apart), else not; the others never."""
    memory = LinuxUserMemory()
    base = memory.map_anonymous(8 * PAGE_SIZE)
    try:
        ctypes.memset(base + 2 * PAGE_SIZE, 1, 1)
        ctypes.string_at(base + 5 * PAGE_SIZE, 1)
        frames_visible = memory.frame_numbers(base + 2 * PAGE_SIZE, 1) is not None
        expected = {2} if frames_visible else {2, 5}
        populated = memory.populated(base, 8)
        assert set(populated.nonzero()[0].tolist()) == expected
    finally:
        memory.close()


@pytest.mark.parametrize("written", [False, True], ids=["read", "written-after-read"])
def test_a_page_written_after_it_was_read_has_memory(written: bool) -> None:
    """Scenario: a page read (zero page) and then written gets a page of its own
    (copy on write): it counts as populated from then on."""
    memory = LinuxUserMemory()
    base = memory.map_anonymous(PAGE_SIZE)
    try:
        ctypes.string_at(base, 1)
        if written:
            ctypes.memset(base, 7, 1)
        frames_visible = memory.frame_numbers(base, 1) is not None
        assert bool(memory.populated(base, 1)[0]) is (written or not frames_visible)
    finally:
        memory.close()
