"""The heap guest's tagged allocator and the faults it catches, under QEMU, against the
model: IRG tags predicted from the runtime's seed, and the use-after-free, overflow and
underflow outcomes (ESR/FAR or TFSR_EL1) predicted by check_access in each TCF mode.
"""

from __future__ import annotations

import numpy as np
import pytest

from tagvisor.arch import FlatTaggedMemory, TagCheckMode
from tagvisor.arch.pointer import allocation_tag_from_address, strip_top_byte
from tagvisor.arch.sysregs import RgsrEl1
from tagvisor.arch.taggen import irg
from tests.oracle_system.model import Outcome, guest_el1_state, predict_access
from tests.support import guest_reports as rid
from tests.support.guests import DEFAULT_SEED
from tests.support.transcript import Transcript

pytestmark = pytest.mark.oracle

CHUNK = 64
HeapRun = tuple[TagCheckMode, Transcript]


def chunks(transcript: Transcript) -> tuple[int, int, int]:
    allocations = transcript.reports(rid.HEAP_ALLOC)
    assert [a[0] for a in allocations] == [0, 1, 2]
    a, b, c = (pointer for _, pointer, _, _ in allocations)
    return a, b, c


def test_heap_guest_catches_what_its_mode_promises(heap_run: HeapRun) -> None:
    """Scenario: the heap guest in each TCF mode (none, sync, async, asymmetric) makes
    its bad accesses and checks them itself: sync faults for every bad access in sync
    mode, TFSR_EL1.TF0 in async mode, loads sync and the store async in asymmetric
    mode, nothing with TCF none. It makes no UCALL_ASSERT and exits 0."""
    mode, transcript = heap_run
    assert transcript.report(rid.BOOT)[1] == mode
    assert transcript.assertions == []
    assert transcript.done == 0
    sync, async_hits, tcf = transcript.report(rid.HEAP_SUMMARY)
    expected = {
        TagCheckMode.NONE: (0, 0),
        TagCheckMode.SYNC: (3, 0),
        TagCheckMode.ASYNC: (0, 3),
        TagCheckMode.ASYMM: (2, 1),
    }[mode]
    assert (sync, async_hits, tcf) == (*expected, mode)


def test_allocation_tags_are_irg_from_the_boot_seed_excluding_neighbours(
    heap_run: HeapRun,
) -> None:
    """Scenario: three adjacent 64-byte allocations, then a free of the first. The
    runtime seeded RGSR_EL1 with its default 0xACE1 and no IRG ran before the heap's.
    Each exclude mask is tag 0 plus the chunk's current tag and its neighbours' tags
    (Scudo-style), and the model's IRG from that seed gives every allocation's tag and
    the free's retag exactly."""
    _mode, transcript = heap_run
    assert transcript.report(rid.BOOT)[4] == DEFAULT_SEED
    state = guest_el1_state(transcript)
    state.rgsr = RgsrEl1(tag=0, seed=DEFAULT_SEED)
    allocations = transcript.reports(rid.HEAP_ALLOC)
    a, b, c = chunks(transcript)
    tag = allocation_tag_from_address
    # a: fresh memory on all sides (the class region starts at a); b: a on its left;
    # c: b on its left. The right neighbours are untouched (tag 0).
    assert [excl for *_, excl in allocations] == [0x1, 0x1 | 1 << tag(a), 0x1 | 1 << tag(b)]
    for _, pointer, size, exclude in allocations:
        assert size == CHUNK
        assert irg(state, strip_top_byte(pointer), exclude) == pointer
    index, freed, retag, exclude = transcript.report(rid.HEAP_FREE)
    assert (index, freed) == (0, a)
    assert exclude == 0x1 | 1 << tag(a) | 1 << tag(b)
    assert tag(irg(state, strip_top_byte(a), exclude)) == retag
    assert 0 not in (tag(a), tag(b), tag(c), retag)
    assert tag(b) not in (tag(a), tag(c), retag)


def test_bad_accesses_fault_as_the_model_predicts_in_each_mode(heap_run: HeapRun) -> None:
    """Scenario: a freed (retagged) chunk a between live chunks b and c. An 8-byte load
    through the stale pointer a, an 8-byte store at b + 60 (half in b, half in c), a
    1-byte load at b - 1. For each, QEMU's ESR and FAR of a synchronous fault (the
    store's FAR is c's first granule with b's tag) or TFSR_EL1 of an asynchronous one
    equal what the model's check_access gives in that mode."""
    mode, transcript = heap_run
    a, b, c = chunks(transcript)
    retag = transcript.report(rid.HEAP_FREE)[2]
    base = strip_top_byte(a)
    memory = FlatTaggedMemory(base, 3 * CHUNK)
    for start, tag in (
        (a, retag),
        (b, allocation_tag_from_address(b)),
        (c, allocation_tag_from_address(c)),
    ):
        memory.store_tags(strip_top_byte(start), np.full(CHUNK // 16, tag, dtype=np.uint8))
    state = guest_el1_state(transcript, mode)
    accesses = [
        (rid.HEAP_UAF, a, 8, False),
        (rid.HEAP_OVERFLOW, b + CHUNK - 4, 8, True),
        (rid.HEAP_UNDERFLOW, b - 1, 1, False),
    ]
    for report_id, pointer, size, write in accesses:
        reported_pointer, esr, far, tfsr = transcript.report(report_id)
        assert reported_pointer == pointer
        predicted = predict_access(state, memory, pointer, size, write=write)
        assert Outcome(esr, far, tfsr) == predicted, f"report {report_id:#x} in {mode.name}"


def test_heap_refuses_a_double_free(heap_run: HeapRun) -> None:
    """Scenario: freeing the first chunk a second time. The allocator compares the
    pointer's tag with the chunk's (LDG): the free retagged it, so the second free is
    refused whatever the tag check mode."""
    _mode, transcript = heap_run
    a, _, _ = chunks(transcript)
    assert transcript.report(rid.HEAP_DOUBLE_FREE) == (a, 1)
