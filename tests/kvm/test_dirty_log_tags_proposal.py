"""The modelled proposal of a dirty log that also returns the dirty pages' tags."""

import errno

import numpy as np
import pytest

from tagvisor.arch.constants import PACKED_TAGS_PER_PAGE, PAGE_SIZE
from tagvisor.arch.tagformat import unpack_tags
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import ModelKvm, ModelVm
from tagvisor.kvm.model.dirtytags import DIRTY_LOG_TAGS_ALL, PROPOSAL_DIRTY_LOG_TAGS
from tagvisor.kvm.uapi import KVM_MEM_LOG_DIRTY_PAGES, Cap, kvm_userspace_memory_region

GPA = 0x4000_0000
SIZE = 1 << 20


def logging_vm(proposals: frozenset[str]) -> tuple[ModelKvm, ModelVm, int]:
    kvm = ModelKvm(32 << 20, proposals=proposals)
    vm = kvm.create_vm()
    vm.enable_cap(Cap.ARM_MTE)
    ram = kvm.user_memory.map_anonymous(SIZE)
    for flags in (0, KVM_MEM_LOG_DIRTY_PAGES):
        vm.set_user_memory_region(
            kvm_userspace_memory_region(
                slot=0, flags=flags, guest_phys_addr=GPA, memory_size=SIZE, userspace_addr=ram
            )
        )
    return kvm, vm, kvm.user_memory.map_anonymous(SIZE // 32)


def test_the_call_returns_the_tags_of_exactly_the_dirty_pages() -> None:
    """Scenario: the guest retags page 3 while logging; the call reports page 3 and puts
    its 256 tags, packed, at buffer + 3 * 128; page 5's entry stays untouched."""
    kvm, vm, buffer = logging_vm(frozenset({PROPOSAL_DIRTY_LOG_TAGS}))
    tags = (np.arange(256) % 15 + 1).astype(np.uint8)
    vm.stage2.store_tags(GPA + 3 * PAGE_SIZE, tags)
    bitmap = vm.get_dirty_log_tags(0, buffer)
    assert np.flatnonzero(np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little"))[
        :1
    ].tolist() == [3]
    packed = np.frombuffer(kvm.user_memory.read(buffer, SIZE // 32), np.uint8)
    got = np.empty(256, np.uint8)
    unpack_tags(packed[3 * PACKED_TAGS_PER_PAGE : 4 * PACKED_TAGS_PER_PAGE].copy(), got)
    assert got.tolist() == tags.tolist()
    assert not packed[5 * PACKED_TAGS_PER_PAGE : 6 * PACKED_TAGS_PER_PAGE].any()
    assert not vm.get_dirty_log_tags(0, buffer).strip(b"\0")  # harvested: clean now


def test_the_all_flag_reports_every_page() -> None:
    """Scenario: the first harvest with DIRTY_LOG_TAGS_ALL reports all 256 pages."""
    _, vm, buffer = logging_vm(frozenset({PROPOSAL_DIRTY_LOG_TAGS}))
    bitmap = vm.get_dirty_log_tags(0, buffer, DIRTY_LOG_TAGS_ALL)
    assert np.unpackbits(np.frombuffer(bitmap, np.uint8)).sum() == SIZE // PAGE_SIZE


def test_the_call_is_off_unless_the_host_enables_the_proposal() -> None:
    """Scenario: a host modelling plain Linux is asked for the call: EINVAL, named."""
    _, vm, buffer = logging_vm(frozenset())
    with pytest.raises(KvmError, match="proposal") as caught:
        vm.get_dirty_log_tags(0, buffer)
    assert caught.value.errno == errno.EINVAL


def test_a_buffer_smaller_than_slot_size_over_32_is_efault() -> None:
    """Scenario: the VMM passes a 4 KiB buffer for a 1 MiB slot (32 KiB needed)."""
    kvm, vm, _ = logging_vm(frozenset({PROPOSAL_DIRTY_LOG_TAGS}))
    small = kvm.user_memory.map_anonymous(PAGE_SIZE)
    with pytest.raises(KvmError) as caught:
        vm.get_dirty_log_tags(0, small)
    assert caught.value.errno == errno.EFAULT
