"""Conformance scenarios of the VCPU register file: the whole list, every value, ID writes.

Standard library only (they run inside the testbed's minimal image).
"""

from __future__ import annotations

from typing import Final

from tagvisor.conformance.scenarios import Result, outcome, scenario
from tagvisor.kvm.api import Kvm, Vcpu, Vm
from tagvisor.kvm.uapi import (
    CNTPCT_EL0,
    KVM_REG_ARM_TIMER_CNT,
    Cap,
    VcpuFeature,
    kvm_vcpu_init,
)

#: Counters (KVM_REG_ARM_TIMER_CNT, KVM_REG_ARM_PTIMER_CNT): host time, not compared.
LIVE: Final = frozenset({KVM_REG_ARM_TIMER_CNT, CNTPCT_EL0})
#: SET_ONE_REG probes of one 4-bit field: one below, zero, one above, 0xF.
PROBES: Final = (("lower", -1), ("zero", None), ("raise", 1), ("f", 0xF))


def is_id_reg(reg: int) -> bool:
    """op0=3, op1=0, CRn=0: the ID registers (and MIDR, MPIDR, REVIDR)."""
    return reg & 0xFFFF_0000 == 0x0013_0000 and reg & 0xFF80 == 0xC000


def _vcpu(kvm: Kvm, mte: bool) -> tuple[Vm, Vcpu]:
    vm = kvm.create_vm()
    if mte:
        vm.enable_cap(Cap.ARM_MTE)
    vcpu = vm.create_vcpu(0)
    init = kvm_vcpu_init(target=vm.arm_preferred_target().target)
    init.features[0] = 1 << VcpuFeature.PSCI_0_2
    vcpu.arm_vcpu_init(init)
    return vm, vcpu


def _candidates(value: int, shift: int) -> list[tuple[str, int]]:
    field = value >> shift & 0xF
    out = []
    for name, step in PROBES:
        new = 0 if step is None else (step if name == "f" else field + step)
        if 0 <= new <= 0xF and new != field:
            out.append((name, value & ~(0xF << shift) | new << shift))
    return out


def set_to(vcpu: Vcpu, reg: int, value: int) -> int:
    """The raw outcome of SET_ONE_REG(reg, value)."""
    return outcome(lambda: vcpu.set_one_reg(reg, value))


def probe_fields(vcpu: Vcpu, reg: int, prefix: str, result: Result) -> None:
    """SET_ONE_REG of each field moved each way; back to the value after a success."""
    value = vcpu.get_one_reg(reg)
    for shift in range(0, 64, 4):
        for name, candidate in _candidates(value, shift):
            code = set_to(vcpu, reg, candidate)
            result[f"{prefix}.{reg:#x}.{shift}.{name}"] = code
            if code == 0:
                result[f"{prefix}.{reg:#x}.{shift}.{name}.back"] = set_to(vcpu, reg, value)


def set_same(vcpu: Vcpu, reg: int) -> int:
    """SET_ONE_REG of a register to the value it reads: what a VMM's restore does."""
    return outcome(lambda: vcpu.set_one_reg(reg, vcpu.get_one_reg(reg)))


def _values(kvm: Kvm, key: str, result: Result) -> None:
    _, vcpu = _vcpu(kvm, key == "on")
    regs = vcpu.get_reg_list()
    result[f"{key}.list"] = [f"{reg:#x}" for reg in regs]
    for reg in regs:
        live = "_" if reg in LIVE else ""
        result[f"{live}{key}.{reg:#x}"] = f"{vcpu.get_one_reg(reg):#x}"
        result[f"{key}.set_same.{reg:#x}"] = set_same(vcpu, reg)


@scenario("REG_LIST and every register's value after VCPU_INIT, MTE on and off")
def reg_list_and_values(kvm: Kvm) -> Result:
    """The list, each value and each set-to-itself, for an MTE VM ("on") and not."""
    result: Result = {}
    for key in ("on", "off"):
        _values(kvm, key, result)
    return result


def _masks(vm: Vm) -> dict[str, str] | int:
    try:
        table = vm.arm_get_reg_writable_masks()
    except OSError as exc:
        return -(exc.errno or 0)
    return {str(i): f"{mask:#x}" for i, mask in enumerate(table) if mask}


def _id_writes(kvm: Kvm, key: str, result: Result) -> None:
    vm, vcpu = _vcpu(kvm, key == "on")
    result[f"{key}.masks"] = _masks(vm)
    result[f"{key}.masks_range1"] = outcome(lambda: vm.arm_get_reg_writable_masks(1))
    ids = [reg for reg in vcpu.get_reg_list() if is_id_reg(reg)]
    for reg in ids:
        probe_fields(vcpu, reg, f"{key}.before", result)
    vcpu.kick()  # KVM_RUN returns at once, but the VM has now run
    result[f"{key}.run"] = vcpu.run().reason.name
    for reg in ids:
        probe_fields(vcpu, reg, f"{key}.after", result)


@scenario("SET_ONE_REG of every ID register field, before and after KVM_RUN; writable masks")
def id_reg_writes(kvm: Kvm) -> Result:
    """Every ID field probe's outcome before and after a run, and the masks."""
    result: Result = {}
    for key in ("on", "off"):
        _id_writes(kvm, key, result)
    return result
