"""Question 4's invariants, on the quick lab's figures."""

from typing import Any

import numpy as np

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.kvm.model.workloads import churn, fill_tagged
from tagvisor.lab import Outcome
from tagvisor.lab.compare import truth
from tagvisor.lab.designs import COPY_TAGS, DESIGNS, DIRTY_LOG_TAGS, NAIVE
from tagvisor.lab.q4_tag_access import CASES, build
from tagvisor.lab.workloads import chain
from tagvisor.vmm.builder import RAM_BASE


def _migration(outcomes: dict[str, Outcome]) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = outcomes["tag-access"].figures["migration"]
    return figures


def test_every_design_delivers_every_page_and_tag(outcomes: dict[str, Outcome]) -> None:
    """Scenario: each design migrates the guest idle and churning over loopback TCP;
    the destination's pages and tags equal the source's, read with COPY_TAGS."""
    for case in CASES:
        for design in DESIGNS:
            assert _migration(outcomes)[case][design]["pages_wrong_at_destination"] == 0


def test_only_copy_tags_and_the_dirty_log_variant_copy_tags_in_the_kernel(
    outcomes: dict[str, Outcome],
) -> None:
    """Scenario: the PROT_MTE ways and two mappings read tags with LDG in the VMM;
    COPY_TAGS and the dirty-log variant have the kernel copy them into a buffer."""
    idle = _migration(outcomes)["idle"]
    for design in DESIGNS:
        kernel = idle[design]["kernel_tag_bytes"] > 0
        assert kernel == (design in (COPY_TAGS, DIRTY_LOG_TAGS)), design
        assert (idle[design]["tag_instructions"] > 0) == (not kernel), design


def test_the_dirty_log_variant_returns_slot_size_over_32(outcomes: dict[str, Outcome]) -> None:
    """Scenario: the proposal's return buffer is the thread's slot size / 32."""
    figures = outcomes["tag-access"].figures
    overhead = figures["migration"]["idle"][DIRTY_LOG_TAGS]["overhead_bytes"]
    assert overhead == figures["guest_ram"] // 32


def test_the_naive_way_faults_and_the_dirty_log_cannot_write_tags(
    outcomes: dict[str, Outcome],
) -> None:
    """Scenario: the DMA workload: the naive PROT_MTE VMM faults on every copy; the
    dirty-log design fails every copy (no way to write tags); the others fail none."""
    dma = outcomes["tag-access"].figures["dma"]
    assert dma[NAIVE]["vmm_tag_faults"] == dma[NAIVE]["copies"]
    assert dma[DIRTY_LOG_TAGS]["failed_copies"] == dma[DIRTY_LOG_TAGS]["copies"]
    for design in DESIGNS:
        if design != DIRTY_LOG_TAGS:
            assert dma[design]["failed_copies"] == 0, design


def test_dirty_log_tags_equal_copy_tags_for_every_dirty_page() -> None:
    """Scenario: logging on, the guest churns; for every page the proposal reports
    dirty, the tags it returned equal what COPY_TAGS reads for that page."""
    ram, tagged = 32 << 20, 8 << 20
    program = chain(fill_tagged(RAM_BASE, tagged), churn(RAM_BASE, tagged, rounds=0))
    machine, kvm, installed = build(DIRTY_LOG_TAGS, ram, program)
    machine.run(max_exits=1)
    machine.memory.start_dirty_log()
    region = machine.memory.regions[0]
    machine.memory.take_dirty(region)  # the first harvest: every page
    machine.run(max_exits=40)
    dirty = np.flatnonzero(machine.memory.take_dirty(region))
    assert dirty.size
    reference = truth(machine, kvm)
    for page in dirty[:: max(1, dirty.size // 200)]:
        gpa = RAM_BASE + int(page) * PAGE_SIZE
        got = installed.access.read_tags(gpa, 256)
        assert np.array_equal(got, reference.read_tags(gpa, 256)), page
