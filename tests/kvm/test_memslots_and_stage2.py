"""Memslots of an MTE VM, first-touch tag clearing and dirty logging (arch/arm64/kvm/mmu.c)."""

import errno
from collections.abc import Callable

import numpy as np
import pytest

from tagvisor.cpu.bus import MmioExit
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.uapi import KVM_MEM_LOG_DIRTY_PAGES, Cap
from tests.kvm.conftest import RAM_BASE, MachineFactory, region

MiB = 1 << 20

BACKINGS: dict[str, Callable[[ModelKvm], int]] = {
    "anonymous private": lambda k: k.user_memory.map_anonymous(2 * MiB),
    "anonymous shared": lambda k: k.user_memory.map_anonymous(2 * MiB, shared=True),
    "memfd": lambda k: k.user_memory.map_memfd(2 * MiB),
    "regular file": lambda k: k.user_memory.map_file(2 * MiB),
    "hugetlbfs": lambda k: k.user_memory.map_hugetlb(2 * MiB),
}

# What KVM_SET_USER_MEMORY_REGION does for an MTE VM (0 = accepted, else errno).
EXPECTED = {
    # 5.14-6.1: only VM_SHARED is refused at creation.
    "linux-6.1": {
        "anonymous private": 0,
        "anonymous shared": errno.EINVAL,
        "memfd": errno.EINVAL,
        "regular file": errno.EINVAL,
        "hugetlbfs": errno.EINVAL,
    },
    # 6.2: VM_MTE_ALLOWED decides; hugetlbfs is not allowed until 6.13.
    "linux-6.2": {
        "anonymous private": 0,
        "anonymous shared": 0,
        "memfd": 0,
        "regular file": errno.EINVAL,
        "hugetlbfs": errno.EINVAL,
    },
    "linux-6.13": {
        "anonymous private": 0,
        "anonymous shared": 0,
        "memfd": 0,
        "regular file": errno.EINVAL,
        "hugetlbfs": 0,
    },
}


@pytest.mark.parametrize("profile", sorted(EXPECTED))
@pytest.mark.parametrize("backing", sorted(BACKINGS))
def test_memslot_backing_rules_per_kernel(profile: str, backing: str) -> None:
    """Scenario: an MTE VM gets a 2 MiB memslot over each kind of VMM memory.

    kvm_arch_prepare_memory_region: 5.14-6.1 refuse VM_SHARED; 6.2+ refuse what is
    not VM_MTE_ALLOWED; 6.13 makes hugetlbfs VM_MTE_ALLOWED.
    """
    kvm = ModelKvm(host_memory=64 * MiB, profile=profile)
    vm = kvm.create_vm()
    vm.enable_cap(Cap.ARM_MTE)
    uaddr = BACKINGS[backing](kvm)
    expected = EXPECTED[profile][backing]
    if expected:
        with pytest.raises(KvmError) as error:
            vm.set_user_memory_region(region(0, RAM_BASE, 2 * MiB, uaddr))
        assert error.value.errno == expected
    else:
        vm.set_user_memory_region(region(0, RAM_BASE, 2 * MiB, uaddr))
        assert not vm.stage2.load_tags(RAM_BASE, 4).any()


def test_slot_made_before_mte_fails_later_at_fault_time() -> None:
    """Scenario (6.2+): a page-cache file slot created before the cap is enabled is not
    checked then; the guest's first touch fails KVM_RUN with EFAULT (user_mem_abort)."""
    kvm = ModelKvm(host_memory=64 * MiB)
    vm = kvm.create_vm()
    uaddr = kvm.user_memory.map_file(2 * MiB)
    vm.set_user_memory_region(region(0, RAM_BASE, 2 * MiB, uaddr))
    vm.enable_cap(Cap.ARM_MTE)
    with pytest.raises(KvmError) as error:
        vm.stage2.read(RAM_BASE, 8)
    assert (error.value.errno, error.value.ioctl) == (errno.EFAULT, "KVM_RUN")


def test_first_touch_clears_stale_tags_of_a_reused_frame(make_machine: MachineFactory) -> None:
    """Scenario: the VMM's previous PROT_MTE buffer left tags in frames it then freed;
    the guest's first touch of RAM that lands on those frames reads zero tags
    (sanitise_mte_tags clears pages not yet PG_mte_tagged)."""
    kvm = ModelKvm(host_memory=8 * MiB)
    user = kvm.user_memory
    old = user.map_anonymous(MiB, mte=True)
    kvm.process.store_tags(old, np.full(MiB // 16, 0xA, np.uint8))
    user.unmap(old, MiB)
    vm = kvm.create_vm()
    vm.enable_cap(Cap.ARM_MTE)
    ram = user.map_anonymous(MiB)
    vm.set_user_memory_region(region(0, RAM_BASE, MiB, ram))
    pfns = vm.stage2.map_pages(RAM_BASE, MiB, write=False)
    assert kvm.frames.tags.get(int(pfns[0]) * 256, 256).tolist() == [0] * 256
    assert not vm.stage2.load_tags(RAM_BASE, MiB // 16).any()
    assert kvm.frames.mte_tagged[pfns].all()


def test_tags_planted_before_first_touch_survive_it(make_machine: MachineFactory) -> None:
    """Scenario: the VMM writes tags with COPY_TAGS TO_GUEST (a restore) before the
    guest runs; the page is marked tagged, so the first touch keeps them."""
    machine = make_machine()
    buffer = machine.buffer(4096)
    machine.kvm.user_memory.write(buffer, bytes([0x7]) * 256)
    assert machine.copy(RAM_BASE, 4096, buffer, to_guest=True) == 4096
    assert machine.vm.stage2.load_tags(RAM_BASE, 256).tolist() == [7] * 256


def test_without_mte_first_touch_leaves_frames_untagged(make_machine: MachineFactory) -> None:
    """Scenario: a VM without the cap: pages are mapped but never PG_mte_tagged."""
    machine = make_machine(mte=False)
    pfns = machine.vm.stage2.map_pages(RAM_BASE, 8192, write=True)
    assert not machine.kvm.frames.mte_tagged[pfns].any()


def test_permission_faults_never_touch_tags(make_machine: MachineFactory) -> None:
    """Scenario: tagged memory, then dirty logging write-protects it; the guest's next
    store takes a permission fault, which must not clear the tags (user_mem_abort
    sanitises only on translation faults)."""
    machine = make_machine()
    stage2 = machine.vm.stage2
    stage2.store_tags(RAM_BASE, np.full(256, 5, np.uint8))
    machine.vm.set_user_memory_region(
        region(0, RAM_BASE, 1 << 20, machine.ram, KVM_MEM_LOG_DIRTY_PAGES)
    )
    before = stage2.permission_faults
    stage2.write(RAM_BASE + 8, b"data")
    assert stage2.permission_faults == before + 1
    assert stage2.load_tags(RAM_BASE, 256).tolist() == [5] * 256


def test_tag_only_store_dirties_the_page(make_machine: MachineFactory) -> None:
    """Scenario: dirty logging on; the guest stores only a tag (STG) to page 3.

    Tags share the page's stage-2 permission, so the tag store write-faults and page 3
    is dirty. This is the rule a QEMU reviewer doubted: the conformance suite confirms
    it on the real kernel (docs/kvm-abi.md).
    """
    machine = make_machine(flags=KVM_MEM_LOG_DIRTY_PAGES)
    vm = machine.vm
    vm.stage2.map_pages(RAM_BASE, 1 << 20, write=False)
    vm.get_dirty_log(0)
    vm.stage2.store_tags(RAM_BASE + 3 * 4096, np.array([9], np.uint8))
    bitmap = np.unpackbits(np.frombuffer(vm.get_dirty_log(0), np.uint8), bitorder="little")
    assert np.flatnonzero(bitmap).tolist() == [3]


def test_get_dirty_log_clears_and_write_protects(make_machine: MachineFactory) -> None:
    """Scenario: two writes, two reads of the log: the second read is empty, and a new
    write after it shows up again (kvm_get_dirty_log_protect)."""
    machine = make_machine(flags=KVM_MEM_LOG_DIRTY_PAGES)
    vm = machine.vm
    vm.stage2.write(RAM_BASE + 5 * 4096, b"x")
    vm.stage2.write(RAM_BASE + 70 * 4096, b"y")

    def dirty() -> list[int]:
        bits = np.unpackbits(np.frombuffer(vm.get_dirty_log(0), np.uint8), bitorder="little")
        return np.flatnonzero(bits).tolist()

    assert dirty() == [5, 70]
    assert dirty() == []
    vm.stage2.write(RAM_BASE + 5 * 4096, b"z")
    assert dirty() == [5]


def test_dirty_log_errors(make_machine: MachineFactory) -> None:
    """Scenario: GET_DIRTY_LOG of a slot without logging (ENOENT) or out of range
    (EINVAL); CLEAR_DIRTY_LOG with first_page not a multiple of 64 (EINVAL)."""
    machine = make_machine()
    for slot, expected in ((0, errno.ENOENT), (1000, errno.EINVAL)):
        with pytest.raises(KvmError) as error:
            machine.vm.get_dirty_log(slot)
        assert error.value.errno == expected
    with pytest.raises(KvmError) as error:
        machine.vm.clear_dirty_log(0, 3, 64, bytes(8))
    assert error.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"flags": 4}, errno.EINVAL),
        ({"slot": 512}, errno.EINVAL),
        ({"memory_size": 100}, errno.EINVAL),
        ({"guest_phys_addr": 0x123}, errno.EINVAL),
        ({"userspace_addr": 0x0A00_7F00_0000_0000}, errno.EINVAL),
        ({"guest_phys_addr": 1 << 41}, errno.EFAULT),
        ({"slot": 1}, errno.EEXIST),
        ({"slot": 7, "memory_size": 0}, errno.EINVAL),
    ],
    ids=["flags", "slot", "size", "gpa", "tagged uaddr", "beyond IPA", "overlap", "delete none"],
)
def test_memory_region_errors(
    make_machine: MachineFactory, change: dict[str, int], expected: int
) -> None:
    """Scenario: SET_USER_MEMORY_REGION with one field wrong (kvm_main.c order)."""
    machine = make_machine()
    fields = {
        "slot": 0,
        "guest_phys_addr": RAM_BASE,
        "memory_size": 1 << 20,
        "userspace_addr": machine.ram,
        "flags": 0,
    }
    fields.update(change)
    with pytest.raises(KvmError) as error:
        machine.vm.set_user_memory_region(
            region(
                fields["slot"],
                fields["guest_phys_addr"],
                fields["memory_size"],
                fields["userspace_addr"],
                fields["flags"],
            )
        )
    assert error.value.errno == expected


def test_access_outside_memslots_is_mmio(make_machine: MachineFactory) -> None:
    """Scenario: the guest reads an IPA with no memslot: an MMIO exit, not an error."""
    machine = make_machine()
    with pytest.raises(MmioExit) as exit_info:
        machine.vm.stage2.read(0x0900_0000, 4)
    assert exit_info.value.gpa == 0x0900_0000
