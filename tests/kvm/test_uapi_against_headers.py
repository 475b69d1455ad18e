"""Every uapi number, size and offset in tagvisor.kvm.uapi equals the arm64 headers'.

Scenario: uapi_probe.c is compiled against Debian's linux-libc-dev-arm64-cross headers
with the aarch64 cross compiler, run under qemu-aarch64, and prints what C sees.
"""

import ctypes
from pathlib import Path

import pytest

from tagvisor.kvm import uapi
from tests.support import cross

PROBE = Path(__file__).with_name("uapi_probe.c")


def python_side() -> dict[str, int]:
    values: dict[str, int] = {}
    for name in dir(uapi):
        value = getattr(uapi, name)
        if name.startswith("KVM_") and isinstance(value, int):
            values[name] = value
    for enum, prefix in (
        (uapi.Cap, "KVM_CAP_"),
        (uapi.ExitReason, "KVM_EXIT_"),
        (uapi.SystemEvent, "KVM_SYSTEM_EVENT_"),
        (uapi.VcpuFeature, "KVM_ARM_VCPU_"),
        (uapi.MpState, "KVM_MP_STATE_"),
    ):
        for member in enum:
            values[prefix + member.name] = int(member)
    values.update(
        GCR_EL1=uapi.GCR_EL1,
        RGSR_EL1=uapi.RGSR_EL1,
        TFSR_EL1=uapi.TFSR_EL1,
        TFSRE0_EL1=uapi.TFSRE0_EL1,
        CORE_REG_PC=uapi.CORE_REG_PC,
        CORE_REG_SP=uapi.CORE_REG_SP,
        CORE_REG_PSTATE=uapi.CORE_REG_PSTATE,
        sizeof_kvm_run=uapi.KVM_RUN_SIZE,
    )
    structs: list[type[ctypes.Structure]] = [
        uapi.kvm_userspace_memory_region,
        uapi.kvm_enable_cap,
        uapi.kvm_one_reg,
        uapi.kvm_vcpu_init,
        uapi.kvm_arm_copy_mte_tags,
        uapi.kvm_dirty_log,
        uapi.kvm_clear_dirty_log,
        uapi.kvm_reg_list,
        uapi.kvm_mp_state,
        uapi.kvm_irq_level,
        uapi.kvm_create_device,
        uapi.kvm_device_attr,
    ]
    for struct in structs:
        values[f"sizeof_{struct.__name__}"] = ctypes.sizeof(struct)
        for field_name, *_ in struct._fields_:
            values[f"offsetof_{struct.__name__}_{field_name}"] = getattr(struct, field_name).offset
    values.update(
        {
            "offsetof_kvm_run_immediate_exit": uapi.KVM_RUN_IMMEDIATE_EXIT_OFFSET,
            "offsetof_kvm_run_exit_reason": uapi.KVM_RUN_EXIT_REASON_OFFSET,
            "offsetof_kvm_run_mmio.phys_addr": uapi.KVM_RUN_MMIO_PHYS_ADDR,
            "offsetof_kvm_run_mmio.data": uapi.KVM_RUN_MMIO_DATA,
            "offsetof_kvm_run_mmio.len": uapi.KVM_RUN_MMIO_LEN,
            "offsetof_kvm_run_mmio.is_write": uapi.KVM_RUN_MMIO_IS_WRITE,
            "offsetof_kvm_run_system_event.type": uapi.KVM_RUN_SYSTEM_EVENT_TYPE,
            "offsetof_kvm_run_system_event.ndata": uapi.KVM_RUN_SYSTEM_EVENT_NDATA,
            "offsetof_kvm_run_system_event.data": uapi.KVM_RUN_SYSTEM_EVENT_DATA,
        }
    )
    return values


@pytest.mark.oracle
def test_uapi_matches_the_arm64_kernel_headers() -> None:
    """Scenario: compare all ~120 values printed by C with tagvisor's Python values.

    Every name the C program prints must exist in Python with the same value.
    """
    output = cross.run(cross.build(PROBE, ("-O1", "-static", "-Wall", "-Werror")))
    headers = {name: int(value) for name, value in (line.split() for line in output.splitlines())}
    ours = python_side()
    missing = sorted(set(headers) - set(ours))
    assert not missing, f"not modelled in Python: {missing}"
    different = {n: (hex(ours[n]), hex(v)) for n, v in headers.items() if ours[n] != v}
    assert not different, f"Python vs headers: {different}"
    assert len(headers) > 100


UFFD_PROBE = Path(__file__).with_name("uffd_probe.c")


@pytest.mark.oracle
def test_userfaultfd_numbers_match_the_arm64_headers() -> None:
    """Scenario: uffd_probe.c prints the syscall number, ioctls, flags and struct
    layouts of linux/userfaultfd.h; tagvisor.kvm.linux.userfault has the same, and its
    structs have the headers' sizes (uffd_msg's address at offset 16, uffdio_copy's
    result at 32)."""
    from tagvisor.kvm.linux import userfault as u

    output = cross.run(cross.build(UFFD_PROBE, ("-O1", "-static", "-Wall", "-Werror")))
    headers = {
        name: int(value) for name, value in (line.rsplit(" ", 1) for line in output.splitlines())
    }
    ours = {
        "__NR_userfaultfd": u.NR_USERFAULTFD,
        "UFFD_API": u.UFFD_API,
        "UFFD_USER_MODE_ONLY": u.UFFD_USER_MODE_ONLY,
        "UFFDIO_API": u.UFFDIO_API,
        "UFFDIO_REGISTER": u.UFFDIO_REGISTER,
        "UFFDIO_UNREGISTER": u.UFFDIO_UNREGISTER,
        "UFFDIO_WAKE": u.UFFDIO_WAKE,
        "UFFDIO_COPY": u.UFFDIO_COPY,
        "UFFDIO_REGISTER_MODE_MISSING": u.UFFDIO_REGISTER_MODE_MISSING,
        "UFFDIO_COPY_MODE_DONTWAKE": u.UFFDIO_COPY_MODE_DONTWAKE,
        "UFFD_EVENT_PAGEFAULT": u.UFFD_EVENT_PAGEFAULT,
        "sizeof(struct uffd_msg)": u.UFFD_MSG.size,
        "offsetof(struct uffd_msg, arg.pagefault.address)": 16,
        "sizeof(struct uffdio_api)": u.UFFDIO_API_ARG.size,
        "sizeof(struct uffdio_register)": u.UFFDIO_REGISTER_ARG.size,
        "sizeof(struct uffdio_range)": u.UFFDIO_RANGE.size,
        "sizeof(struct uffdio_copy)": u.UFFDIO_COPY_ARG.size,
        "offsetof(struct uffdio_copy, copy)": u.UFFDIO_COPY_ARG.size - 8,
    }
    assert {name: headers.get(name) for name in ours} == ours
