"""The seed's v2 design, KVM_RUN with a Python guest, and concurrent first touches."""

import errno
import itertools
import threading
from collections.abc import Generator

import numpy as np
import pytest

from tagvisor.arch import TagCheckFault, TagCheckMode, with_tag
from tagvisor.kvm.api import VcpuExit
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import PROFILES, ModelKvm, profile_named
from tagvisor.kvm.model.guest import GeneratorGuest, GuestContext, mmio_write
from tagvisor.kvm.uapi import GCR_EL1, SEED_V2_VCPU_FEATURE_MTE, Cap, ExitReason, kvm_vcpu_init
from tests.kvm.conftest import RAM_BASE, MachineFactory, region

UCALL = 0x0A00_0000


def test_seed_v2_makes_mte_a_sticky_vcpu_feature() -> None:
    """Scenario: seed-v2 profile: no capability to probe; a VCPU initialised with
    feature bit 7 turns MTE on for the VM, and its first touch clears tags."""
    kvm = ModelKvm(host_memory=16 << 20, profile="seed-v2")
    assert kvm.check_extension(Cap.ARM_MTE) == 0
    vm = kvm.create_vm()
    ram = kvm.user_memory.map_anonymous(1 << 20)
    vm.set_user_memory_region(region(0, RAM_BASE, 1 << 20, ram))
    assert not vm.has_mte
    vcpu = vm.create_vcpu(0)
    init = kvm_vcpu_init(target=5)
    init.features[0] = 1 << SEED_V2_VCPU_FEATURE_MTE
    vcpu.arm_vcpu_init(init)
    assert vm.has_mte
    assert vcpu.get_one_reg(GCR_EL1)  # visible on the VCPU that has the feature
    pfns = vm.stage2.map_pages(RAM_BASE, 8192, write=True)
    assert kvm.frames.mte_tagged[pfns].all()


def test_every_profile_is_a_subclass_overriding_only_what_changed() -> None:
    """Scenario: each named profile resolves, and later Linux profiles inherit earlier."""
    names = list(PROFILES)
    assert names[0] == "linux-5.14"
    assert isinstance(profile_named("linux-6.13"), type(profile_named("linux-6.12")))
    chain = ("linux-6.13", "linux-6.17", "linux-7.0", "linux-7.3")
    for older, newer in itertools.pairwise(chain):
        assert isinstance(profile_named(newer), type(profile_named(older)))
    with pytest.raises(ValueError, match=r"known: linux-5\.14"):
        profile_named("linux-9.9")


def test_kvm_run_drives_a_python_guest_through_mmio_and_power_off(
    make_machine: MachineFactory,
) -> None:
    """Scenario: a guest tags a buffer, reports through an MMIO store, then catches its
    own overflow as a synchronous tag check fault and reports that, then returns.

    KVM_RUN returns MMIO exits with the reported values, then SYSTEM_EVENT shutdown.
    """
    machine = make_machine()

    def program(ctx: GuestContext) -> Generator[VcpuExit, bytes | None, None]:
        ctx.enable_tag_checks(TagCheckMode.SYNC)
        ptr = with_tag(RAM_BASE, 0x5)
        ctx.stage2.store_tags(RAM_BASE, np.full(2, 0x5, np.uint8))
        ctx.checked_access(ptr, 32, write=True)
        yield mmio_write(UCALL, 1)
        try:
            ctx.checked_access(ptr + 32, 8, write=True)
        except TagCheckFault as fault:
            yield mmio_write(UCALL, fault.address)

    vcpu = machine.vm.create_vcpu(0)
    vcpu.arm_vcpu_init(machine.vm.arm_preferred_target())
    vcpu.attach(GeneratorGuest(program))
    exits: list[VcpuExit] = []
    while True:
        exit_ = vcpu.run()
        exits.append(exit_)
        if exit_.reason != ExitReason.MMIO:
            break
    reported = [int.from_bytes(e.mmio.data, "little") for e in exits[:-1] if e.mmio]
    assert reported == [1, with_tag(RAM_BASE + 32, 5)]
    assert exits[-1].reason == ExitReason.SYSTEM_EVENT


def test_vcpu_threads_first_touching_the_same_pages_initialise_once(
    make_machine: MachineFactory,
) -> None:
    """Scenario: four VCPU threads touch the same 256 guest pages in different orders.

    Each page's tags are initialised exactly once (PG_mte_lock); all end tagged.
    """
    machine = make_machine()
    stage2 = machine.vm.stage2
    barrier = threading.Barrier(4)
    lock = threading.Lock()  # stage-2 tables themselves are not the subject here

    def vcpu(offset: int) -> None:
        barrier.wait()
        for page in np.roll(np.arange(256), offset * 64).tolist():
            pfn = machine.kvm.process.fault_in(machine.ram + page * 4096, 1, write=True)
            machine.kvm.frames.sanitise(pfn)
        with lock:
            stage2.map_pages(RAM_BASE, 256 * 4096, write=False)

    threads = [threading.Thread(target=vcpu, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pfns = stage2.map_pages(RAM_BASE, 256 * 4096, write=False)
    assert (machine.kvm.frames.tag_inits[pfns] == 1).all()


@pytest.mark.parametrize(("profile", "offered"), [("linux-6.12", 1), ("linux-7.0", 0)])
def test_pkvm_refuses_mte_from_7_0(profile: str, offered: int) -> None:
    """Scenario: KVM in protected mode (kvm-arm.mode=protected). 6.12 offers MTE to
    its non-protected VMs and enables it; 7.0 (f4eee308c8f4) answers 0 and EINVAL, as
    the testbed's 6.12 and 7.3 kernels did booted with that mode."""
    kvm = ModelKvm(16 << 20, profile, host_kvm_protected=True)
    vm = kvm.create_vm()
    assert (kvm.check_extension(Cap.ARM_MTE), vm.check_extension(Cap.ARM_MTE)) == (offered,) * 2
    if offered:
        vm.enable_cap(Cap.ARM_MTE)
        assert vm.mte_cap_enabled
        return
    with pytest.raises(KvmError) as refused:
        vm.enable_cap(Cap.ARM_MTE)
    assert refused.value.errno == errno.EINVAL
    assert ModelKvm(16 << 20, profile).check_extension(Cap.ARM_MTE) == 1  # VHE/nVHE: offered
