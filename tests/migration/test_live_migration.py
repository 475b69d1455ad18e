"""Pre-copy live migration with tags, between two hosts on loopback."""

import statistics
import time

import numpy as np
import pytest
from numpy.typing import NDArray

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GeneratorGuest
from tagvisor.migration import IncomingError, MigrationRefused, migrate
from tagvisor.snapshot.guestpages import memory_digest
from tagvisor.vmm import MachineBuilder, RunState
from tagvisor.vmm.builder import RAM_BASE
from tagvisor.vmm.memory import GuestMemory
from tests.migration.churner import CHECK, churner
from tests.migration.conftest import Destination, source_machine


def syncs(machine: object) -> list[tuple[int, ...]]:
    return [c.args for c in machine.ucall.calls if c.cmd.name == "SYNC"]  # type: ignore[attr-defined]


def test_migration_moves_every_page_and_tag_while_the_guest_churns(
    destination: Destination,
) -> None:
    """Scenario: a guest keeps retagging and rewriting its heap during pre-copy.

    The destination's memory and tags equal the source's at the moment it stopped
    (by digest); the guest carries on at the destination from the round it reached,
    and its old tagged pointer still matches (no fault).
    """
    source = source_machine()
    destination.start()
    report = migrate(source, destination.address, max_iterations=6, stop_pages=8)
    destination.join()
    assert destination.error is None
    dest = destination.resume_guest()
    assert source.state is RunState.PAUSED
    assert memory_digest(source) == memory_digest(dest)
    assert report.iterations >= 2
    assert report.guest_exits_during > 0, "the guest did not run during pre-copy"
    assert report.tag_share <= 1 / 32
    reached = source.vcpus[0].regs.core[19]  # type: ignore[attr-defined]
    before = len(syncs(dest))
    dest.run(max_exits=200)
    rounds = [args[0] for args in syncs(dest)[before:] if args[0] != CHECK]
    assert rounds[:3] == [reached, reached + 1, reached + 2]
    checks = [args for args in syncs(dest)[before:] if args[0] == CHECK]
    assert checks
    assert set(checks) == {(CHECK, 1)}


def test_the_source_stops_dirty_logging_once_the_guest_has_moved(
    destination: Destination,
) -> None:
    """Scenario: after a migration the paused source's slots no longer log (as after
    one that failed), so its memory can still be read and written, tags included: with
    a slot logging, Linux 6.13's COPY_TAGS TO_GUEST fails with EBUSY."""
    source = source_machine()
    destination.start()
    migrate(source, destination.address, max_iterations=2)
    destination.join()
    assert [region.logging for region in source.memory.regions] == [False]
    tags = source.tags.read_tags(RAM_BASE, 256)
    source.tags.write_tags(RAM_BASE, tags)


def test_the_downtime_is_accounted_phase_by_phase(destination: Destination) -> None:
    """Scenario: a pre-copy migration of a churning guest; the report splits its downtime
    into stop, state, pages, send, destination and commit, in that order, which add up
    to no more than the downtime, and the destination says how long its apply took."""
    source = source_machine()
    destination.start()
    report = migrate(source, destination.address, max_iterations=3)
    destination.join()
    phases = report.downtime_phases
    assert list(phases) == ["stop", "state", "pages", "send", "destination", "commit"]
    assert all(seconds >= 0 for seconds in phases.values())
    assert sum(phases.values()) <= report.downtime_seconds
    assert destination.report is not None
    assert 0 < destination.report.apply_seconds < report.downtime_seconds


def test_zero_pages_with_tags_travel_and_true_zero_pages_do_not(destination: Destination) -> None:
    """Scenario: a page of zeros tagged 0x9 by the guest, and untouched RAM.

    The tagged zero page arrives with its tags; the rest of RAM is not sent at all in
    the first pass (it is zero at the destination already)."""
    source = source_machine()
    stage2 = source.vm.stage2  # type: ignore[attr-defined]
    zero_page = 0x4000_0000 + (24 << 20)
    stage2.store_tags(zero_page, np.full(256, 9, np.uint8))
    destination.start()
    report = migrate(source, destination.address, run_guest=False, max_iterations=2)
    destination.join()
    assert destination.machine is not None
    dest_stage2 = destination.machine.vm.stage2  # type: ignore[attr-defined]
    assert dest_stage2.load_tags(zero_page, 256).tolist() == [9] * 256
    assert report.pages_sent < (32 << 20) // 4096 // 2
    assert report.uniform_tag_pages >= 1


def test_destination_refuses_before_any_page_is_sent(destination: Destination) -> None:
    """Scenario: the destination demands a guest without MTE; the source has MTE.

    The refusal names the mismatch, no PAGE was sent, and the source guest continues
    and finishes normally."""
    destination.options = {"require_mte": False}
    source = source_machine(rounds=20)
    destination.start()
    with pytest.raises(MigrationRefused, match="MTE is on at the source only"):
        migrate(source, destination.address)
    destination.join()
    assert isinstance(destination.error, IncomingError)
    assert source.memory.regions[0].logging is False
    assert source.run().exit_status == 0


def test_destination_with_another_mte_level_is_refused(destination: Destination) -> None:
    """Scenario: the source host offers MTE level 2, the destination level 3 (MTE3)."""
    destination.kvm.host_mte_level = 3
    source = source_machine(rounds=10)
    destination.start()
    with pytest.raises(MigrationRefused, match="feature level differs"):
        migrate(source, destination.address)


def test_too_big_a_guest_is_refused(destination: Destination) -> None:
    """Scenario: the destination allows 16 MiB of guest RAM; the guest has 32."""
    destination.options = {"max_memory": 16 << 20}
    source = source_machine(rounds=10)
    destination.start()
    with pytest.raises(MigrationRefused, match="allows 16777216"):
        migrate(source, destination.address)


def test_compressed_stream_moves_the_same_memory(destination: Destination) -> None:
    """Scenario: the same migration with zlib compression on, over a guest whose heap
    is random (incompressible) but which also holds 2 MiB of text: the stream is
    smaller than the pages it carries, and the memory arrives the same."""
    source = source_machine()
    text = b"memory tagging keeps tags with pages. " * ((2 << 20) // 38 + 1)
    source.vm.stage2.write(0x4000_0000 + (24 << 20), text[: 2 << 20])  # type: ignore[attr-defined]
    destination.start()
    report = migrate(source, destination.address, run_guest=False, compress=True)
    destination.join()
    assert destination.machine is not None
    assert memory_digest(source) == memory_digest(destination.machine)
    assert report.compressed
    assert report.wire_bytes < report.data_bytes


def test_the_guest_program_is_not_migrated_only_its_state() -> None:
    """Scenario: the Python guest on the destination is a fresh program object reading
    its round from X19, like real guest code reads its PC (a reminder of the contract)."""
    assert isinstance(GeneratorGuest(churner(1)), GeneratorGuest)


def test_untouched_ram_is_not_read_at_the_source_nor_given_memory_at_the_destination(
    destination: Destination,
) -> None:
    """Scenario: a 32 MiB guest that touched only its 4 MiB heap and a few pages.

    The first pass looks only at pages with memory behind them (pagemap): the rest of
    the source's RAM is not even faulted in to be read, and the destination gives
    memory only to pages that carry something. Memory and tags still arrive whole."""
    source = source_machine()
    npages = source.memory.size // 4096
    touched = source.memory.populated(RAM_BASE, npages)
    assert 0 < touched.sum() < npages // 4
    destination.start()
    report = migrate(source, destination.address, run_guest=False)
    destination.join()
    assert destination.machine is not None
    dest = destination.machine
    assert (source.memory.populated(RAM_BASE, npages) == touched).all()
    assert report.dirty_per_iteration[0] == touched.sum()
    received = dest.memory.populated(RAM_BASE, npages)
    assert not (received & ~touched).any()
    assert memory_digest(source) == memory_digest(dest)


@pytest.mark.parametrize("auto_converge", [True, False])
def test_a_guest_that_outruns_precopy_is_throttled_until_the_passes_shrink(
    destination: Destination, auto_converge: bool
) -> None:
    """Scenario: a slow link (every section waits 20 ms) and a guest that rewrites its
    whole heap meanwhile, so pre-copy never catches up by itself.

    With auto-converge the guest is throttled (it keeps running, more slowly), the
    passes shrink and the pause has little left to send; without it, every pass finds
    the whole heap dirty again. Either way memory and tags arrive whole."""
    source = source_machine()
    destination.start()
    report = migrate(
        source,
        destination.address,
        max_iterations=6,
        stop_pages=8,
        auto_converge=auto_converge,
        progress=lambda *_: time.sleep(0.02),
    )
    destination.join()
    assert destination.machine is not None
    assert memory_digest(source) == memory_digest(destination.machine)
    assert report.guest_exits_during > 0
    passes = report.dirty_per_iteration
    if auto_converge:
        assert report.guest_share < 0.5
        assert passes[-1] < passes[1] / 2
    else:
        # Pre-copy never catches up by itself: every pass is used, and a typical one
        # finds most of the heap dirty again (one pass may find less, when the guest
        # thread got little time meanwhile on a busy machine).
        assert report.guest_share == 1.0
        assert report.iterations == 6
        assert statistics.median(passes[1:-1]) > passes[1] / 2


def test_registers_wider_than_64_bits_travel_in_a_vreg_section(
    destination: Destination, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: a VCPU whose state has a 128-bit register (V0, which the model now
    lists as real KVM does) holding a value wider than 64 bits.

    The destination receives it whole, next to the 64-bit ones, instead of the source
    leaving it out of the stream.
    """
    import tagvisor.snapshot.registry as registry
    from tagvisor.kvm.uapi import KVM_REG_ARM64, KVM_REG_ARM_CORE, KVM_REG_SIZE_U128
    from tagvisor.snapshot.state import VcpuState, apply_vcpu, capture_vcpu

    v0 = KVM_REG_ARM64 | KVM_REG_SIZE_U128 | KVM_REG_ARM_CORE | 0x54
    wide = (1 << 127) | 0xBEEF
    applied: list[VcpuState] = []

    def capture_with_v0(index: int, vcpu: object, preread: object = None) -> VcpuState:
        state = capture_vcpu(index, vcpu, preread)  # type: ignore[arg-type]
        return VcpuState(state.vcpu_id, tuple(sorted({**dict(state.registers), v0: wide}.items())))

    def record(state: VcpuState, vcpu: object, holds: dict[int, int] | None = None) -> list[int]:
        applied.append(state)
        return apply_vcpu(state, vcpu, holds)  # type: ignore[arg-type]

    # Both sides save and apply VCPU state through the registry's VCPU kind.
    monkeypatch.setattr(registry, "capture_vcpu", capture_with_v0)
    monkeypatch.setattr(registry, "apply_vcpu", record)
    destination.start()
    migrate(source_machine(), destination.address, run_guest=False, max_iterations=1)
    destination.join()
    assert destination.machine is not None
    assert dict(applied[0].registers)[v0] == wide


def test_a_paused_guest_is_sent_from_its_memory_in_place_where_its_frames_break(
    destination: Destination, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: a paused guest whose only data, 512 tagged pages in a row, sits in
    host frames that are not consecutive (its second page was written first).

    The source sends the run from guest memory in place, a section per span of
    consecutive frames, and copies no page into a staging buffer; memory and tags
    arrive whole."""
    kvm = ModelKvm(160 << 20)
    source = MachineBuilder(kvm).memory(128 << 20).python_guest(churner(1)).build()
    base = RAM_BASE + (96 << 20)  # far enough from anything else to be a window alone
    order = [1, 0, *range(2, 512)]
    for page in order:
        source.memory.write(base + page * PAGE_SIZE, bytes([page % 251 + 1]) * PAGE_SIZE)
    source.tags.write_tags(base, np.arange(512 * 256, dtype=np.uint8) % 15 + 1)
    spans = source.memory.view_spans(base, 512)
    assert spans == [(0, 1), (1, 1), (2, 510)]
    copied: list[int] = []
    read_pages = GuestMemory.read_pages

    def spy(self: GuestMemory, gpa: int, pages: NDArray[np.intp], out: NDArray[np.uint8]) -> None:
        copied.append(gpa)
        read_pages(self, gpa, pages, out)

    monkeypatch.setattr(GuestMemory, "read_pages", spy)
    destination.start()
    migrate(source, destination.address, run_guest=False)
    destination.join()
    assert destination.machine is not None, destination.error
    assert not copied, [hex(g) for g in copied]
    assert memory_digest(source) == memory_digest(destination.machine)
