"""Linux's KVM user API for arm64, as far as tagvisor uses it.

Numbers, structure layouts and ioctl encodings follow include/uapi/linux/kvm.h and
arch/arm64/include/uapi/asm/kvm.h; ``tests/kvm/test_uapi_against_headers.py`` compiles
a C program against Debian's arm64 uapi headers and compares every value here with it.
Only the standard library is used, so the real ``/dev/kvm`` backend can run in a
minimal arm64 image.
"""

from __future__ import annotations

import ctypes
import enum
from typing import Final

# -- ioctl encoding (include/uapi/asm-generic/ioctl.h; arm64 uses the generic one) ----

_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2

KVMIO: Final = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (KVMIO << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_READ, nr, ctypes.sizeof(struct))


def _iow(nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_WRITE, nr, ctypes.sizeof(struct))


def _iowr(nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ctypes.sizeof(struct))


# -- structures ---------------------------------------------------------------------


class kvm_userspace_memory_region(ctypes.Structure):  # noqa: N801 - the kernel's name
    """KVM_SET_USER_MEMORY_REGION's argument: a memslot of guest RAM and where the VMM maps it."""

    _fields_ = (
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
    )


class kvm_enable_cap(ctypes.Structure):  # noqa: N801
    """KVM_ENABLE_CAP's argument: a capability and its flags and arguments."""

    _fields_ = (
        ("cap", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("args", ctypes.c_uint64 * 4),
        ("pad", ctypes.c_uint8 * 64),
    )


class kvm_one_reg(ctypes.Structure):  # noqa: N801
    """KVM_GET/SET_ONE_REG's argument: a register id and the address of its value."""

    _fields_ = (("id", ctypes.c_uint64), ("addr", ctypes.c_uint64))


class kvm_vcpu_init(ctypes.Structure):  # noqa: N801
    """KVM_ARM_VCPU_INIT's argument: the target CPU and a bitmap of features."""

    _fields_ = (("target", ctypes.c_uint32), ("features", ctypes.c_uint32 * 7))


class kvm_arm_copy_mte_tags(ctypes.Structure):  # noqa: N801
    """KVM_ARM_MTE_COPY_TAGS's argument: a guest range, a buffer of a tag byte per
    granule, the direction."""

    _fields_ = (
        ("guest_ipa", ctypes.c_uint64),
        ("length", ctypes.c_uint64),
        ("addr", ctypes.c_uint64),  # void __user *
        ("flags", ctypes.c_uint64),
        ("reserved", ctypes.c_uint64 * 2),
    )


class kvm_dirty_log(ctypes.Structure):  # noqa: N801
    """KVM_GET_DIRTY_LOG's argument: a memslot and where its bitmap goes."""

    _fields_ = (
        ("slot", ctypes.c_uint32),
        ("padding1", ctypes.c_uint32),
        ("dirty_bitmap", ctypes.c_uint64),  # void __user *
    )


class kvm_clear_dirty_log(ctypes.Structure):  # noqa: N801
    """KVM_CLEAR_DIRTY_LOG's argument: a memslot's pages to re-protect, as a bitmap
    from a first page."""

    _fields_ = (
        ("slot", ctypes.c_uint32),
        ("num_pages", ctypes.c_uint32),
        ("first_page", ctypes.c_uint64),
        ("dirty_bitmap", ctypes.c_uint64),
    )


class kvm_reg_list(ctypes.Structure):  # noqa: N801
    """KVM_GET_REG_LIST's header: the number of ids; the u64 ids follow it."""

    _fields_ = (("n", ctypes.c_uint64),)  # followed by u64 reg[n]


class kvm_mp_state(ctypes.Structure):  # noqa: N801
    """struct kvm_mp_state."""

    _fields_ = (("mp_state", ctypes.c_uint32),)


class kvm_irq_level(ctypes.Structure):  # noqa: N801
    # union { __u32 irq; __s32 status; }: KVM_IRQ_LINE uses irq.
    """struct kvm_irq_level."""

    _fields_ = (("irq", ctypes.c_uint32), ("level", ctypes.c_uint32))


class kvm_create_device(ctypes.Structure):  # noqa: N801
    """struct kvm_create_device."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("fd", ctypes.c_uint32),  # out: the device's file descriptor
        ("flags", ctypes.c_uint32),  # KVM_CREATE_DEVICE_TEST
    )


class kvm_device_attr(ctypes.Structure):  # noqa: N801
    """struct kvm_device_attr."""

    _fields_ = (
        ("flags", ctypes.c_uint32),
        ("group", ctypes.c_uint32),
        ("attr", ctypes.c_uint64),
        ("addr", ctypes.c_uint64),  # void __user * to the attribute's value
    )


class reg_mask_range(ctypes.Structure):  # noqa: N801 - Linux 6.7, not in bookworm's headers
    """KVM_ARM_GET_REG_WRITABLE_MASKS's argument: where the masks go, and which range."""

    _fields_ = (
        ("addr", ctypes.c_uint64),  # u64 masks[KVM_ARM_FEATURE_ID_RANGE_SIZE]
        ("range", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 13),
    )


# -- ioctl numbers ------------------------------------------------------------------

KVM_GET_API_VERSION: Final = _io(0x00)
KVM_CREATE_VM: Final = _io(0x01)
KVM_CHECK_EXTENSION: Final = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE: Final = _io(0x04)
KVM_CREATE_VCPU: Final = _io(0x41)
KVM_IRQ_LINE: Final = _iow(0x61, kvm_irq_level)
KVM_GET_DIRTY_LOG: Final = _iow(0x42, kvm_dirty_log)
KVM_SET_USER_MEMORY_REGION: Final = _iow(0x46, kvm_userspace_memory_region)
KVM_RUN: Final = _io(0x80)
KVM_GET_MP_STATE: Final = _ior(0x98, kvm_mp_state)
KVM_SET_MP_STATE: Final = _iow(0x99, kvm_mp_state)
KVM_ENABLE_CAP: Final = _iow(0xA3, kvm_enable_cap)
KVM_GET_ONE_REG: Final = _iow(0xAB, kvm_one_reg)
KVM_SET_ONE_REG: Final = _iow(0xAC, kvm_one_reg)
KVM_ARM_VCPU_INIT: Final = _iow(0xAE, kvm_vcpu_init)
KVM_ARM_PREFERRED_TARGET: Final = _ior(0xAF, kvm_vcpu_init)
KVM_GET_REG_LIST: Final = _iowr(0xB0, kvm_reg_list)
KVM_ARM_MTE_COPY_TAGS: Final = _ior(0xB4, kvm_arm_copy_mte_tags)
#: A VM ioctl from Linux 6.7; older kernels answer EINVAL (kvm_arch_vm_ioctl's default).
KVM_ARM_GET_REG_WRITABLE_MASKS: Final = _ior(0xB6, reg_mask_range)
KVM_CLEAR_DIRTY_LOG: Final = _iowr(0xC0, kvm_clear_dirty_log)
KVM_CREATE_DEVICE: Final = _iowr(0xE0, kvm_create_device)
# ioctls of the file descriptor KVM_CREATE_DEVICE returns.
KVM_SET_DEVICE_ATTR: Final = _iow(0xE1, kvm_device_attr)
KVM_GET_DEVICE_ATTR: Final = _iow(0xE2, kvm_device_attr)

IOCTL_NAMES: Final = {
    value: name
    for name, value in dict(globals()).items()
    if name.startswith("KVM_") and isinstance(value, int) and value > 0xFF
}

KVM_API_VERSION: Final = 12

# -- capabilities, exits, features --------------------------------------------------


class Cap(enum.IntEnum):
    """KVM_CAP_* numbers used by tagvisor."""

    IRQCHIP = 0
    USER_MEMORY = 3
    MP_STATE = 14
    ONE_REG = 70
    READONLY_MEM = 81
    DEVICE_CTRL = 89
    ARM_EL1_32BIT = 93
    MANUAL_DIRTY_LOG_PROTECT2 = 168
    ARM_MTE = 205
    ARM_SUPPORTED_REG_MASK_RANGES = 230


class ExitReason(enum.IntEnum):
    """KVM_EXIT_*: why KVM_RUN returned (kvm_run.exit_reason)."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24
    ARM_NISV = 28


class SystemEvent(enum.IntEnum):
    """KVM_SYSTEM_EVENT_* (kvm_run.system_event.type)."""

    SHUTDOWN = 1
    RESET = 2
    CRASH = 3
    WAKEUP = 4
    SUSPEND = 5


class VcpuFeature(enum.IntEnum):
    """KVM_ARM_VCPU_* feature bits for KVM_ARM_VCPU_INIT (features[0])."""

    POWER_OFF = 0
    EL1_32BIT = 1
    PSCI_0_2 = 2
    PMU_V3 = 3
    SVE = 4
    PTRAUTH_ADDRESS = 5
    PTRAUTH_GENERIC = 6
    HAS_EL2 = 7


class MpState(enum.IntEnum):
    """KVM_MP_STATE_* that arm64 uses (arm.c kvm_arch_vcpu_ioctl_set_mpstate): a
    VCPU runs, is powered off (PSCI CPU_OFF, KVM_ARM_VCPU_POWER_OFF), or suspended."""

    RUNNABLE = 0
    STOPPED = 5
    SUSPENDED = 10


#: The seed thread's v2 design used feature bit 7 for per-VCPU MTE (never merged;
#: bit 7 is HAS_EL2 upstream).
SEED_V2_VCPU_FEATURE_MTE: Final = 7

KVM_ARM_TARGET_GENERIC_V8: Final = 5

#: KVM_ARM_GET_REG_WRITABLE_MASKS's only range: op0=3, op1 in {0, 1, 3}, CRn=0, with
#: KVM_ARM_FEATURE_ID_RANGE_IDX(op0, op1, crn, crm, op2) = op1' << 6 | crm << 3 | op2,
#: op1' being op1 with 3 made 2 (arch/arm64/include/uapi/asm/kvm.h, 6.7).
KVM_ARM_FEATURE_ID_RANGE: Final = 0
KVM_ARM_FEATURE_ID_RANGE_SIZE: Final = 3 * 8 * 8


def feature_id_range_idx(op1: int, crm: int, op2: int) -> int:
    """KVM_ARM_FEATURE_ID_RANGE_IDX for an ID register (op0=3, CRn=0)."""
    op1 &= 3
    op1 -= op1 == 3
    return op1 << 6 | (crm & 7) << 3 | op2


KVM_MEM_LOG_DIRTY_PAGES: Final = 1 << 0
KVM_MEM_READONLY: Final = 1 << 1
KVM_USER_MEM_SLOTS: Final = 512

KVM_ARM_TAGS_TO_GUEST: Final = 0
KVM_ARM_TAGS_FROM_GUEST: Final = 1

KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE: Final = 1 << 0
KVM_DIRTY_LOG_INITIALLY_SET: Final = 1 << 1

# -- the in-kernel GICv3 (Documentation/virt/kvm/devices/arm-vgic-v3.rst) ----------------

#: enum kvm_device_type (include/uapi/linux/kvm.h).
KVM_DEV_TYPE_ARM_VGIC_V3: Final = 7
KVM_CREATE_DEVICE_TEST: Final = 1
# Attribute groups (arch/arm64/include/uapi/asm/kvm.h).
KVM_DEV_ARM_VGIC_GRP_ADDR: Final = 0
KVM_DEV_ARM_VGIC_GRP_DIST_REGS: Final = 1
KVM_DEV_ARM_VGIC_GRP_NR_IRQS: Final = 3
KVM_DEV_ARM_VGIC_GRP_CTRL: Final = 4
KVM_DEV_ARM_VGIC_GRP_REDIST_REGS: Final = 5
KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS: Final = 6
KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO: Final = 7
KVM_DEV_ARM_VGIC_CTRL_INIT: Final = 0
# KVM_DEV_ARM_VGIC_GRP_ADDR attributes, and the frames' sizes.
KVM_VGIC_V3_ADDR_TYPE_DIST: Final = 2
KVM_VGIC_V3_ADDR_TYPE_REDIST: Final = 3
KVM_VGIC_V3_DIST_SIZE: Final = 0x10000
KVM_VGIC_V3_REDIST_SIZE: Final = 2 * 0x10000

# KVM_IRQ_LINE's irq field on arm64 (api.rst, "KVM_IRQ_LINE"): vcpu2_index (31:28),
# irq_type (27:24), vcpu_index (23:16), irq_id (15:0); an SPI's irq_id is its INTID.
KVM_ARM_IRQ_VCPU2_SHIFT: Final = 28
KVM_ARM_IRQ_TYPE_SHIFT: Final = 24
KVM_ARM_IRQ_VCPU_SHIFT: Final = 16
KVM_ARM_IRQ_NUM_SHIFT: Final = 0
KVM_ARM_IRQ_TYPE_CPU: Final = 0
KVM_ARM_IRQ_TYPE_SPI: Final = 1
KVM_ARM_IRQ_TYPE_PPI: Final = 2
#: INTIDs 0-31 are private (SGIs and PPIs); SPI n is INTID 32 + n.
VGIC_NR_PRIVATE_IRQS: Final = 32


def arm_spi_irq(spi: int) -> int:
    """KVM_IRQ_LINE's irq for SPI ``spi`` (INTID 32 + spi) on the in-kernel GIC."""
    return (KVM_ARM_IRQ_TYPE_SPI << KVM_ARM_IRQ_TYPE_SHIFT) | (VGIC_NR_PRIVATE_IRQS + spi)


# -- register ids (arch/arm64/include/uapi/asm/kvm.h) ----------------------------------

KVM_REG_ARM64: Final = 0x6000_0000_0000_0000
KVM_REG_SIZE_SHIFT: Final = 52
KVM_REG_SIZE_MASK: Final = 0x00F0_0000_0000_0000
KVM_REG_SIZE_U32: Final = 0x0020_0000_0000_0000
KVM_REG_SIZE_U64: Final = 0x0030_0000_0000_0000
KVM_REG_SIZE_U128: Final = 0x0040_0000_0000_0000
KVM_REG_ARM_COPROC_SHIFT: Final = 16
KVM_REG_ARM_COPROC_MASK: Final = 0x0FFF_0000
KVM_REG_ARM_CORE: Final = 0x0010 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM64_SYSREG: Final = 0x0013 << KVM_REG_ARM_COPROC_SHIFT


def reg_size(reg_id: int) -> int:
    """Bytes of a register id's value: 1 << ((id & SIZE_MASK) >> SIZE_SHIFT)."""
    return 1 << ((reg_id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT)


def arm64_sys_reg(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """ARM64_SYS_REG(): a 64-bit system register's ONE_REG id."""
    return (
        KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
    )


def arm64_core_reg(offset_words: int, size: int = KVM_REG_SIZE_U64) -> int:
    """A core register id: KVM_REG_ARM_CORE_REG(name) is the offset in 32-bit words."""
    return KVM_REG_ARM64 | size | KVM_REG_ARM_CORE | offset_words


# struct kvm_regs: user_pt_regs { u64 regs[31]; u64 sp; u64 pc; u64 pstate; } first.
CORE_REG_X0: Final = arm64_core_reg(0)
CORE_REG_SP: Final = arm64_core_reg(31 * 2)
CORE_REG_PC: Final = arm64_core_reg(32 * 2)
CORE_REG_PSTATE: Final = arm64_core_reg(33 * 2)


def core_reg_x(n: int) -> int:
    """ONE_REG id of general-purpose register Xn (0 to 30)."""
    if not 0 <= n <= 30:
        raise ValueError(f"X{n} is not a general-purpose register")
    return arm64_core_reg(2 * n)


# -- system register ids: ARM64_SYS_REG(op0, op1, CRn, CRm, op2) ---------------------------
#
# Every system register tagvisor names, defined here once. The A64 core keys MRS and MSR
# by the same ids, so registers KVM does not expose through ONE_REG (the PSTATE fields,
# CurrentEL) are listed too, as are the encodings the generic timer's ids swap.

# EL1 translation, exceptions and context.
SCTLR_EL1: Final = arm64_sys_reg(3, 0, 1, 0, 0)
ACTLR_EL1: Final = arm64_sys_reg(3, 0, 1, 0, 1)
CPACR_EL1: Final = arm64_sys_reg(3, 0, 1, 0, 2)
TTBR0_EL1: Final = arm64_sys_reg(3, 0, 2, 0, 0)
TTBR1_EL1: Final = arm64_sys_reg(3, 0, 2, 0, 1)
TCR_EL1: Final = arm64_sys_reg(3, 0, 2, 0, 2)
SPSR_EL1: Final = arm64_sys_reg(3, 0, 4, 0, 0)
ELR_EL1: Final = arm64_sys_reg(3, 0, 4, 0, 1)
SP_EL0: Final = arm64_sys_reg(3, 0, 4, 1, 0)
AFSR0_EL1: Final = arm64_sys_reg(3, 0, 5, 1, 0)
AFSR1_EL1: Final = arm64_sys_reg(3, 0, 5, 1, 1)
ESR_EL1: Final = arm64_sys_reg(3, 0, 5, 2, 0)
FAR_EL1: Final = arm64_sys_reg(3, 0, 6, 0, 0)
PAR_EL1: Final = arm64_sys_reg(3, 0, 7, 4, 0)
MAIR_EL1: Final = arm64_sys_reg(3, 0, 10, 2, 0)
AMAIR_EL1: Final = arm64_sys_reg(3, 0, 10, 3, 0)
VBAR_EL1: Final = arm64_sys_reg(3, 0, 12, 0, 0)
ISR_EL1: Final = arm64_sys_reg(3, 0, 12, 1, 0)
CONTEXTIDR_EL1: Final = arm64_sys_reg(3, 0, 13, 0, 1)
TPIDR_EL1: Final = arm64_sys_reg(3, 0, 13, 0, 4)
CNTKCTL_EL1: Final = arm64_sys_reg(3, 0, 14, 1, 0)
CSSELR_EL1: Final = arm64_sys_reg(3, 2, 0, 0, 0)

# MTE (GMID_EL1 is read-only and not a ONE_REG register).
RGSR_EL1: Final = arm64_sys_reg(3, 0, 1, 0, 5)
GCR_EL1: Final = arm64_sys_reg(3, 0, 1, 0, 6)
TFSR_EL1: Final = arm64_sys_reg(3, 0, 5, 6, 0)
TFSRE0_EL1: Final = arm64_sys_reg(3, 0, 5, 6, 1)
GMID_EL1: Final = arm64_sys_reg(3, 1, 0, 0, 4)

# Identification.
MIDR_EL1: Final = arm64_sys_reg(3, 0, 0, 0, 0)
MPIDR_EL1: Final = arm64_sys_reg(3, 0, 0, 0, 5)
REVIDR_EL1: Final = arm64_sys_reg(3, 0, 0, 0, 6)
ID_PFR1_EL1: Final = arm64_sys_reg(3, 0, 0, 1, 1)
ID_AA64PFR0_EL1: Final = arm64_sys_reg(3, 0, 0, 4, 0)
#: Its MTE field (bits 11:8) is the MTE level a VCPU sees.
ID_AA64PFR1_EL1: Final = arm64_sys_reg(3, 0, 0, 4, 1)
ID_AA64MMFR2_EL1: Final = arm64_sys_reg(3, 0, 0, 7, 2)
#: MTESTOREONLY (7:4) and MTEFAR (11:8) reach MTE guests from Linux 6.17.
ID_AA64PFR2_EL1: Final = arm64_sys_reg(3, 0, 0, 4, 2)
ID_AA64DFR0_EL1: Final = arm64_sys_reg(3, 0, 0, 5, 0)
ID_AA64ISAR0_EL1: Final = arm64_sys_reg(3, 0, 0, 6, 0)
ID_AA64ISAR1_EL1: Final = arm64_sys_reg(3, 0, 0, 6, 1)
ID_AA64MMFR0_EL1: Final = arm64_sys_reg(3, 0, 0, 7, 0)
CCSIDR_EL1: Final = arm64_sys_reg(3, 1, 0, 0, 0)
CLIDR_EL1: Final = arm64_sys_reg(3, 1, 0, 0, 1)
AIDR_EL1: Final = arm64_sys_reg(3, 1, 0, 0, 7)
CTR_EL0: Final = arm64_sys_reg(3, 3, 0, 0, 1)
DCZID_EL0: Final = arm64_sys_reg(3, 3, 0, 0, 7)

# PSTATE fields as MRS/MSR reach them.
SPSEL: Final = arm64_sys_reg(3, 0, 4, 2, 0)
CURRENT_EL: Final = arm64_sys_reg(3, 0, 4, 2, 2)
NZCV: Final = arm64_sys_reg(3, 3, 4, 2, 0)
DAIF: Final = arm64_sys_reg(3, 3, 4, 2, 1)
TCO: Final = arm64_sys_reg(3, 3, 4, 2, 7)

# EL0 thread registers.
TPIDR_EL0: Final = arm64_sys_reg(3, 3, 13, 0, 2)
TPIDRRO_EL0: Final = arm64_sys_reg(3, 3, 13, 0, 3)

# The generic timer. KVM's ONE_REG ids for the virtual timer's CVAL and count are
# famously swapped (asm/kvm.h): KVM_REG_ARM_TIMER_CVAL is CNTVCT_EL0's encoding and
# KVM_REG_ARM_TIMER_CNT is CNTV_CVAL_EL0's.
CNTFRQ_EL0: Final = arm64_sys_reg(3, 3, 14, 0, 0)
CNTPCT_EL0: Final = arm64_sys_reg(3, 3, 14, 0, 1)
CNTVCT_EL0: Final = arm64_sys_reg(3, 3, 14, 0, 2)
CNTP_CTL_EL0: Final = arm64_sys_reg(3, 3, 14, 2, 1)
CNTP_CVAL_EL0: Final = arm64_sys_reg(3, 3, 14, 2, 2)
CNTV_TVAL_EL0: Final = arm64_sys_reg(3, 3, 14, 3, 0)
CNTV_CTL_EL0: Final = arm64_sys_reg(3, 3, 14, 3, 1)
#: The architectural encoding of CNTV_CVAL_EL0; its ONE_REG id is KVM_REG_ARM_TIMER_CVAL.
CNTV_CVAL_EL0_ENC: Final = arm64_sys_reg(3, 3, 14, 3, 2)
KVM_REG_ARM_TIMER_CTL: Final = CNTV_CTL_EL0
KVM_REG_ARM_TIMER_CNT: Final = CNTV_CVAL_EL0_ENC
KVM_REG_ARM_TIMER_CVAL: Final = CNTVCT_EL0

# Debug and the OS lock.
MDCCINT_EL1: Final = arm64_sys_reg(2, 0, 0, 2, 0)
MDSCR_EL1: Final = arm64_sys_reg(2, 0, 0, 2, 2)
OSLAR_EL1: Final = arm64_sys_reg(2, 0, 1, 0, 4)
OSLSR_EL1: Final = arm64_sys_reg(2, 0, 1, 1, 4)
OSDLR_EL1: Final = arm64_sys_reg(2, 0, 1, 3, 4)

# AArch32 state a 64-bit VCPU still lists.
FPEXC32_EL2: Final = arm64_sys_reg(3, 4, 5, 3, 0)


# -- kvm_run layout (struct kvm_run; 6.1 arm64) -------------------------------------------

#: kvm_run.immediate_exit: KVM_RUN returns EINTR at once while it is non-zero.
KVM_RUN_IMMEDIATE_EXIT_OFFSET: Final = 1
KVM_RUN_EXIT_REASON_OFFSET: Final = 8
KVM_RUN_UNION_OFFSET: Final = 32
KVM_RUN_MMIO_PHYS_ADDR: Final = 32
KVM_RUN_MMIO_DATA: Final = 40
KVM_RUN_MMIO_LEN: Final = 48
KVM_RUN_MMIO_IS_WRITE: Final = 52
KVM_RUN_SYSTEM_EVENT_TYPE: Final = 32
KVM_RUN_SYSTEM_EVENT_NDATA: Final = 36
KVM_RUN_SYSTEM_EVENT_DATA: Final = 40
KVM_RUN_SIZE: Final = 2352
