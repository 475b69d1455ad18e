"""Property-based fuzzing of every model ioctl's arguments.

Each call either succeeds or raises KvmError with an errno Linux documents for that
ioctl; nothing else escapes. After every step: no page is mapped into an MTE guest
without valid tags, and the guest never sees a tag nobody wrote.
"""

import errno
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagvisor.cpu.bus import MmioExit
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import PROFILES, ModelKvm
from tagvisor.kvm.model.memslots import NOT_MAPPED, Memslot
from tagvisor.kvm.uapi import kvm_arm_copy_mte_tags, kvm_vcpu_init
from tests.kvm.conftest import RAM_BASE, region

DOCUMENTED = {
    "enable_cap": {errno.EINVAL},
    "set_user_memory_region": {errno.EINVAL, errno.EEXIST, errno.EFAULT},
    "create_vcpu": {errno.EINVAL, errno.EEXIST},
    "vcpu_init": {errno.EINVAL, errno.ENOENT},
    "one_reg": {errno.EINVAL, errno.ENOENT, errno.ENOEXEC},
    "copy_tags": {errno.EINVAL, errno.EFAULT, errno.EBUSY},
    "dirty_log": {errno.EINVAL, errno.ENOENT, errno.EFAULT},
    "guest": {errno.EFAULT},
}

u64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 4096, RAM_BASE, 1 << 20]))
small = st.integers(-2, 600)
calls = st.lists(
    st.one_of(
        st.tuples(st.just("enable_cap"), st.integers(0, 300), st.integers(0, 2), u64),
        st.tuples(
            st.just("set_user_memory_region"),
            small,
            st.sampled_from([0, 1, 2, 3, 4]),
            st.sampled_from([RAM_BASE, RAM_BASE + 4096, 0, 1 << 41, 0x123]),
            st.sampled_from([0, 4096, 1 << 20, 100]),
        ),
        st.tuples(st.just("create_vcpu"), small),
        st.tuples(st.just("vcpu_init"), st.integers(0, 6), st.integers(0, 2**9)),
        st.tuples(st.just("one_reg"), u64, st.booleans()),
        st.tuples(st.just("copy_tags"), u64, u64, st.booleans(), st.integers(0, 3)),
        st.tuples(st.just("dirty_log"), small, st.integers(0, 130)),
        st.tuples(st.just("guest"), st.integers(0, 300), st.booleans(), st.integers(0, 15)),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(sorted(PROFILES)), ops=calls)
def test_random_ioctls_fail_only_with_documented_errnos(
    profile: str, ops: list[tuple[Any, ...]]
) -> None:
    """Scenario: a random sequence of ioctls with hostile arguments on one VM."""
    kvm = ModelKvm(host_memory=16 << 20, profile=profile)
    vm = kvm.create_vm()
    ram = kvm.user_memory.map_anonymous(1 << 20)
    buffer = kvm.user_memory.map_anonymous(1 << 16)
    vcpus = []
    for op in ops:
        name = str(op[0])
        try:
            if name == "enable_cap":
                vm.enable_cap(int(op[1]), flags=int(op[2]), args=[int(op[3])])
            elif name == "set_user_memory_region":
                slot, flags, gpa, size = (int(x) for x in op[1:])
                vm.set_user_memory_region(region(slot & 0xFFFFFFFF, gpa, size, ram, flags))
            elif name == "create_vcpu":
                vcpus.append(vm.create_vcpu(int(op[1])))
            elif name == "vcpu_init" and vcpus:
                init = kvm_vcpu_init(target=int(op[1]))
                init.features[0] = int(op[2])
                vcpus[-1].arm_vcpu_init(init)
            elif name == "one_reg" and vcpus:
                reg = int(op[1])
                if op[2]:
                    vcpus[-1].set_one_reg(reg, 0)
                else:
                    vcpus[-1].get_one_reg(reg)
            elif name == "copy_tags":
                ipa, length, to_guest, flags = op[1:]
                args = kvm_arm_copy_mte_tags(
                    guest_ipa=int(ipa) % (1 << 40),
                    length=int(length) % (1 << 22),
                    addr=buffer,
                    flags=0 if to_guest else int(flags),
                )
                vm.arm_mte_copy_tags(args)
            elif name == "dirty_log":
                slot, first = int(op[1]), int(op[2])
                vm.get_dirty_log(slot & 0xFFFFFFFF)
                vm.clear_dirty_log(slot & 0xFFFFFFFF, first, 64, bytes(8))
            elif name == "guest":
                page, write, tag = (int(x) for x in op[1:])
                address = RAM_BASE + page * 4096
                if write:
                    vm.stage2.store_tags(address, np.array([tag], np.uint8))
                else:
                    vm.stage2.read(address, 16)
        except KvmError as error:
            failure: tuple[str, int | None] = (name, error.errno)
        except MmioExit:
            failure = (name, None)
        else:
            failure = (name, 0)
        assert failure[1] in {0, *DOCUMENTED[name], *((None,) if name == "guest" else ())}
        check_invariants(kvm, vm.has_mte, list(vm.memslots.slots.values()))


def check_invariants(kvm: ModelKvm, has_mte: bool, memslots: list[Memslot]) -> None:
    frames = kvm.frames
    for memslot in memslots:
        mapped = memslot.s2_pfn[memslot.s2_pfn != NOT_MAPPED]
        if has_mte and mapped.size:
            assert frames.mte_tagged[frames.folio_head[mapped]].all(), "untagged page mapped"
    # No invented tags: a tagged frame whose tags were never initialised cannot exist.
    tagged = np.flatnonzero(frames.mte_tagged & frames.in_use)
    assert (frames.tag_inits[frames.folio_head[tagged]] >= 1).all()
