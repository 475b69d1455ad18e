"""The real /dev/kvm backend, as far as it can be tested without /dev/kvm (x86 CI).

The ioctls themselves run in the testbed (tests/conformance); here: struct layouts,
exit decoding from a synthetic kvm_run page, errno mapping, and the user memory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from pathlib import Path

import pytest

from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.linux import LinuxKvm, LinuxUserMemory, UserMemoryError, decode_exit
from tagvisor.kvm.linux.run import fill_mmio_read
from tagvisor.kvm.linux.system import ioctl
from tagvisor.kvm.uapi import (
    KVM_ARM_MTE_COPY_TAGS,
    KVM_CHECK_EXTENSION,
    KVM_ENABLE_CAP,
    KVM_RUN_SIZE,
    ExitReason,
    SystemEvent,
    kvm_arm_copy_mte_tags,
    kvm_clear_dirty_log,
    kvm_dirty_log,
    kvm_enable_cap,
    kvm_one_reg,
    kvm_userspace_memory_region,
    kvm_vcpu_init,
)


@pytest.mark.parametrize(
    ("struct_type", "size"),
    [
        (kvm_userspace_memory_region, 32),
        (kvm_enable_cap, 104),
        (kvm_one_reg, 16),
        (kvm_vcpu_init, 32),
        (kvm_arm_copy_mte_tags, 48),
        (kvm_dirty_log, 16),
        (kvm_clear_dirty_log, 24),
    ],
)
def test_structures_have_the_kernels_sizes(struct_type: type[ctypes.Structure], size: int) -> None:
    assert ctypes.sizeof(struct_type) == size


def test_copy_tags_packs_like_the_kernel() -> None:
    request = kvm_arm_copy_mte_tags(guest_ipa=0x4000_1000, length=0x2000, addr=0xAB, flags=1)
    request.reserved[1] = 7
    assert bytes(request) == struct.pack("<6Q", 0x4000_1000, 0x2000, 0xAB, 1, 0, 7)
    assert KVM_ARM_MTE_COPY_TAGS == 0x8030AEB4


def test_enable_cap_packs_cap_flags_and_args() -> None:
    request = kvm_enable_cap(cap=205, flags=0)
    request.args[3] = 9
    raw = bytes(request)
    assert struct.unpack_from("<II4Q", raw) == (205, 0, 0, 0, 0, 9)
    assert raw[40:] == bytes(64)


def page() -> bytearray:
    return bytearray(KVM_RUN_SIZE)


def test_decode_mmio_write_carries_len_bytes_of_data() -> None:
    run = page()
    struct.pack_into("<I", run, 8, ExitReason.MMIO)
    struct.pack_into("<Q8sIB", run, 32, 0x0900_0000, b"\x41\x00\x00\x00\xff\xff\xff\xff", 4, 1)
    exit_ = decode_exit(run)
    assert exit_.reason == ExitReason.MMIO
    assert exit_.mmio is not None
    assert (exit_.mmio.phys_addr, exit_.mmio.length, exit_.mmio.is_write) == (0x0900_0000, 4, True)
    assert exit_.mmio.data == b"\x41\x00\x00\x00"


def test_decode_mmio_read_has_no_data_and_the_answer_lands_in_mmio_data() -> None:
    run = page()
    struct.pack_into("<I", run, 8, ExitReason.MMIO)
    struct.pack_into("<Q8sIB", run, 32, 0x0900_0018, b"\xee" * 8, 2, 0)
    exit_ = decode_exit(run)
    assert exit_.mmio is not None
    assert not exit_.mmio.is_write
    assert exit_.mmio.data == b""
    fill_mmio_read(run, b"\x34\x12")
    assert run[40:48] == b"\x34\x12" + bytes(6)
    with pytest.raises(ValueError, match="at most 8"):
        fill_mmio_read(run, bytes(9))


def test_decode_system_event_with_its_data_words() -> None:
    run = page()
    struct.pack_into("<I", run, 8, ExitReason.SYSTEM_EVENT)
    struct.pack_into("<II2Q", run, 32, SystemEvent.SHUTDOWN, 2, 0, 0x55)
    exit_ = decode_exit(run)
    assert exit_.system_event == SystemEvent.SHUTDOWN
    assert exit_.system_event_data == (0, 0x55)


def test_decode_internal_error_and_plain_exits() -> None:
    run = page()
    struct.pack_into("<I", run, 8, ExitReason.INTERNAL_ERROR)
    struct.pack_into("<I", run, 32, 3)
    assert decode_exit(run).internal_suberror == 3
    struct.pack_into("<I", run, 8, ExitReason.FAIL_ENTRY)
    assert decode_exit(run).reason == ExitReason.FAIL_ENTRY


def test_decode_refuses_an_exit_it_does_not_know() -> None:
    run = page()
    struct.pack_into("<I", run, 8, 999)
    with pytest.raises(ValueError, match="999"):
        decode_exit(run)


def test_a_failed_ioctl_is_a_kvm_error_with_errno_and_name() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        with pytest.raises(KvmError) as caught:
            ioctl(fd, KVM_CHECK_EXTENSION, 205)
        assert caught.value.errno == errno.ENOTTY
        assert caught.value.ioctl == "KVM_CHECK_EXTENSION"
        with pytest.raises(KvmError) as caught:
            ioctl(fd, KVM_ENABLE_CAP, kvm_enable_cap(cap=205))
        assert caught.value.ioctl == "KVM_ENABLE_CAP"
        assert "KVM_ENABLE_CAP" in str(caught.value)
    finally:
        os.close(fd)


def test_no_device_is_a_kvm_error(tmp_path: Path) -> None:
    with pytest.raises(KvmError) as caught:
        LinuxKvm(str(tmp_path / "kvm"))
    assert caught.value.errno == errno.ENOENT


@pytest.fixture
def memory(tmp_path: Path) -> LinuxUserMemory:
    return LinuxUserMemory(tmp_path)


@pytest.mark.parametrize("kind", ["anonymous", "shared", "memfd", "file"])
def test_mappings_read_back_what_was_written(memory: LinuxUserMemory, kind: str) -> None:
    maps = {
        "anonymous": lambda: memory.map_anonymous(8192),
        "shared": lambda: memory.map_anonymous(8192, shared=True),
        "memfd": lambda: memory.map_memfd(8192),
        "file": lambda: memory.map_file(8192),
    }
    address = maps[kind]()
    assert address % 4096 == 0
    memory.write(address + 4090, b"tagvisor")
    assert memory.read(address + 4090, 8) == b"tagvisor"
    assert memory.read(address, 4) == bytes(4)
    memory.unmap(address, 8192)
    assert not memory.mappings


def test_views_of_parts_of_a_mapping_are_the_mapping_itself(memory: LinuxUserMemory) -> None:
    """Scenario: views of parts of two mappings (cut from one array per mapping): each
    shows its own bytes, sees writes made after it was taken, and a writable view's
    writes are what the mapping reads; a view past a mapping's end is EFAULT."""
    first, second = memory.map_anonymous(4 * 4096), memory.map_anonymous(2 * 4096)
    middle = memory.view(first + 4096, 2 * 4096)
    tail = memory.view(second + 4096, 4096)
    memory.write(first + 4096 + 5, b"\x11")
    memory.write(second + 4096, b"\x22")
    assert (middle.size, int(middle[5]), int(tail[0])) == (8192, 0x11, 0x22)
    writable = memory.writable_view(first + 3 * 4096, 4096)
    assert writable is not None
    writable[7] = 0x33
    assert memory.read(first + 3 * 4096 + 7, 1) == b"\x33"
    with pytest.raises(UserMemoryError) as caught:
        memory.view(second + 4096, 2 * 4096)
    assert caught.value.errno == errno.EFAULT


def test_accesses_outside_the_mappings_are_efault(memory: LinuxUserMemory) -> None:
    address = memory.map_anonymous(4096)
    with pytest.raises(UserMemoryError) as caught:
        memory.read(address + 4000, 200)
    assert caught.value.errno == errno.EFAULT
    with pytest.raises(UserMemoryError):
        memory.write(0, b"x")


def test_protect_makes_a_mapping_read_only_for_writes(memory: LinuxUserMemory) -> None:
    address = memory.map_anonymous(4096)
    memory.write(address, b"\x01")
    memory.protect(address, 4096, writable=False)
    assert memory.read(address, 1) == b"\x01"
    with pytest.raises(UserMemoryError) as caught:
        memory.write(address, b"\x02")
    assert caught.value.errno == errno.EFAULT
    memory.protect(address, 4096, writable=True)
    memory.write(address, b"\x02")
    assert memory.read(address, 1) == b"\x02"


@pytest.mark.skipif(os.uname().machine == "aarch64", reason="PROT_MTE may work on arm64")
def test_prot_mte_where_unsupported_says_so(memory: LinuxUserMemory) -> None:
    assert not memory.mte_supported
    with pytest.raises(UserMemoryError, match="PROT_MTE") as caught:
        memory.map_anonymous(4096, mte=True)
    assert caught.value.errno == errno.EINVAL
