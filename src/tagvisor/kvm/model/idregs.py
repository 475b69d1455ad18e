"""SET_ONE_REG of ID registers and KVM_ARM_GET_REG_WRITABLE_MASKS, as Linux does them.

Linux 6.1 (arch/arm64/kvm/sys_regs.c): ID registers are immutable, __set_id_reg()
refuses any value other than read_id_reg()'s with EINVAL, except that
set_id_aa64pfr0_el1() lets CSV2 and CSV3 go down (to 0 or 1 when the CPU is not
affected); nothing changes once the VM has run. MPIDR_EL1 is an ordinary register
(reset_mpidr, any value).

Linux 6.7 and later (6.12 here): set_id_reg() first refuses any change once the VM
has run (kvm_vm_has_ran_once, EBUSY), then arm64_check_features() lets each field in
the descriptor's writable mask move as its arm64_ftr_bits allow (mostly lower,
FTR_LOWER_SAFE), EINVAL otherwise; some setters (set_id_aa64pfr0_el1's CSV2/CSV3,
set_id_dfr0_el1's PerfMon, set_id_aa64dfr0_el1's PMUVer) check their fields first.
kvm_vm_ioctl_get_reg_writable_masks() reports the masks.

The model does not re-derive the cpufeature tables: it replays what the kernel did
to each field when it was probed on the testbed (``regdata``). A value changing
several fields is refused if any one change is (EINVAL before EBUSY, the order of
the kernel's checks).
"""

from __future__ import annotations

import errno

from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model.regdata import RegFile

#: struct reg_mask_range's array: op0=3, op1 in {0, 1, 3}, CRn=0 (KVM_ARM_FEATURE_ID_RANGE_SIZE).
MASK_ENTRIES = 3 * 8 * 8


def _probe_class(old: int, new: int) -> str:
    if new == 0:
        return "zero"
    if new == 0xF:
        return "f"
    return "lower" if new < old else "raise"


def id_set_outcome(
    data: RegFile,
    reg: int,
    limit: int,
    current: int,
    value: int,
    has_run: bool,
    lower_safe: frozenset[int] = frozenset(),
) -> int:
    """0 if the kernel would take ``value`` for ID register ``reg``, else -errno.

    Fields are judged against ``limit``, the value at reset (arm64_check_features
    compares with the sanitised host value, so a lowered field may go back up).
    Fields at the shifts in ``lower_safe`` may go down before the run although the
    measurement has no probe of that (the testbed's CPU had them at 0).
    """
    if value == current:
        return 0  # every kernel accepts the value it reads (the VMM's restore path)
    probes = data.id_set[has_run, reg]
    codes = set()
    for shift in range(0, 64, 4):
        old, new = limit >> shift & 0xF, value >> shift & 0xF
        if old != new:
            if new < old and shift in lower_safe and not has_run:
                continue
            codes.add(probes.get((shift, _probe_class(old, new)), -errno.EINVAL))
    if has_run and not codes and data.busy_after_run:
        return -errno.EBUSY  # set_id_reg: back to the reset value is a change too
    for code in (-errno.EINVAL, -errno.EBUSY):
        if code in codes:
            return code
    return 0


def writable_masks(data: RegFile, range_: int, reserved: tuple[int, ...]) -> list[int]:
    """KVM_ARM_GET_REG_WRITABLE_MASKS (kvm_vm_ioctl_get_reg_writable_masks, 6.7).

    EINVAL for a range other than KVM_ARM_FEATURE_ID_RANGE or non-zero reserved
    words; a kernel without the ioctl also says EINVAL (kvm_arch_vm_ioctl's default).
    """
    ioctl = "KVM_ARM_GET_REG_WRITABLE_MASKS"
    if data.writable_masks is None:
        raise KvmError(data.masks_errno, ioctl, f"{data.kernel} has no such ioctl")
    if range_ != 0 or any(reserved):
        raise KvmError(errno.EINVAL, ioctl, "only range 0 exists; reserved must be zero")
    return [data.writable_masks.get(i, 0) for i in range(MASK_ENTRIES)]
