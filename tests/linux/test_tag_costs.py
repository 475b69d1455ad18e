"""Timing the kernel's tag copies again on a moved guest's memory (testbed.tag_costs)."""

from typing import Any

import numpy as np
import pytest

from tagvisor.kvm.model import ModelKvm
from tagvisor.snapshot.guestpages import memory_digest
from tagvisor.testbed.tag_costs import CALLS_TIMED, tag_copy_costs
from tagvisor.vmm import MachineBuilder
from tagvisor.vmm.builder import RAM_BASE
from tests.vmm.guests import Exits


def idle(ctx: object) -> Exits:
    yield from ()


def test_tag_copies_cover_the_populated_pages_and_change_nothing() -> None:
    """Scenario: a machine with data on 12 pages, of which 5 carry tags. The rerun
    reads the tags of every page with memory behind it, writes back those of the 5
    tagged pages, and the memory's digest of data and tags is unchanged."""
    machine = MachineBuilder(ModelKvm(64 << 20)).memory(8 << 20).python_guest(idle).build()
    base = RAM_BASE + (1 << 20)
    machine.memory.write(base, bytes(range(1, 256)) * (12 * 4096 // 255 + 1))
    machine.tags.write_tags(base + 3 * 4096, np.full(5 * 256, 6, np.uint8))
    before = memory_digest(machine)
    populated = int(machine.memory.populated(RAM_BASE, (8 << 20) // 4096).sum())
    costs = tag_copy_costs(machine)
    assert costs["from_guest_pages"] == populated
    assert costs["to_guest_pages"] == 5
    assert costs["from_guest_seconds"] >= 0
    assert costs["to_guest_seconds"] >= 0
    assert memory_digest(machine) == before


def test_the_cost_of_a_call_is_timed_apart_from_the_cost_of_a_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scenario: a machine with data on every page. Besides the bulk copies, 256
    one-page calls spread over RAM and one call over 256 pages are timed; the figures
    (microseconds a call costs beyond its pages, and a page) are reported, and a
    machine with too few pages with memory gets zeros rather than a guess."""
    machine = MachineBuilder(ModelKvm(64 << 20)).memory(8 << 20).python_guest(idle).build()
    machine.memory.write(RAM_BASE, b"\x07" * (8 << 20))
    sizes: list[int] = []
    read_tags = machine.tags.read_tags

    def counted(gpa: int, count: int, **kwargs: Any) -> np.ndarray:
        sizes.append(count // 256)
        return read_tags(gpa, count, **kwargs)

    monkeypatch.setattr(machine.tags, "read_tags", counted)
    costs = tag_copy_costs(machine)
    timed = sizes[-CALLS_TIMED - 1 :]
    assert timed == [1] * CALLS_TIMED + [CALLS_TIMED]
    assert costs["from_guest_page_us"] > 0
    assert isinstance(costs["from_guest_call_us"], float)
    few = MachineBuilder(ModelKvm(64 << 20)).memory(8 << 20).python_guest(idle).build()
    few.memory.write(RAM_BASE + (1 << 20), b"\x07" * 4096 * 12)
    assert tag_copy_costs(few)["from_guest_call_us"] == 0.0
