"""The in-kernel GICv3's state, read and written through the device attributes.

Documentation/virt/kvm/devices/arm-vgic-v3.rst gives the groups: DIST_REGS (32-bit,
attr = offset), REDIST_REGS (32-bit, attr = MPIDR affinity << 32 | offset), CPU_SYSREGS
(64-bit, attr = MPIDR affinity << 32 | the register's op0:op1:CRn:CRm:op2) and
LEVEL_INFO (32-bit line levels of 32 INTIDs, attr = MPIDR affinity << 32 |
VGIC_LEVEL_INFO_LINE_LEVEL << 10 | vINTID). The register set and the order a restore
writes them follow QEMU's KVM GICv3 (hw/intc/arm_gicv3_kvm.c, kvm_arm_gicv3_put):
GICD_CTLR; each redistributor (config before line level before pending); the
distributor (routing before pending, config and line level before pending); then
each CPU interface, ICC_SRE_EL1 and ICC_CTLR_EL1 first. A set-register's clear twin
is written with ones before it, so a GIC that was not fresh ends up with the state
and nothing more. With KVM's GICv3 affinity routing is always on, so the
distributor's registers for INTIDs 0-31 are RAZ/WI and the redistributors hold them.
LPIs (GICR_PROPBASER/PENDBASER) need an ITS, which tagvisor's machines do not have.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tagvisor.kvm.api import Device
from tagvisor.kvm.uapi import (
    KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS,
    KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
    KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
    KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
    VGIC_NR_PRIVATE_IRQS,
)

#: KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT and VGIC_LEVEL_INFO_LINE_LEVEL.
LINE_LEVEL_INFO: Final = 0 << 10
SGI_FRAME: Final = 0x10000  # the redistributor's second 64 KiB frame

# Distributor offsets (GICv3 architecture, GICD_*).
GICD_CTLR, GICD_STATUSR = 0x0000, 0x0010
GICD_IGROUPR, GICD_ISENABLER, GICD_ICENABLER = 0x0080, 0x0100, 0x0180
GICD_ISPENDR, GICD_ICPENDR, GICD_ISACTIVER, GICD_ICACTIVER = 0x0200, 0x0280, 0x0300, 0x0380
GICD_IPRIORITYR, GICD_ICFGR, GICD_IROUTER = 0x0400, 0x0C00, 0x6000
# Redistributor offsets (GICR_*; the SGI frame's from SGI_FRAME).
GICR_CTLR, GICR_STATUSR, GICR_WAKER = 0x0000, 0x0010, 0x0014
GICR_IGROUPR0, GICR_ISENABLER0, GICR_ICENABLER0 = (SGI_FRAME + o for o in (0x080, 0x100, 0x180))
GICR_ISPENDR0, GICR_ICPENDR0 = SGI_FRAME + 0x200, SGI_FRAME + 0x280
GICR_ISACTIVER0, GICR_ICACTIVER0 = SGI_FRAME + 0x300, SGI_FRAME + 0x380
GICR_IPRIORITYR, GICR_ICFGR1 = SGI_FRAME + 0x400, SGI_FRAME + 0xC04


def _icc(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    return op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2


ICC_PMR_EL1: Final = _icc(3, 0, 4, 6, 0)
ICC_BPR0_EL1: Final = _icc(3, 0, 12, 8, 3)
ICC_BPR1_EL1: Final = _icc(3, 0, 12, 12, 3)
ICC_CTLR_EL1: Final = _icc(3, 0, 12, 12, 4)
ICC_SRE_EL1: Final = _icc(3, 0, 12, 12, 5)
ICC_IGRPEN0_EL1: Final = _icc(3, 0, 12, 12, 6)
ICC_IGRPEN1_EL1: Final = _icc(3, 0, 12, 12, 7)
#: ICC_CTLR_EL1.PRIbits (10:8): priority bits - 1; 5, 6 or 7 bits need 1, 2 or 4 APRs.
PRIBITS_SHIFT: Final = 8


def icc_ap0r(n: int) -> int:
    """ICC_AP0R<n>_EL1's encoding (group 0 active priorities)."""
    return _icc(3, 0, 12, 8, 4 + n)


def icc_ap1r(n: int) -> int:
    """ICC_AP1R<n>_EL1's encoding (group 1 active priorities)."""
    return _icc(3, 0, 12, 9, n)


@dataclass(frozen=True)
class GicRegister:
    """One attribute of the GIC device: where it is, how wide, its clear twin."""

    group: int
    attr: int
    size: int  # bytes: 4, or 8 for CPU_SYSREGS
    clear: int | None = None  # the attr of the clear-register written with ones first


@dataclass(frozen=True)
class GicState:
    """Every register's value, in the order a restore writes them."""

    values: tuple[tuple[GicRegister, int], ...]


def _redist(mpidr: int, offset: int, clear: int | None = None) -> GicRegister:
    group = KVM_DEV_ARM_VGIC_GRP_REDIST_REGS
    return GicRegister(
        group, mpidr << 32 | offset, 4, None if clear is None else mpidr << 32 | clear
    )


def _level(mpidr: int, vintid: int) -> GicRegister:
    return GicRegister(KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, mpidr << 32 | LINE_LEVEL_INFO | vintid, 4)


def _dist(offset: int, clear: int | None = None) -> GicRegister:
    return GicRegister(KVM_DEV_ARM_VGIC_GRP_DIST_REGS, offset, 4, clear)


def redistributor_registers(mpidr: int) -> list[GicRegister]:
    """One VCPU's redistributor: config before line level before pending."""
    return [
        _redist(mpidr, GICR_CTLR),
        _redist(mpidr, GICR_STATUSR),
        _redist(mpidr, GICR_WAKER),
        _redist(mpidr, GICR_IGROUPR0),
        _redist(mpidr, GICR_ISENABLER0, GICR_ICENABLER0),
        _redist(mpidr, GICR_ICFGR1),
        _level(mpidr, 0),
        _redist(mpidr, GICR_ISPENDR0, GICR_ICPENDR0),
        _redist(mpidr, GICR_ISACTIVER0, GICR_ICACTIVER0),
        *(_redist(mpidr, GICR_IPRIORITYR + i) for i in range(0, VGIC_NR_PRIVATE_IRQS, 4)),
    ]


def distributor_registers(nr_irqs: int) -> list[GicRegister]:
    """The SPIs' state: routing before pending, config and line level before pending."""
    spis = range(VGIC_NR_PRIVATE_IRQS, nr_irqs, 32)  # first INTID of each 32

    def bits(offset: int, clear: int | None = None) -> list[GicRegister]:
        return [
            _dist(offset + irq // 8, None if clear is None else clear + irq // 8) for irq in spis
        ]

    routes = [_dist(GICD_IROUTER + 8 * irq + half) for irq in range(32, nr_irqs) for half in (0, 4)]
    return [
        _dist(GICD_STATUSR),
        *bits(GICD_ISENABLER, GICD_ICENABLER),
        *bits(GICD_IGROUPR),
        *routes,
        *(_dist(GICD_ICFGR + irq // 4) for irq in range(32, nr_irqs, 16)),
        *(_level(0, irq) for irq in spis),
        *bits(GICD_ISPENDR, GICD_ICPENDR),
        *bits(GICD_ISACTIVER, GICD_ICACTIVER),
        *(_dist(GICD_IPRIORITYR + irq) for irq in range(32, nr_irqs, 4)),
    ]


def cpu_interface_registers(mpidr: int, ctlr: int) -> list[GicRegister]:
    """One VCPU's CPU interface; ``ctlr`` (its ICC_CTLR_EL1) says how many APRs."""
    pribits = (ctlr >> PRIBITS_SHIFT & 7) + 1
    aprs = {7: 4, 6: 2}.get(pribits, 1)
    sysregs = [ICC_SRE_EL1, ICC_CTLR_EL1, ICC_IGRPEN0_EL1, ICC_IGRPEN1_EL1]
    sysregs += [ICC_PMR_EL1, ICC_BPR0_EL1, ICC_BPR1_EL1]
    sysregs += [icc_ap0r(n) for n in range(aprs)] + [icc_ap1r(n) for n in range(aprs)]
    return [GicRegister(KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, mpidr << 32 | r, 8) for r in sysregs]


def _get(device: Device, register: GicRegister) -> int:
    raw = device.get_device_attr(register.group, register.attr, register.size)
    return int.from_bytes(raw[: register.size], "little")


def gic_registers(
    mpidrs: tuple[int, ...], nr_irqs: int, ctlr: Callable[[int], int]
) -> list[GicRegister]:
    """Every register of a GIC with these redistributors and interrupts, in the order a
    restore writes them; ``ctlr(mpidr)`` gives that CPU interface's ICC_CTLR_EL1 (its
    PRIbits say how many active-priority registers there are)."""
    return list(_register_list(mpidrs, nr_irqs, tuple(ctlr(mpidr) for mpidr in mpidrs)))


@functools.lru_cache(maxsize=16)
def _register_list(
    mpidrs: tuple[int, ...], nr_irqs: int, ctlrs: tuple[int, ...]
) -> tuple[GicRegister, ...]:
    """The list for one shape, made once: a migration's source, its destination's
    check and its apply all need it in the downtime, and some 300 objects are
    milliseconds under nested TCG."""
    registers = [_dist(GICD_CTLR)]
    for mpidr in mpidrs:
        registers += redistributor_registers(mpidr)
    registers += distributor_registers(nr_irqs)
    for mpidr, ctlr in zip(mpidrs, ctlrs, strict=True):
        registers += cpu_interface_registers(mpidr, ctlr)
    return tuple(registers)


def icc_ctlr(mpidr: int) -> GicRegister:
    """ICC_CTLR_EL1 of the CPU interface of ``mpidr``."""
    return GicRegister(KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, mpidr << 32 | ICC_CTLR_EL1, 8)


def save_gic(device: Device, mpidrs: tuple[int, ...], nr_irqs: int) -> GicState:
    """Read every register of the GIC (its VCPUs stopped: KVM answers EBUSY else)."""
    registers = gic_registers(mpidrs, nr_irqs, lambda mpidr: _get(device, icc_ctlr(mpidr)))
    raws = device.get_device_attrs([(r.group, r.attr, r.size) for r in registers])
    values = (
        int.from_bytes(raw[: r.size], "little") for r, raw in zip(registers, raws, strict=True)
    )
    return GicState(tuple(zip(registers, values, strict=True)))


def restore_gic(
    device: Device, state: GicState, holds: dict[tuple[int, int], int] | None = None
) -> None:
    """Write ``state`` into an initialised GIC of the same shape, in its order;
    registers ``holds`` says hold their value already are left as they are."""
    known = holds or {}
    for register, value in state.values:
        if known.get((register.group, register.attr)) == value:
            continue  # writing it (and its clear twin first) would change nothing
        if register.clear is not None:
            ones = (1 << 8 * register.size) - 1
            device.set_device_attr(
                register.group, register.clear, ones.to_bytes(register.size, "little")
            )
        device.set_device_attr(
            register.group, register.attr, value.to_bytes(register.size, "little")
        )
