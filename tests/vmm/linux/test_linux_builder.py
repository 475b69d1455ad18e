"""MachineBuilder.linux: the GIC after the VCPUs, the files in RAM, VCPU 0 at the kernel.

A real KVM is needed to run Linux; these tests build on the model, whose VM is given a
recording GIC (its own refuses, as the last test shows) so that the order of work and
what lands in guest memory can be checked anywhere.
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path
from typing import Any

import fdt
import pytest

from tagvisor.kvm.api import Device
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.vm import ModelVm
from tagvisor.kvm.uapi import (
    CORE_REG_PC,
    KVM_DEV_ARM_VGIC_GRP_ADDR,
    KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_VGIC_V3_ADDR_TYPE_DIST,
    KVM_VGIC_V3_ADDR_TYPE_REDIST,
    Cap,
    arm_spi_irq,
    core_reg_x,
)
from tagvisor.vmm import MachineBuilder
from tagvisor.vmm.devices.amba_pl011 import (
    CR_RXE,
    CR_UARTEN,
    FR_RXFE,
    INT_RT,
    INT_TX,
    UARTCR,
    UARTDR,
    UARTFR,
    UARTIMSC,
    ConsoleInputError,
)
from tagvisor.vmm.linux.platform import UART_BASE
from tagvisor.vmm.loader import ImageError
from tagvisor.vmm.machine import MachineError
from tests.vmm.linux.images import cpio_initrd, image

RAM = 0x4000_0000


class RecordingGic(Device):
    """Records every attribute written, and reads back the last value written."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self.values: dict[tuple[int, int], bytes] = {}

    def set_device_attr(self, group: int, attr: int, value: bytes = b"") -> None:
        self.log.append(("attr", group, attr, value))
        self.values[group, attr] = value

    def get_device_attr(self, group: int, attr: int, size: int = 8) -> bytes:
        return self.values.get((group, attr), bytes(size))[:size].ljust(size, b"\0")


class GicKvm(ModelKvm):
    """The model with KVM_CAP_IRQCHIP and a GIC that records what it is told."""

    def check_extension(self, cap: int) -> int:
        return 1 if cap == Cap.IRQCHIP else super().check_extension(cap)


@pytest.fixture
def gic_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    log: list[tuple[Any, ...]] = []

    def create_device(vm: ModelVm, device_type: int, *, test: bool = False) -> RecordingGic:
        log.append(("create", device_type, len(vm.vcpus)))
        return RecordingGic(log)

    def irq_line(vm: ModelVm, irq: int, level: int) -> None:
        log.append(("irq", irq, level))

    monkeypatch.setattr(ModelVm, "create_device", create_device)
    monkeypatch.setattr(ModelVm, "irq_line", irq_line)
    return log


def files(tmp_path: Path) -> tuple[Path, Path]:
    kernel, initrd = tmp_path / "Image", tmp_path / "initrd"
    kernel.write_bytes(image(text_offset=0x80000, image_size=4 << 20))
    initrd.write_bytes(cpio_initrd())
    return kernel, initrd


def test_a_linux_machine_is_built_in_the_order_kvm_requires(
    tmp_path: Path, gic_log: list[tuple[Any, ...]]
) -> None:
    """Scenario: 2 VCPUs, 64 MiB, a kernel and an initrd. The GICv3 is created after
    both VCPUs, placed, sized and initialised last; the kernel and initrd are in RAM,
    PC is the kernel's first byte and x0 a device tree naming the initrd's range."""
    kernel, initrd = files(tmp_path)
    machine = (
        MachineBuilder(GicKvm(host_memory=256 << 20))
        .memory(64 << 20)
        .vcpus(2)
        .linux(kernel, initrd, "console=ttyAMA0 rdinit=/init")
        .build()
    )
    assert gic_log[0] == ("create", KVM_DEV_TYPE_ARM_VGIC_V3, 2)
    attrs = [entry[1:3] for entry in gic_log[1:]]
    assert attrs == [
        (KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST),
        (KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_REDIST),
        (KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0),
        (KVM_DEV_ARM_VGIC_GRP_CTRL, 0),
    ]
    pc, x0 = machine.vcpus[0].get_one_reg(CORE_REG_PC), machine.vcpus[0].get_one_reg(core_reg_x(0))
    assert pc == RAM + 0x80000
    assert machine.memory.read(pc, 64) == kernel.read_bytes()[:64]
    (size,) = struct.unpack(">I", machine.memory.read(x0 + 4, 4))  # the FDT header's totalsize
    tree = fdt.parse_dtb(machine.memory.read(x0, size))
    start = tree.get_property("linux,initrd-start", "/chosen").data[1]
    assert machine.memory.read(start, 6) == b"070701"
    assert tree.get_property("bootargs", "/chosen").value == "console=ttyAMA0 rdinit=/init"
    assert machine.irqchip is not None


def test_the_console_raises_its_spi_through_kvm_irq_line(
    tmp_path: Path, gic_log: list[tuple[Any, ...]]
) -> None:
    """Scenario: the guest unmasks TXIM and writes a byte to the PL011: KVM_IRQ_LINE
    asserts SPI 1; masking TXIM again lowers it."""
    kernel, _ = files(tmp_path)
    machine = MachineBuilder(GicKvm(host_memory=256 << 20)).memory(64 << 20).linux(kernel).build()
    machine.bus.write(UART_BASE + UARTDR, b"x")
    machine.bus.write(UART_BASE + UARTIMSC, INT_TX.to_bytes(4, "little"))
    machine.bus.write(UART_BASE + UARTIMSC, bytes(4))
    assert [e for e in gic_log if e[0] == "irq"] == [
        ("irq", arm_spi_irq(1), 1),
        ("irq", arm_spi_irq(1), 0),
    ]


def test_a_bad_kernel_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    """Scenario: a gzip'd kernel and a kernel with a non-initramfs initrd."""
    kernel, _ = files(tmp_path)
    gz = tmp_path / "vmlinuz.gz"
    gz.write_bytes(b"\x1f\x8b\x08" + bytes(100))
    with pytest.raises(ImageError, match="gzip"):
        MachineBuilder(GicKvm(host_memory=64 << 20)).linux(gz)
    with pytest.raises(ImageError, match="not an initramfs"):
        MachineBuilder(GicKvm(host_memory=64 << 20)).linux(kernel, kernel)


def test_the_model_refuses_a_linux_guest_at_once_saying_what_it_lacks(tmp_path: Path) -> None:
    """Scenario: build a Linux machine on the plain model (KVM_CAP_IRQCHIP 0): a
    MachineError names the GIC, the timer and FP/SIMD, before any VM exists."""
    kvm = ModelKvm(host_memory=64 << 20)
    kernel, _ = files(tmp_path)
    with pytest.raises(MachineError, match="no interrupt controller, no arch timer and no FP"):
        MachineBuilder(kvm).memory(32 << 20).linux(kernel).build()


def test_a_kvm_whose_gic_creation_fails_names_the_step(tmp_path: Path) -> None:
    """Scenario: a KVM that reports an irqchip but has no VGICv3 device (the model's
    ENODEV): the error names KVM_CREATE_DEVICE."""
    kernel, _ = files(tmp_path)
    with pytest.raises(MachineError, match=r"KVM_CREATE_DEVICE\(KVM_DEV_TYPE_ARM_VGIC_V3\)"):
        MachineBuilder(GicKvm(host_memory=128 << 20)).memory(32 << 20).linux(kernel).build()


def test_console_input_reaches_the_guest_through_uartdr_and_spi_1(
    tmp_path: Path, gic_log: list[tuple[Any, ...]]
) -> None:
    """Scenario: a Linux machine's driver has enabled the receiver and RTIM; a second
    thread sends 2 KiB through Machine.console_input in 64-byte pieces while this one
    reads UARTDR until RXFE, as the driver's interrupt handler does: every byte
    arrives once and in order, and SPI 1 was raised through KVM_IRQ_LINE."""
    kernel, _ = files(tmp_path)
    machine = MachineBuilder(GicKvm(host_memory=256 << 20)).memory(64 << 20).linux(kernel).build()
    machine.bus.write(UART_BASE + UARTCR, (CR_UARTEN | CR_RXE).to_bytes(4, "little"))
    machine.bus.write(UART_BASE + UARTIMSC, INT_RT.to_bytes(4, "little"))
    data = bytes(range(256)) * 8

    def send() -> None:
        for start in range(0, len(data), 64):
            machine.console_input(data[start : start + 64])

    sender = threading.Thread(target=send)
    sender.start()
    got = bytearray()
    while len(got) < len(data):
        if not int.from_bytes(machine.bus.read(UART_BASE + UARTFR, 4), "little") & FR_RXFE:
            got += machine.bus.read(UART_BASE + UARTDR, 4)[:1]
    sender.join()
    assert bytes(got) == data
    assert ("irq", arm_spi_irq(1), 1) in gic_log


def test_a_bare_metal_machine_refuses_console_input() -> None:
    """Scenario: a bare-metal guest's machine has the polled console, which has no
    receiver: console_input says so rather than dropping the bytes."""

    def guest(ctx: Any) -> Any:
        yield from ()

    machine = MachineBuilder(ModelKvm(64 << 20)).memory(16 << 20).python_guest(guest).build()
    with pytest.raises(ConsoleInputError, match="takes no input"):
        machine.console_input(b"verify\n")
