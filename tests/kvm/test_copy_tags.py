"""KVM_ARM_MTE_COPY_TAGS (arch/arm64/kvm/guest.c kvm_vm_ioctl_mte_copy_tags)."""

import errno

import numpy as np
import pytest

from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model.memslots import NOT_MAPPED
from tagvisor.kvm.uapi import KVM_MEM_LOG_DIRTY_PAGES, kvm_arm_copy_mte_tags
from tests.kvm.conftest import RAM_BASE, RAM_SIZE, MachineFactory


def raw_copy(machine_vm: object, **fields: int) -> int:
    args = kvm_arm_copy_mte_tags(
        guest_ipa=fields.get("guest_ipa", RAM_BASE),
        length=fields.get("length", 4096),
        addr=fields.get("addr", 0),
        flags=fields.get("flags", 1),
    )
    args.reserved[0] = fields.get("reserved", 0)
    return machine_vm.arm_mte_copy_tags(args)  # type: ignore[attr-defined, no-any-return]


def test_checks_run_in_the_kernels_order(make_machine: MachineFactory) -> None:
    """Scenario: several things wrong at once; each error is the first check's.

    Order: MTE not enabled, reserved, flags, alignment (all EINVAL), then per page.
    The message names the check so the caller knows what to fix.
    """
    plain = make_machine(mte=False)
    with pytest.raises(KvmError, match="MTE is not enabled"):
        raw_copy(plain.vm, reserved=1, flags=2, length=3)
    machine = make_machine()
    buffer = machine.buffer(4096)
    for fields, message in [
        ({"reserved": 1, "flags": 2, "length": 3}, "reserved"),
        ({"flags": 2, "length": 3}, "unknown flags"),
        ({"length": 3}, "multiples of the 4 KiB page"),
        ({"guest_ipa": RAM_BASE + 8}, "multiples of the 4 KiB page"),
    ]:
        with pytest.raises(KvmError, match=message) as error:
            raw_copy(machine.vm, addr=buffer, **fields)
        assert error.value.errno == errno.EINVAL


def test_zero_length_returns_zero(make_machine: MachineFactory) -> None:
    """Scenario: length 0 (the real 6.1 kernel returned 0)."""
    machine = make_machine()
    assert machine.copy(RAM_BASE, 0, 0, to_guest=False) == 0


def test_low_nibble_only_and_round_trip(make_machine: MachineFactory) -> None:
    """Scenario: TO_GUEST bytes 0xF3 then FROM_GUEST: 0x03 (as the real kernel did)."""
    machine = make_machine()
    user = machine.kvm.user_memory
    buffer = machine.buffer(8192)
    user.write(buffer, bytes([0xF3]) * 256 + bytes(range(256)))
    assert machine.copy(RAM_BASE, 8192, buffer, to_guest=True) == 8192
    out = machine.buffer(8192)
    assert machine.copy(RAM_BASE, 8192, out, to_guest=False) == 8192
    got = user.read(out, 512)
    assert got[:256] == bytes([0x03]) * 256
    assert got[256:] == bytes(b & 0xF for b in range(256))


def test_never_tagged_pages_read_as_zero(make_machine: MachineFactory) -> None:
    """Scenario: FROM_GUEST of pages the guest never touched: zeros, and the pages stay
    untagged (the copy goes through the VMM mapping, not stage 2)."""
    machine = make_machine()
    out = machine.buffer(4096)
    machine.kvm.user_memory.write(out, bytes([0xFF]) * 4096)
    assert machine.copy(RAM_BASE, 4 * 4096, out, to_guest=False) == 4 * 4096
    assert machine.kvm.user_memory.read(out, 1024) == bytes(1024)
    assert (machine.vm.memslots.slots[0].s2_pfn[:4] == NOT_MAPPED).all()


def test_copy_past_the_memslot_returns_the_pages_done(make_machine: MachineFactory) -> None:
    """Scenario: two pages, the second outside every memslot: returns 4096 (as the real
    6.1 kernel did); starting outside any memslot is EFAULT."""
    machine = make_machine()
    out = machine.buffer(4096)
    last = RAM_BASE + RAM_SIZE - 4096
    assert machine.copy(last, 8192, out, to_guest=False) == 4096
    with pytest.raises(KvmError) as error:
        machine.copy(RAM_BASE + RAM_SIZE, 4096, out, to_guest=False)
    assert error.value.errno == errno.EFAULT


@pytest.mark.parametrize("buffer", ["null", "unmapped", "read-only"])
def test_bad_user_buffers_are_efault(make_machine: MachineFactory, buffer: str) -> None:
    """Scenario: FROM_GUEST into a NULL, an unmapped and a read-only buffer."""
    machine = make_machine()
    user = machine.kvm.user_memory
    address = {"null": 0, "unmapped": 0x10_0000_0000}.get(buffer, 0)
    if buffer == "read-only":
        address = machine.buffer(4096)
        user.protect(address, 4096, writable=False)
    with pytest.raises(KvmError) as error:
        machine.copy(RAM_BASE, 4096, address, to_guest=False)
    assert error.value.errno == errno.EFAULT


@pytest.mark.parametrize(("profile", "clears"), [("linux-6.1", False), ("linux-6.2", True)])
def test_to_guest_with_a_short_buffer(
    make_machine: MachineFactory, profile: str, clears: bool
) -> None:
    """Scenario: TO_GUEST of two pages from a buffer that ends 100 tags into page 2.

    Returns 4096. Since 6.2 the half-copied page is cleared and marked tagged; before,
    its copied prefix stayed and it was not marked tagged.
    """
    machine = make_machine(profile)
    kvm = machine.kvm
    buffer = kvm.user_memory.map_anonymous(4096)  # pages follow with a guard gap
    kvm.user_memory.write(buffer, bytes([0x6]) * 4096)
    start = buffer + 4096 - 356
    assert machine.copy(RAM_BASE, 8192, start, to_guest=True) == 4096
    vma = kvm.process.find_vma(machine.ram)
    assert vma is not None
    pfn = int(kvm.process.fault_in(machine.ram + 4096, 1, write=False)[0])
    tags = kvm.frames.page_tags(pfn)
    assert bool(kvm.frames.mte_tagged[pfn]) is clears
    assert tags[:100].tolist() == ([0] * 100 if clears else [6] * 100)


@pytest.mark.parametrize(("profile", "busy"), [("linux-6.4", False), ("linux-6.12", True)])
def test_to_guest_while_dirty_logging(
    make_machine: MachineFactory, profile: str, busy: bool
) -> None:
    """Scenario: a memslot logs dirty pages; TO_GUEST is EBUSY from 6.12 (even of
    length 0), FROM_GUEST never is. Tag writes by the VMM never reach the dirty log."""
    machine = make_machine(profile, flags=KVM_MEM_LOG_DIRTY_PAGES)
    buffer = machine.buffer(4096)
    if busy:
        for length in (0, 4096):
            with pytest.raises(KvmError) as error:
                machine.copy(RAM_BASE, length, buffer, to_guest=True)
            assert error.value.errno == errno.EBUSY
    else:
        assert machine.copy(RAM_BASE, 4096, buffer, to_guest=True) == 4096
        bits = np.frombuffer(machine.vm.get_dirty_log(0), np.uint8)
        assert not bits.any()
    assert machine.copy(RAM_BASE, 4096, buffer, to_guest=False) == 4096


@pytest.mark.parametrize(("profile", "refused"), [("linux-6.2", False), ("linux-6.4", True)])
def test_length_above_int_max(make_machine: MachineFactory, profile: str, refused: bool) -> None:
    """Scenario: length 2 GiB + 4 KiB: EINVAL since 6.4; before, the copy proceeds
    (and here stops at the end of the memslot)."""
    machine = make_machine(profile)
    buffer = machine.buffer(RAM_SIZE // 16)
    length = 2**31 + 4096
    if refused:
        with pytest.raises(KvmError, match="INT_MAX"):
            machine.copy(RAM_BASE, length, buffer, to_guest=False)
    else:
        assert machine.copy(RAM_BASE, length, buffer, to_guest=False) == RAM_SIZE


def test_seed_v2_has_no_copy_ioctl(make_machine: MachineFactory) -> None:
    """Scenario: the seed's v2 design: no KVM_ARM_MTE_COPY_TAGS (EINVAL, unknown ioctl)."""
    machine = make_machine("seed-v2", mte=False)
    with pytest.raises(KvmError) as error:
        machine.copy(RAM_BASE, 4096, machine.buffer(4096), to_guest=False)
    assert error.value.errno == errno.EINVAL


def scattered_buffer(machine: object, pages: int) -> int:
    """A user buffer whose second page was touched first: its frames are not in order."""
    user = machine.kvm.user_memory  # type: ignore[attr-defined]
    buffer: int = machine.buffer(pages * 4096)  # type: ignore[attr-defined]
    user.write(buffer + 4096, b"\0")
    user.write(buffer, bytes(pages * 4096))
    runs = machine.kvm.process.span_views(buffer, pages * 4096, write=False)  # type: ignore[attr-defined]
    assert len(runs) == 3, "the buffer's frames should break twice"
    return buffer


def test_a_tag_buffer_in_scattered_frames_works_as_one(make_machine: MachineFactory) -> None:
    """Scenario: TO_GUEST and FROM_GUEST of 48 pages' tags through user buffers whose
    frames are not in order (each page of the buffer, 16 pages' tags, in its own run).

    Every tag lands on its own granule and comes back in order, as through any buffer."""
    machine = make_machine()
    user = machine.kvm.user_memory
    tags = (np.arange(48 * 256) * 7 % 16).astype(np.uint8)
    source = scattered_buffer(machine, 3)
    user.write(source, tags.tobytes())
    assert machine.copy(RAM_BASE, 48 * 4096, source, to_guest=True) == 48 * 4096
    out = scattered_buffer(machine, 3)
    assert machine.copy(RAM_BASE, 48 * 4096, out, to_guest=False) == 48 * 4096
    assert user.read(out, tags.size) == tags.tobytes()
    stage2 = machine.vm.stage2
    assert (
        stage2.load_tags(RAM_BASE + 17 * 4096, 256).tolist() == tags[17 * 256 : 18 * 256].tolist()
    )
