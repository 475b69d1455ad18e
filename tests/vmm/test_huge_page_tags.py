"""A machine on huge pages never shows a previous owner's tags, whatever the kernel.

Two real kernels do show them (docs/conformance.md, "Memory"): 6.1 keeps each 4 KiB
page's PG_mte_tagged through the hugetlb pool, and 7.3 marks a whole folio tagged when
the VMM writes one page's tags, leaving the other 511 pages' old tags visible. The
builder clears every tag of huge-page RAM first (``clear_stale_tags``).
"""

from __future__ import annotations

import numpy as np
import pytest

from tagvisor.conformance.compare import TESTBED_32BIT_EL1, TESTBED_MTE_LEVEL
from tagvisor.kvm.model import ModelKvm
from tagvisor.vmm import builder as builder_module
from tagvisor.vmm.builder import MachineBuilder
from tagvisor.vmm.machine import MachineConfig

RAM = 0x4000_0000
HUGE = 2 << 20


def _restored_on_a_used_huge_page(profile: str) -> np.ndarray:
    """A huge page whose frames hold an old owner's tag 3 (flags cleared, tags left)
    goes back to the pool; a machine restoring onto huge pages gets it and writes
    tag 5 into page 1 (as a snapshot's restore does): the tags of pages 0 to 2."""
    kvm = ModelKvm(
        64 << 20, profile, host_mte_level=TESTBED_MTE_LEVEL, host_32bit_el1=TESTBED_32BIT_EL1
    )
    user = kvm.user_memory
    old = user.map_hugetlb(HUGE, shared=True)
    user.write(old, b"\0")
    frames = user.frame_numbers(old, HUGE // 4096)
    assert frames is not None
    kvm.frames.packed_pages[frames] = 0x33
    user.unmap(old, HUGE)
    config = MachineConfig(RAM, HUGE, "hugetlb", True, 1, 1, "copy-tags")
    machine = MachineBuilder.from_config(kvm, config).build()
    machine.tags.write_tags(RAM + 4096, np.full(256, 5, np.uint8))
    assert user.frame_numbers(machine.memory.regions[0].hva, HUGE // 4096) == frames
    return machine.tags.read_tags(RAM, 3 * 256)


def test_a_restore_onto_a_reused_huge_page_shows_none_of_the_old_owners_tags() -> None:
    """Scenario: linux-7.3, whose TO_GUEST into page 1 of a reused huge page would leave
    pages 0 and 2 with the old owner's tag 3: the builder cleared the whole page first,
    so they read 0 and page 1 reads the 5 written."""
    tags = _restored_on_a_used_huge_page("linux-7.3")
    assert set(tags[:256]) == {0}
    assert set(tags[256:512]) == {5}
    assert set(tags[512:]) == {0}


def test_without_the_clearing_the_old_owners_tags_show(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario: the same with the builder's clearing turned off: pages 0 and 2 read the
    old owner's 3, as the real 7.3 does: the clearing is what protects the guest."""
    monkeypatch.setattr(builder_module, "clear_stale_tags", lambda *args: None)
    tags = _restored_on_a_used_huge_page("linux-7.3")
    assert set(tags[:256]) == {3}
    assert set(tags[512:]) == {3}
