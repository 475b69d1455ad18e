"""Python guest workloads under KVM_RUN: bulk memory traffic through stage 2."""

import numpy as np

from tagvisor.kvm.api import Vcpu
from tagvisor.kvm.model.guest import GeneratorGuest, GuestProgram
from tagvisor.kvm.model.memslots import NOT_MAPPED
from tagvisor.kvm.model.workloads import PROGRESS_MMIO, churn, fill_tagged, touch_pages
from tagvisor.kvm.uapi import KVM_MEM_LOG_DIRTY_PAGES, ExitReason
from tests.kvm.conftest import RAM_BASE, RAM_SIZE, Machine, MachineFactory


def run_to_completion(machine: Machine, program: GuestProgram, limit: int = 10_000) -> list[int]:
    """KVM_RUN until the guest powers off; return the progress values it reported."""
    vcpu: Vcpu = machine.vm.create_vcpu(len(machine.vm.vcpus))
    vcpu.arm_vcpu_init(machine.vm.arm_preferred_target())
    machine.vm.vcpus[len(machine.vm.vcpus) - 1].attach(GeneratorGuest(program))
    reported: list[int] = []
    for _ in range(limit):
        exit_ = vcpu.run()
        if exit_.reason == ExitReason.SYSTEM_EVENT:
            return reported
        assert exit_.reason == ExitReason.MMIO
        assert exit_.mmio is not None
        assert exit_.mmio.phys_addr == PROGRESS_MMIO
        reported.append(int.from_bytes(exit_.mmio.data, "little"))
    raise AssertionError("the guest did not finish")


def test_touch_pages_maps_every_page_and_initialises_tags(make_machine: MachineFactory) -> None:
    """Scenario: the guest touches all 256 pages of RAM; each ends mapped and tagged."""
    machine = make_machine()
    assert run_to_completion(machine, touch_pages(RAM_BASE, RAM_SIZE // 4096)) == [256]
    memslot = machine.vm.memslots.slots[0]
    assert (memslot.s2_pfn != NOT_MAPPED).all()
    assert machine.kvm.frames.mte_tagged[memslot.s2_pfn].all()


def test_tags_a_guest_stored_are_what_copy_tags_reads(make_machine: MachineFactory) -> None:
    """Scenario: fill_tagged writes random data and tags; the VMM reads the tags back
    with COPY_TAGS FROM_GUEST and sees exactly the guest's view."""
    machine = make_machine()
    run_to_completion(machine, fill_tagged(RAM_BASE, RAM_SIZE, seed=3))
    buffer = machine.buffer(RAM_SIZE // 16)
    assert machine.copy(RAM_BASE, RAM_SIZE, buffer, to_guest=False) == RAM_SIZE
    seen = np.frombuffer(machine.kvm.user_memory.read(buffer, RAM_SIZE // 16), np.uint8)
    guest_view = machine.vm.stage2.load_tags(RAM_BASE, RAM_SIZE // 16)
    assert np.array_equal(seen, guest_view)
    assert seen.min() >= 1


def test_churn_dirties_only_the_spans_it_retags(make_machine: MachineFactory) -> None:
    """Scenario: dirty logging on; 5 rounds of churn over 64 KiB spans.

    Exactly the pages of the spans it chose are dirty (data and tag stores both
    need write permission); the rest of RAM stays clean.
    """
    machine = make_machine(flags=KVM_MEM_LOG_DIRTY_PAGES)
    machine.vm.get_dirty_log(0)
    assert run_to_completion(machine, churn(RAM_BASE, RAM_SIZE, rounds=5, seed=7)) == [
        1,
        2,
        3,
        4,
        5,
    ]
    bits = np.unpackbits(np.frombuffer(machine.vm.get_dirty_log(0), np.uint8), bitorder="little")
    dirty = np.flatnonzero(bits[: RAM_SIZE // 4096])
    assert 16 <= dirty.size <= 5 * 16
    assert dirty.size % 16 == 0  # whole 64 KiB spans
