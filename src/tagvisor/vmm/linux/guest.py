"""A Linux guest: its files checked up front, then loaded and VCPU 0 pointed at it.

booting.rst section 4: VCPU 0 enters the Image's first byte with x0 = the DTB's
physical address and x1 to x3 zero, MMU off, interrupts masked. KVM's VCPU reset
gives exactly that state (EL1h, DAIF masked, SCTLR_EL1.M = 0, registers zero), so
only PC and x0 are set. The other VCPUs start powered off (KVM_ARM_VCPU_POWER_OFF)
and Linux starts them with PSCI CPU_ON, which KVM answers itself (KVM_ARM_VCPU_PSCI_0_2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tagvisor.kvm.api import Vcpu
from tagvisor.kvm.uapi import CORE_REG_PC, core_reg_x
from tagvisor.vmm.linux.devicetree import MachineShape, device_tree
from tagvisor.vmm.linux.image import KernelImage, parse_image
from tagvisor.vmm.linux.layout import BootLayout, check_bootargs, initrd_format, plan
from tagvisor.vmm.linux.platform import UART_BASE, GicLayout
from tagvisor.vmm.machine import MachineError
from tagvisor.vmm.memory import GuestMemory

DEFAULT_BOOTARGS: Final = "console=ttyAMA0 panic=-1"


def kvm_mpidr(vcpu_id: int) -> int:
    """The affinity KVM gives VCPU ``vcpu_id`` at reset (arch/arm64/kvm/sys_regs.c,
    reset_mpidr: Aff0 = id[3:0], Aff1 = id[11:4], Aff2 = id[19:12]): what the cpus
    node's ``reg`` must say for Linux to match its CPUs with PSCI's."""
    return (vcpu_id & 0xF) | ((vcpu_id >> 4) & 0xFF) << 8 | ((vcpu_id >> 12) & 0xFF) << 16


def kvm_mpidrs(vcpus: int) -> tuple[int, ...]:
    """The affinity of each of ``vcpus`` VCPUs, in VCPU order (:func:`kvm_mpidr`)."""
    return tuple(kvm_mpidr(index) for index in range(vcpus))


class LinuxUnsupported(MachineError):
    """This KVM cannot run a Linux guest at all (no in-kernel irqchip)."""


@dataclass(frozen=True)
class LinuxGuest:
    """A kernel, an optional initrd and the command line, all checked."""

    kernel: KernelImage
    initrd: bytes | None
    bootargs: bytes


def linux_guest(
    kernel: bytes, initrd: bytes | None = None, bootargs: str = DEFAULT_BOOTARGS
) -> LinuxGuest:
    """Check the Image header, the initrd's format and the command line (ImageError,
    naming what is wrong) before anything is built."""
    image = parse_image(kernel)
    if initrd is not None:
        initrd_format(initrd)
    return LinuxGuest(image, initrd, check_bootargs(bootargs))


def load_linux(
    guest: LinuxGuest,
    memory: GuestMemory,
    vcpus: list[Vcpu],
    ram: tuple[int, int],
    gic: GicLayout,
) -> BootLayout:
    """Place kernel, initrd and DTB in guest RAM [base, base + size) and point VCPU 0
    at the kernel with x0 = the DTB; everything is planned before anything is written."""
    base, size = ram
    initrd = guest.initrd
    layout = plan(base, size, guest.kernel, None if initrd is None else len(initrd))
    shape = MachineShape(
        ram_base=base,
        ram_size=size,
        mpidrs=kvm_mpidrs(len(vcpus)),
        gic=gic,
        uart_base=UART_BASE,
        bootargs=guest.bootargs,
        initrd=None if layout.initrd is None else (layout.initrd, layout.initrd_end or 0),
    )
    dtb = device_tree(shape)
    memory.write(layout.kernel, guest.kernel.data)
    if initrd is not None and layout.initrd is not None:
        memory.write(layout.initrd, initrd)
    memory.write(layout.dtb, dtb)
    vcpus[0].set_one_reg(CORE_REG_PC, layout.kernel)
    vcpus[0].set_one_reg(core_reg_x(0), layout.dtb)
    return layout
