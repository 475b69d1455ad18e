"""Conformance scenarios: written once against :mod:`tagvisor.kvm.api`, run on every backend.

Each scenario takes a :class:`~tagvisor.kvm.api.Kvm` and returns a flat dict of plain
JSON values (ints, bools, strings, lists). An ioctl's outcome is recorded as the
selftests' raw form: its return value, ``0`` for calls that return nothing, or
``-errno``. Keys starting with ``_`` are facts about the host (for example the MTE
level the CPU has), reported but not compared between backends.

Standard library only (they run inside the testbed's minimal image).
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from tagvisor.kvm.api import Kvm, Vcpu, Vm, raw_ioctl
from tagvisor.kvm.uapi import (
    CORE_REG_PC,
    GCR_EL1,
    ID_AA64PFR1_EL1,
    KVM_ARM_TAGS_FROM_GUEST,
    KVM_ARM_TAGS_TO_GUEST,
    KVM_MEM_LOG_DIRTY_PAGES,
    RGSR_EL1,
    TFSR_EL1,
    TFSRE0_EL1,
    Cap,
    VcpuFeature,
    core_reg_x,
    kvm_arm_copy_mte_tags,
    kvm_userspace_memory_region,
    kvm_vcpu_init,
)

Result = dict[str, Any]

PAGE: Final = 4096
RAM_GPA: Final = 0x4000_0000
SLOT_PAGES: Final = 16
TAGS_PER_PAGE: Final = PAGE // 16

MTE_REGS: Final = {
    "GCR_EL1": GCR_EL1,
    "RGSR_EL1": RGSR_EL1,
    "TFSR_EL1": TFSR_EL1,
    "TFSRE0_EL1": TFSRE0_EL1,
}


def outcome(call: Callable[[], Any]) -> int:
    """The raw outcome of one ioctl: its int result, 0 for None, or -errno."""
    value = raw_ioctl(call)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return value


@dataclass(frozen=True)
class Scenario:
    """One registered scenario: its name (the function's), the function, its one-line summary,
    and the backends that can run it."""

    name: str
    run: Callable[[Kvm], Result]
    summary: str
    #: Backends that can run it ("model" needs a guest executor for KVM_RUN scenarios).
    backends: tuple[str, ...] = ("model", "linux")


SCENARIOS: list[Scenario] = []


def scenario(
    summary: str, backends: tuple[str, ...] = ("model", "linux")
) -> Callable[[Callable[[Kvm], Result]], Callable[[Kvm], Result]]:
    """Register the decorated function as a scenario with ``summary``, for ``backends``; the
    function is returned unchanged."""

    def register(function: Callable[[Kvm], Result]) -> Callable[[Kvm], Result]:
        SCENARIOS.append(Scenario(function.__name__, function, summary, backends))
        return function

    return register


# -- helpers -------------------------------------------------------------------------


def enable_mte(vm: Vm) -> int:
    """KVM_ENABLE_CAP(KVM_CAP_ARM_MTE) on ``vm``: its raw outcome."""
    return outcome(lambda: vm.enable_cap(Cap.ARM_MTE))


def add_slot(vm: Vm, slot: int, gpa: int, size: int, uaddr: int, flags: int = 0) -> int:
    """KVM_SET_USER_MEMORY_REGION of ``size`` bytes at ``gpa`` from ``uaddr`` as ``slot``: its
    raw outcome."""
    region = kvm_userspace_memory_region(
        slot=slot, flags=flags, guest_phys_addr=gpa, memory_size=size, userspace_addr=uaddr
    )
    return outcome(lambda: vm.set_user_memory_region(region))


def mte_vm(kvm: Kvm, *, mte: bool = True, pages: int = SLOT_PAGES) -> tuple[Vm, int]:
    """A VM (MTE enabled if asked) with one private anonymous slot at RAM_GPA."""
    vm = kvm.create_vm()
    if mte:
        vm.enable_cap(Cap.ARM_MTE)
    ram = kvm.user_memory.map_anonymous(pages * PAGE)
    region = kvm_userspace_memory_region(
        slot=0, flags=0, guest_phys_addr=RAM_GPA, memory_size=pages * PAGE, userspace_addr=ram
    )
    vm.set_user_memory_region(region)
    return vm, ram


def copy_tags(
    vm: Vm,
    ipa: int,
    length: int,
    addr: int,
    flags: int = KVM_ARM_TAGS_FROM_GUEST,
    reserved: tuple[int, int] = (0, 0),
) -> int:
    """KVM_ARM_MTE_COPY_TAGS of ``length`` bytes' tags at ``ipa`` to or from ``addr``
    (``flags``), with ``reserved`` in the reserved words: its raw outcome."""
    request = kvm_arm_copy_mte_tags(guest_ipa=ipa, length=length, addr=addr, flags=flags)
    request.reserved[0], request.reserved[1] = reserved
    return outcome(lambda: vm.arm_mte_copy_tags(request))


def init_vcpu(vm: Vm, features: int = 0) -> tuple[Vcpu, int]:
    """VCPU 0 of ``vm`` and the raw outcome of KVM_ARM_VCPU_INIT with the preferred target and
    ``features``."""
    vcpu = vm.create_vcpu(0)
    init = vm.arm_preferred_target()
    request = kvm_vcpu_init(target=init.target)
    request.features[0] = features
    return vcpu, outcome(lambda: vcpu.arm_vcpu_init(request))


# -- capability ----------------------------------------------------------------------


@scenario("KVM_CHECK_EXTENSION(KVM_CAP_ARM_MTE) on /dev/kvm and on a VM; an unknown cap")
def check_extension_mte(kvm: Kvm) -> Result:
    """KVM_CHECK_EXTENSION(KVM_CAP_ARM_MTE) on ``/dev/kvm`` and on a VM, of an unknown
    capability, and the API version."""
    vm = kvm.create_vm()
    return {
        "system": kvm.check_extension(Cap.ARM_MTE),
        "vm": vm.check_extension(Cap.ARM_MTE),
        "unknown_cap": kvm.check_extension(100_000),
        "api_version": kvm.get_api_version(),
    }


@scenario("ENABLE_CAP(ARM_MTE) twice before any VCPU, then after KVM_CREATE_VCPU")
def enable_cap_order(kvm: Kvm) -> Result:
    """ENABLE_CAP(ARM_MTE): the first and second time, after a VCPU exists, and first on a VM
    whose VCPU exists already."""
    vm = kvm.create_vm()
    first = enable_mte(vm)
    second = enable_mte(vm)
    vm.create_vcpu(0)
    after_vcpu = enable_mte(vm)
    fresh = kvm.create_vm()
    fresh.create_vcpu(0)
    return {
        "first": first,
        "second": second,
        "after_vcpu": after_vcpu,
        "first_after_vcpu": enable_mte(fresh),
    }


@scenario("ENABLE_CAP(ARM_MTE) with flags != 0 (EINVAL), with args != 0 (not checked)")
def enable_cap_flags_args(kvm: Kvm) -> Result:
    """ENABLE_CAP(ARM_MTE) with ``flags`` 1 and with non-zero ``args``: the outcomes."""
    vm = kvm.create_vm()
    flags = outcome(lambda: vm.enable_cap(Cap.ARM_MTE, flags=1))
    args = outcome(lambda: vm.enable_cap(Cap.ARM_MTE, args=(1, 2, 3, 4)))
    return {"flags_1": flags, "args_nonzero": args}


@scenario("A 32-bit EL1 VCPU in an MTE VM is refused at KVM_ARM_VCPU_INIT")
def el1_32bit_with_mte(kvm: Kvm) -> Result:
    """KVM_ARM_VCPU_INIT with EL1_32BIT in an MTE VM, and whether the host has 32-bit EL1 at all
    (a host fact)."""
    vm = kvm.create_vm()
    vm.enable_cap(Cap.ARM_MTE)
    _, init = init_vcpu(vm, 1 << VcpuFeature.EL1_32BIT)
    return {"init": init, "_host_el1_32bit": kvm.check_extension(Cap.ARM_EL1_32BIT)}


# -- COPY_TAGS -----------------------------------------------------------------------


@scenario("COPY_TAGS argument checks, each EINVAL, in the kernel's order")
def copy_tags_einval(kvm: Kvm) -> Result:
    """COPY_TAGS with MTE off, non-zero reserved words, unknown flags, unaligned address or
    length, and several wrongs at once (which one wins)."""
    user = kvm.user_memory
    buffer = user.map_anonymous(PAGE)
    off, _ = mte_vm(kvm, mte=False)
    vm, _ = mte_vm(kvm)
    return {
        "mte_off": copy_tags(off, RAM_GPA, PAGE, buffer),
        "mte_off_to_guest": copy_tags(off, RAM_GPA, PAGE, buffer, KVM_ARM_TAGS_TO_GUEST),
        "reserved_0": copy_tags(vm, RAM_GPA, PAGE, buffer, reserved=(1, 0)),
        "reserved_1": copy_tags(vm, RAM_GPA, PAGE, buffer, reserved=(0, 1)),
        "flags_2": copy_tags(vm, RAM_GPA, PAGE, buffer, flags=2),
        "flags_3": copy_tags(vm, RAM_GPA, PAGE, buffer, flags=3),
        "unaligned_ipa": copy_tags(vm, RAM_GPA + 16, PAGE, buffer),
        "unaligned_length": copy_tags(vm, RAM_GPA, PAGE + 16, buffer),
        "reserved_before_flags": copy_tags(vm, RAM_GPA + 1, PAGE, buffer, 2, (1, 0)),
        "mte_off_with_bad_args": copy_tags(off, RAM_GPA + 1, 1, 0, 7, (1, 1)),
    }


@scenario("COPY_TAGS EFAULT paths: no memslot; NULL, unmapped or read-only user buffer")
def copy_tags_efault(kvm: Kvm) -> Result:
    """COPY_TAGS both ways with no memslot at the address, and with a NULL, unmapped or read-only
    user buffer."""
    user = kvm.user_memory
    vm, _ = mte_vm(kvm)
    buffer = user.map_anonymous(PAGE)
    readonly = user.map_anonymous(PAGE)
    user.protect(readonly, PAGE, writable=False)
    gone = user.map_anonymous(PAGE)
    user.unmap(gone, PAGE)  # last: a later mmap could reuse the address
    outside = RAM_GPA + SLOT_PAGES * PAGE
    return {
        "no_memslot_from": copy_tags(vm, outside, PAGE, buffer),
        "no_memslot_to": copy_tags(vm, outside, PAGE, buffer, KVM_ARM_TAGS_TO_GUEST),
        "ipa_zero": copy_tags(vm, 0, PAGE, buffer),
        "null_from": copy_tags(vm, RAM_GPA, PAGE, 0),
        "null_to": copy_tags(vm, RAM_GPA, PAGE, 0, KVM_ARM_TAGS_TO_GUEST),
        "unmapped_from": copy_tags(vm, RAM_GPA, PAGE, gone),
        "unmapped_to": copy_tags(vm, RAM_GPA, PAGE, gone, KVM_ARM_TAGS_TO_GUEST),
        "readonly_from": copy_tags(vm, RAM_GPA, PAGE, readonly),
        "readonly_to": copy_tags(vm, RAM_GPA, PAGE, readonly, KVM_ARM_TAGS_TO_GUEST),
    }


@scenario("COPY_TAGS partial copies (the second page outside the slot) and length 0")
def copy_tags_partial_and_zero(kvm: Kvm) -> Result:
    """COPY_TAGS that cross the slot's end or the buffer's, and of length 0 (even with no memslot
    or a NULL buffer): how much each reports copied."""
    user = kvm.user_memory
    vm, _ = mte_vm(kvm)
    buffer = user.map_anonymous(4 * PAGE)
    last = RAM_GPA + (SLOT_PAGES - 1) * PAGE
    outside = RAM_GPA + SLOT_PAGES * PAGE
    # A writable page just below a read-only one (Linux maps top-down; the model's
    # next address is unmapped, which fails the same way): the second page's tags
    # run from the writable page into the read-only one.
    guard = user.map_anonymous(PAGE)
    user.protect(guard, PAGE, writable=False)
    half_buffer = user.map_anonymous(PAGE)
    edge = half_buffer + PAGE - TAGS_PER_PAGE - 16
    return {
        "from_two_pages_second_outside": copy_tags(vm, last, 2 * PAGE, buffer),
        "to_two_pages_second_outside": copy_tags(vm, last, 2 * PAGE, buffer, KVM_ARM_TAGS_TO_GUEST),
        "from_three_pages_in_slot": copy_tags(vm, RAM_GPA, 3 * PAGE, buffer),
        "from_first_page_outside": copy_tags(vm, outside, 2 * PAGE, buffer),
        "from_buffer_ends_in_second_page": copy_tags(vm, RAM_GPA, 2 * PAGE, edge),
        "zero_length_from": copy_tags(vm, RAM_GPA, 0, buffer),
        "zero_length_to": copy_tags(vm, RAM_GPA, 0, buffer, KVM_ARM_TAGS_TO_GUEST),
        "zero_length_no_memslot": copy_tags(vm, outside, 0, buffer),
        "zero_length_null": copy_tags(vm, RAM_GPA, 0, 0),
        "_guard_above_buffer": half_buffer + PAGE == guard,
    }


INT_MAX: Final = 2**31 - 1


@scenario("COPY_TAGS lengths around INT_MAX (6.4+: above it is EINVAL; before: partial)")
def copy_tags_int_max(kvm: Kvm) -> Result:
    """COPY_TAGS lengths just under and over INT_MAX and of 4 GiB: the outcomes, which the kernel
    version decides."""
    user = kvm.user_memory
    vm, _ = mte_vm(kvm)
    buffer = user.map_anonymous(SLOT_PAGES * TAGS_PER_PAGE + PAGE)
    over = INT_MAX + 1  # 2 GiB: page aligned, one byte above INT_MAX
    under = over - PAGE
    return {
        "from_length_over_int_max": copy_tags(vm, RAM_GPA, over, buffer),
        "to_length_over_int_max": copy_tags(vm, RAM_GPA, over, buffer, KVM_ARM_TAGS_TO_GUEST),
        "from_length_under_int_max": copy_tags(vm, RAM_GPA, under, buffer),
        "from_length_4_gib": copy_tags(vm, RAM_GPA, 1 << 32, buffer),
    }


@scenario("COPY_TAGS while the slot logs dirty pages (6.12+: TO_GUEST is EBUSY)")
def copy_tags_while_dirty_logging(kvm: Kvm) -> Result:
    """COPY_TAGS both ways while the slot logs dirty pages, and TO_GUEST again once logging is
    off."""
    user = kvm.user_memory
    vm, ram = mte_vm(kvm)
    buffer = user.map_anonymous(PAGE)
    size = SLOT_PAGES * PAGE
    logging = add_slot(vm, 0, RAM_GPA, size, ram, KVM_MEM_LOG_DIRTY_PAGES)
    during = {
        "to_guest": copy_tags(vm, RAM_GPA, PAGE, buffer, KVM_ARM_TAGS_TO_GUEST),
        "to_guest_zero_length": copy_tags(vm, RAM_GPA, 0, buffer, KVM_ARM_TAGS_TO_GUEST),
        "to_guest_bad_flags": copy_tags(vm, RAM_GPA, PAGE, buffer, 2),
        "from_guest": copy_tags(vm, RAM_GPA, PAGE, buffer),
    }
    stopped = add_slot(vm, 0, RAM_GPA, size, ram)
    return {
        "start_logging": logging,
        **{f"logging_{name}": value for name, value in during.items()},
        "stop_logging": stopped,
        "after_to_guest": copy_tags(vm, RAM_GPA, PAGE, buffer, KVM_ARM_TAGS_TO_GUEST),
    }


@scenario("TO_GUEST keeps the low nibble (0xf3 reads back 0x03); other pages stay zero")
def copy_tags_round_trip(kvm: Kvm) -> Result:
    """Tags written TO_GUEST and read back FROM_GUEST: only their low nibble kept, the page not
    written all zero."""
    user = kvm.user_memory
    vm, _ = mte_vm(kvm)
    buffer = user.map_anonymous(2 * PAGE)
    pattern = bytes([0xF3] * 16 + list(range(16)) * 15)
    user.write(buffer, pattern)
    to = copy_tags(vm, RAM_GPA + PAGE, PAGE, buffer, KVM_ARM_TAGS_TO_GUEST)
    user.write(buffer + PAGE, b"\xaa" * (2 * TAGS_PER_PAGE))
    back = copy_tags(vm, RAM_GPA, 2 * PAGE, buffer + PAGE)
    tags = user.read(buffer + PAGE, 2 * TAGS_PER_PAGE)
    return {
        "to_guest": to,
        "from_guest": back,
        "page0_distinct": sorted(set(tags[:TAGS_PER_PAGE])),
        "page1_first16": list(tags[TAGS_PER_PAGE : TAGS_PER_PAGE + 16]),
        "page1_rest_ok": tags[TAGS_PER_PAGE + 16 :] == bytes(list(range(16)) * 15),
    }


@scenario("FROM_GUEST of pages never tagged: zeros (untouched, and touched by the VMM)")
def never_tagged_reads_zero(kvm: Kvm) -> Result:
    """FROM_GUEST over pages the guest never tagged, one of them written by the VMM: the outcome
    and the tag values read."""
    user = kvm.user_memory
    vm, ram = mte_vm(kvm)
    user.write(ram + 2 * PAGE, b"\x5a" * PAGE)  # data written by the VMM only
    buffer = user.map_anonymous(PAGE)
    user.write(buffer, b"\xee" * (3 * TAGS_PER_PAGE))
    result = copy_tags(vm, RAM_GPA, 3 * PAGE, buffer)
    tags = user.read(buffer, 3 * TAGS_PER_PAGE)
    return {"from_guest": result, "distinct": sorted(set(tags))}


# -- memslots ------------------------------------------------------------------------


BACKINGS: Final = ("anonymous", "anonymous_shared", "memfd", "file", "hugetlb")


def _map(kvm: Kvm, backing: str, size: int) -> int:
    user = kvm.user_memory
    if backing == "anonymous":
        return user.map_anonymous(size)
    if backing == "anonymous_shared":
        return user.map_anonymous(size, shared=True)
    if backing == "memfd":
        return user.map_memfd(size)
    if backing == "file":
        return user.map_file(size)
    return user.map_hugetlb(size)


@scenario("KVM_SET_USER_MEMORY_REGION over each backing, with MTE on, off, and on later")
def memslot_backings(kvm: Kvm) -> Result:
    """KVM_SET_USER_MEMORY_REGION over anonymous, shared anonymous, memfd, file and hugetlb
    memory, with MTE on, off and enabled after the slot: each outcome (or why mmap failed)."""
    result: Result = {}
    size = 2 << 20  # one huge page
    for backing in BACKINGS:
        for mode in ("mte_on", "mte_off", "mte_enabled_after_slot"):
            vm = kvm.create_vm()
            if mode == "mte_on":
                vm.enable_cap(Cap.ARM_MTE)
            try:
                address = _map(kvm, backing, size)
            except OSError as exc:
                result[f"{backing}.{mode}"] = f"mmap failed: {errno.errorcode.get(exc.errno or 0)}"
                continue
            result[f"{backing}.{mode}"] = add_slot(vm, 0, RAM_GPA, size, address)
            if mode == "mte_enabled_after_slot":
                result[f"{backing}.{mode}.enable"] = enable_mte(vm)
    return result


@scenario("COPY_TAGS through a slot whose memory was made read-only after the slot")
def copy_tags_readonly_guest_memory(kvm: Kvm) -> Result:
    """COPY_TAGS both ways through a slot whose memory the VMM made read-only after adding it."""
    user = kvm.user_memory
    vm, ram = mte_vm(kvm)
    buffer = user.map_anonymous(PAGE)
    user.protect(ram, SLOT_PAGES * PAGE, writable=False)
    return {
        "to_guest": copy_tags(vm, RAM_GPA, PAGE, buffer, KVM_ARM_TAGS_TO_GUEST),
        "from_guest": copy_tags(vm, RAM_GPA, PAGE, buffer),
    }


# -- ONE_REG -------------------------------------------------------------------------


def get_reg(vcpu: Vcpu, reg: int) -> int:
    """KVM_GET_ONE_REG of ``reg``: the value, or -errno."""
    return outcome(lambda: vcpu.get_one_reg(reg))


def set_reg(vcpu: Vcpu, reg: int, value: int) -> int:
    """KVM_SET_ONE_REG of ``reg`` to ``value``: its raw outcome."""
    return outcome(lambda: vcpu.set_one_reg(reg, value))


@scenario("ONE_REG of GCR/RGSR/TFSR/TFSRE0 with MTE on (reset value, any value) and off")
def one_reg_mte_registers(kvm: Kvm) -> Result:
    """GCR, RGSR, TFSR and TFSRE0_EL1 through ONE_REG, MTE on and off: before VCPU init, reset
    value, setting all ones, reading back, KVM_GET_REG_LIST listing; and ID_AA64PFR1_EL1.MTE."""
    result: Result = {}
    for mte in (True, False):
        vm = kvm.create_vm()
        if mte:
            vm.enable_cap(Cap.ARM_MTE)
        vcpu = vm.create_vcpu(0)
        key = "on" if mte else "off"
        result[f"{key}.get_before_init"] = get_reg(vcpu, GCR_EL1)
        init = vm.arm_preferred_target()
        vcpu.arm_vcpu_init(kvm_vcpu_init(target=init.target))
        reg_list = set(vcpu.get_reg_list())
        for name, reg in MTE_REGS.items():
            result[f"{key}.{name}.reset"] = get_reg(vcpu, reg)
            result[f"{key}.{name}.set"] = set_reg(vcpu, reg, 0xFFFF_FFFF_FFFF_FFFF)
            result[f"{key}.{name}.readback"] = get_reg(vcpu, reg)
            result[f"{key}.{name}.in_reg_list"] = reg in reg_list
        pfr1 = get_reg(vcpu, ID_AA64PFR1_EL1)
        result[f"{key}.ID_AA64PFR1_EL1.MTE_nonzero"] = pfr1 >= 0 and (pfr1 >> 8 & 0xF) != 0
        result[f"_{key}.ID_AA64PFR1_EL1.MTE"] = (pfr1 >> 8 & 0xF) if pfr1 >= 0 else pfr1
    return result


# -- KVM_RUN -------------------------------------------------------------------------

#: A64 code at RAM_GPA (MMU off, so no memslot under 0x0900_0000 means MMIO):
#: str w1,[x0]; ldr w3,[x0,#24]; str w3,[x0,#4]; movz x0,#8; movk x0,#0x8400,lsl #16;
#: hvc #0 (PSCI SYSTEM_OFF); b .
MMIO_PROGRAM: Final = (
    0xB9000001,
    0xB9401803,
    0xB9000403,
    0xD2800100,
    0xF2B08000,
    0xD4000002,
    0x14000000,
)
UART: Final = 0x0900_0000


@scenario("KVM_RUN: an MMIO write, an MMIO read answered by the VMM, PSCI SYSTEM_OFF")
def run_mmio_and_system_off(kvm: Kvm) -> Result:
    """KVM_RUN of MMIO_PROGRAM: each exit's reason, MMIO address, length, direction and data
    (reads answered 0x12345678), then the system event."""
    vm, ram = mte_vm(kvm)
    code = b"".join(word.to_bytes(4, "little") for word in MMIO_PROGRAM)
    kvm.user_memory.write(ram, code)
    vcpu, init = init_vcpu(vm, 1 << VcpuFeature.PSCI_0_2)
    vcpu.set_one_reg(CORE_REG_PC, RAM_GPA)
    vcpu.set_one_reg(core_reg_x(0), UART)
    vcpu.set_one_reg(core_reg_x(1), 0x41)
    exits: list[dict[str, Any]] = []
    for _ in range(8):
        exit_ = vcpu.run()
        record: dict[str, Any] = {"reason": exit_.reason.name}
        if exit_.mmio is not None:
            record.update(
                addr=exit_.mmio.phys_addr,
                len=exit_.mmio.length,
                write=exit_.mmio.is_write,
                data=exit_.mmio.data.hex(),
            )
            if not exit_.mmio.is_write:
                vcpu.set_mmio_read_data((0x12345678).to_bytes(exit_.mmio.length, "little"))
        if exit_.system_event is not None:
            record.update(event=exit_.system_event, data=list(exit_.system_event_data))
        exits.append(record)
        if exit_.mmio is None:
            break
    return {"init": init, "exits": exits}


SPIN: Final = 0x1400_0000  # B . (a branch to itself)
KICK_AFTER: Final = 0.3


@scenario("KVM_RUN interrupted: a kick while the guest spins; a kick before KVM_RUN")
def run_kick(kvm: Kvm) -> Result:
    """KVM_RUN of a guest that spins, kicked from another thread, then run after a kick that came
    first: both exit reasons, and whether the PC stayed put."""
    vm, ram = mte_vm(kvm)
    kvm.user_memory.write(ram, SPIN.to_bytes(4, "little"))
    vcpu, init = init_vcpu(vm, 1 << VcpuFeature.PSCI_0_2)
    vcpu.set_one_reg(CORE_REG_PC, RAM_GPA)
    timer = threading.Timer(KICK_AFTER, vcpu.kick)
    timer.start()
    try:
        spinning = vcpu.run().reason.name
    finally:
        timer.cancel()
    vcpu.kick()
    kicked_before = vcpu.run().reason.name
    return {
        "init": init,
        "spinning": spinning,
        "kicked_before": kicked_before,
        "pc_stays": vcpu.get_one_reg(CORE_REG_PC) == RAM_GPA,
    }


def run_all(
    kvm_factory: Callable[[], Kvm], backend: str, only: list[str] | None = None
) -> dict[str, Result]:
    """Every scenario this backend can run, each on a fresh Kvm; errors are results too.
    Each result says how long it took (``_seconds``, a host fact: CI's budget)."""
    results: dict[str, Result] = {}
    for entry in SCENARIOS:
        if backend not in entry.backends or (only and entry.name not in only):
            continue
        started = time.monotonic()
        try:
            results[entry.name] = entry.run(kvm_factory())
        except Exception as exc:  # a scenario that crashes is a difference, not a stop
            results[entry.name] = {"exception": f"{type(exc).__name__}: {exc}"}
        results[entry.name].setdefault("_seconds", round(time.monotonic() - started, 2))
    return results
