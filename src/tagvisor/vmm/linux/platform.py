"""The address map and interrupt numbers a Linux guest of tagvisor sees.

Modelled on QEMU's ``virt`` board (hw/arm/virt.c, ``base_memmap``): the GICv3
distributor at 0x0800_0000 (64 KiB) and its redistributors from 0x080A_0000 (128 KiB,
two 64 KiB frames, per VCPU: KVM_VGIC_V3_REDIST_SIZE), RAM from 0x4000_0000. The
interrupt-driven PL011 sits at its own page next to the bare-metal guests' polled
console (docs/guest-abi.md keeps 0x0900_0000 for that one) and raises SPI 1, as the
virt board's UART does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tagvisor.kvm.uapi import KVM_VGIC_V3_DIST_SIZE, KVM_VGIC_V3_REDIST_SIZE

GIC_DIST_BASE: Final = 0x0800_0000
GIC_REDIST_BASE: Final = 0x080A_0000
#: The redistributor space up to the UARTs: room for 123 VCPUs, as on QEMU's virt.
GIC_REDIST_LIMIT: Final = 0x00F6_0000
UART_BASE: Final = 0x0900_2000
UART_SIZE: Final = 0x1000
#: The UART's SPI (INTID 32 + 1).
UART_SPI: Final = 1
#: KVM_DEV_ARM_VGIC_GRP_NR_IRQS: every INTID including the 32 private ones; KVM
#: wants a multiple of 32 from 64 to 1024 (arch/arm64/kvm/vgic/vgic-kvm-device.c).
#: The machine raises one SPI (the UART's), so it has the fewest KVM takes: every 32
#: SPIs more are 79 more registers to read and write in a migration's pause.
GIC_NR_IRQS: Final = 64
#: What a machine's GIC had before its number of interrupts was part of its shape
#: (MachineConfig.gic_irqs): snapshots and migrations without it mean this.
LEGACY_GIC_IRQS: Final = 128
GIC_IRQ_RANGE: Final = range(64, 1024 + 1, 32)
#: The arch timer's PPIs as the DT lists them (secure phys, non-secure phys, virtual,
#: hypervisor): INTIDs 29, 30, 27, 26, i.e. PPI 13, 14, 11, 10 (hw/arm/virt.c's
#: ARCH_TIMER_*_IRQ, arch/arm64/kvm/arch_timer.c's defaults).
TIMER_PPIS: Final = (13, 14, 11, 10)
#: The fixed clock the PL011's ``apb_pclk`` and ``uartclk`` name (QEMU's 24 MHz).
UART_CLOCK_HZ: Final = 24_000_000


@dataclass(frozen=True)
class GicLayout:
    """Where the in-kernel GICv3's frames are, for KVM and for the device tree."""

    dist_base: int
    dist_size: int
    redist_base: int
    redist_size: int
    nr_irqs: int


def gic_layout(vcpus: int, irqs: int = GIC_NR_IRQS) -> GicLayout:
    """The GICv3 of a machine with ``vcpus`` VCPUs (one redistributor each) and
    ``irqs`` interrupts."""
    redist = vcpus * KVM_VGIC_V3_REDIST_SIZE
    if redist > GIC_REDIST_LIMIT:
        raise ValueError(f"{vcpus} VCPUs need more redistributor space than the map has")
    if irqs not in GIC_IRQ_RANGE:
        raise ValueError(f"a GICv3 of {irqs} interrupts: KVM takes multiples of 32, 64 to 1024")
    return GicLayout(GIC_DIST_BASE, KVM_VGIC_V3_DIST_SIZE, GIC_REDIST_BASE, redist, irqs)
