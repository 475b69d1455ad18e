"""A testbed suite that measures the real kernel's register file (not a comparison).

``tagvisor testbed --suite src/tagvisor/conformance/measure_regs.py --json`` records,
for a VCPU of an MTE VM and of a VM without MTE (features PSCI_0_2, as the VMM
uses): KVM_GET_REG_LIST in the kernel's order, GET_ONE_REG of every listed register,
SET_ONE_REG of each register to its own value, and for every 4-bit field of every ID
register what SET_ONE_REG does with the field lowered, zeroed, raised and set to 0xF,
before and after the VM has run, plus KVM_ARM_GET_REG_WRITABLE_MASKS where it exists.
The results became ``tagvisor.kvm.model.regdata``.

Standard library only (it runs inside the testbed's minimal image).
"""

from __future__ import annotations

import ctypes
import fcntl
from typing import Any, Final

from tagvisor.kvm.api import Vcpu, raw_ioctl
from tagvisor.kvm.linux import LinuxKvm
from tagvisor.kvm.linux.system import LinuxVm
from tagvisor.kvm.uapi import Cap, VcpuFeature, kvm_vcpu_init

#: KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES and KVM_ARM_GET_REG_WRITABLE_MASKS
#: (_IOR(KVMIO, 0xb6, struct reg_mask_range), 64 bytes; Linux 6.7).
CAP_REG_MASK_RANGES: Final = 230
GET_REG_WRITABLE_MASKS: Final = (2 << 30) | (64 << 16) | (0xAE << 8) | 0xB6
MASK_ENTRIES: Final = 3 * 8 * 8


class RegMaskRange(ctypes.Structure):
    """struct reg_mask_range (6.7), defined here so the suite runs against any tree."""

    _fields_ = (
        ("addr", ctypes.c_uint64),
        ("range", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 13),
    )


def is_id_reg(reg: int) -> bool:
    """op0=3, op1=0, CRn=0 sysreg: the ID registers KVM sanitises."""
    return reg & 0xFFFF_0000 == 0x0013_0000 and reg & 0xFF80 == 0xC000


def code(call: Any) -> int:
    """-errno of a failed ioctl, else 0."""
    value = raw_ioctl(call)
    return value if isinstance(value, int) and not isinstance(value, bool) and value < 0 else 0


def masks(vm: LinuxVm, range_: int = 0, reserved: int = 0) -> dict[str, str] | int:
    """KVM_ARM_GET_REG_WRITABLE_MASKS' non-zero masks by index, or -errno."""
    fd = vm.fd
    array = (ctypes.c_uint64 * MASK_ENTRIES)()
    request = RegMaskRange(addr=ctypes.addressof(array), range=range_)
    request.reserved[0] = reserved
    try:
        fcntl.ioctl(fd, GET_REG_WRITABLE_MASKS, request)
    except OSError as exc:
        return -(exc.errno or 0)
    return {str(i): hex(v) for i, v in enumerate(array) if v}


def set_same(vcpu: Vcpu, reg: int) -> int:
    """SET_ONE_REG of a register to the value it reads (what a restore does)."""
    return code(lambda: vcpu.set_one_reg(reg, vcpu.get_one_reg(reg)))


def probe_fields(vcpu: Vcpu, reg: int, value: int) -> dict[str, int]:
    """For each field: outcome of lowering by one, zeroing, raising by one, 0xF."""
    out: dict[str, int] = {}
    for shift in range(0, 64, 4):
        field = value >> shift & 0xF
        tries = {"lower": field - 1, "zero": 0, "raise": field + 1, "f": 0xF}
        for name, new in tries.items():
            if not 0 <= new <= 0xF or new == field:
                continue
            candidate = value & ~(0xF << shift) | new << shift
            result = code(lambda c=candidate: vcpu.set_one_reg(reg, c))
            out[f"{shift}.{name}"] = result
            if result == 0:
                vcpu.set_one_reg(reg, value)  # back, so the next probe starts equal
    return out


def measure(kvm: LinuxKvm, mte: bool) -> dict[str, Any]:
    """Everything this suite records, for one VM with or without MTE."""
    vm = kvm.create_vm()
    if mte:
        vm.enable_cap(Cap.ARM_MTE)
    vcpu = vm.create_vcpu(0)
    second = vm.create_vcpu(1)
    target = vm.arm_preferred_target().target
    features = kvm_vcpu_init(target=target)
    features.features[0] = 1 << VcpuFeature.PSCI_0_2
    vcpu.arm_vcpu_init(features)
    second.arm_vcpu_init(features)
    regs = vcpu.get_reg_list()
    values = {hex(r): hex(vcpu.get_one_reg(r)) for r in regs}
    result: dict[str, Any] = {
        "reg_list": [hex(r) for r in regs],
        "values": values,
        "vcpu1_values": {hex(r): hex(second.get_one_reg(r)) for r in regs if is_id_reg(r)},
        "set_same": {
            hex(r): code(lambda r=r: vcpu.set_one_reg(r, vcpu.get_one_reg(r))) for r in regs
        },
        "masks": masks(vm),
        "masks_cap": vm.check_extension(CAP_REG_MASK_RANGES),
        "masks_range1": masks(vm, range_=1),
        "masks_reserved": masks(vm, reserved=1),
    }
    ids = [r for r in regs if is_id_reg(r)]
    result["fields"] = {hex(r): probe_fields(vcpu, r, vcpu.get_one_reg(r)) for r in ids}
    vcpu.kick()
    result["run_exit"] = vcpu.run().reason.name
    result["after_run_same"] = {
        hex(r): code(lambda r=r: vcpu.set_one_reg(r, vcpu.get_one_reg(r))) for r in ids
    }
    result["after_run_fields"] = {hex(r): probe_fields(vcpu, r, vcpu.get_one_reg(r)) for r in ids}
    result["after_run_masks"] = masks(vm)
    plain = kvm.create_vm()
    if mte:
        plain.enable_cap(Cap.ARM_MTE)
    bare = plain.create_vcpu(0)
    bare.arm_vcpu_init(kvm_vcpu_init(target=target))
    result["features0_reg_list"] = [hex(r) for r in bare.get_reg_list()]
    if not mte:
        aa32 = kvm.create_vm().create_vcpu(0)
        init = kvm_vcpu_init(target=target)
        init.features[0] = 1 << VcpuFeature.EL1_32BIT | 1 << VcpuFeature.PSCI_0_2
        aa32.arm_vcpu_init(init)
        aa32_regs = aa32.get_reg_list()
        result["el1_32bit_reg_list"] = [hex(r) for r in aa32_regs]
        result["el1_32bit_values"] = {hex(r): hex(aa32.get_one_reg(r)) for r in aa32_regs}
    return result


def run() -> dict[str, Any]:
    """The testbed's entry point: the kernel's release and both VMs' measurements."""
    kvm = LinuxKvm()
    with open("/proc/sys/kernel/osrelease") as file:
        release = file.read().strip()
    return {"kernel": release, "mte": measure(kvm, True), "nomte": measure(kvm, False)}
