"""The flattened device tree a Linux guest boots with, made from the machine's shape.

Written with the ``fdt`` package (pure Python, so it also runs inside the testbed's
arm64 image, where a C extension such as pylibfdt would need building). The nodes
follow the bindings Linux reads and the layout QEMU's virt board gives a KVM guest
(hw/arm/virt.c): memory, cpus with ``enable-method = "psci"``, psci with ``method =
"hvc"`` (KVM implements PSCI itself, KVM_ARM_VCPU_PSCI_0_2), the GICv3
(Documentation/devicetree/bindings/interrupt-controller/arm,gic-v3.yaml), the arch
timer's four PPIs (arm,arch_timer.yaml), a PL011 with the ``apb_pclk`` clock the
AMBA bus needs to read its IDs (drivers/amba/bus.c), and /chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import fdt

from tagvisor.vmm.linux.layout import DTB_MAX, LayoutError
from tagvisor.vmm.linux.platform import (
    TIMER_PPIS,
    UART_CLOCK_HZ,
    UART_SIZE,
    UART_SPI,
    GicLayout,
)

#: include/dt-bindings/interrupt-controller/arm-gic.h and irq.h.
GIC_SPI: Final = 0
GIC_PPI: Final = 1
IRQ_TYPE_LEVEL_HIGH: Final = 4
GIC_PHANDLE: Final = 1
CLOCK_PHANDLE: Final = 2
DTB_VERSION: Final = 17


@dataclass(frozen=True)
class MachineShape:
    """What the device tree describes."""

    ram_base: int
    ram_size: int
    #: The MPIDR affinity of each VCPU (KVM's default: the VCPU index for up to 16).
    mpidrs: tuple[int, ...]
    gic: GicLayout
    uart_base: int
    bootargs: bytes
    initrd: tuple[int, int] | None = None  # [start, end)


def _cells(value: int) -> list[int]:
    """A 64-bit number as two 32-bit cells (#address-cells = #size-cells = 2)."""
    return [value >> 32, value & 0xFFFF_FFFF]


def _set(tree: Any, path: str, props: dict[str, Any]) -> None:
    for name, value in props.items():
        tree.set_property(name, value, path=path)


def _root_and_memory(tree: Any, shape: MachineShape) -> None:
    _set(
        tree,
        "/",
        {
            "compatible": "linux,dummy-virt",
            "model": "tagvisor",
            "#address-cells": 2,
            "#size-cells": 2,
            "interrupt-parent": GIC_PHANDLE,
        },
    )
    _set(
        tree,
        f"/memory@{shape.ram_base:x}",
        {"device_type": "memory", "reg": _cells(shape.ram_base) + _cells(shape.ram_size)},
    )


def _cpus_and_psci(tree: Any, shape: MachineShape) -> None:
    _set(tree, "/cpus", {"#address-cells": 1, "#size-cells": 0})
    for mpidr in shape.mpidrs:
        _set(
            tree,
            f"/cpus/cpu@{mpidr:x}",
            {
                "device_type": "cpu",
                "compatible": "arm,armv8",
                "reg": mpidr,
                "enable-method": "psci",
            },
        )
    # PSCI 0.2 and later need no function ids (arm,psci.yaml); KVM offers 1.x.
    _set(tree, "/psci", {"compatible": ["arm,psci-1.0", "arm,psci-0.2"], "method": "hvc"})


def _gic_and_timer(tree: Any, gic: GicLayout) -> None:
    path = f"/intc@{gic.dist_base:x}"
    _set(
        tree,
        path,
        {
            "compatible": "arm,gic-v3",
            "#interrupt-cells": 3,
            "interrupt-controller": None,
            "#address-cells": 2,
            "#size-cells": 2,
            "ranges": None,
            "reg": _cells(gic.dist_base)
            + _cells(gic.dist_size)
            + _cells(gic.redist_base)
            + _cells(gic.redist_size),
            "phandle": GIC_PHANDLE,
        },
    )
    interrupts = [cell for ppi in TIMER_PPIS for cell in (GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH)]
    _set(
        tree,
        "/timer",
        {
            "compatible": ["arm,armv8-timer", "arm,armv7-timer"],
            "interrupts": interrupts,
            "always-on": None,
        },
    )


def _uart(tree: Any, base: int) -> str:
    _set(
        tree,
        "/apb-pclk",
        {
            "compatible": "fixed-clock",
            "#clock-cells": 0,
            "clock-frequency": UART_CLOCK_HZ,
            "clock-output-names": "clk24mhz",
            "phandle": CLOCK_PHANDLE,
        },
    )
    path = f"/pl011@{base:x}"
    _set(
        tree,
        path,
        {
            "compatible": ["arm,pl011", "arm,primecell"],
            "reg": _cells(base) + _cells(UART_SIZE),
            "interrupts": [GIC_SPI, UART_SPI, IRQ_TYPE_LEVEL_HIGH],
            "clock-names": ["uartclk", "apb_pclk"],
            "clocks": [CLOCK_PHANDLE, CLOCK_PHANDLE],
        },
    )
    return path


def _chosen(tree: Any, shape: MachineShape, stdout: str) -> None:
    props: dict[str, Any] = {"bootargs": shape.bootargs.decode(), "stdout-path": stdout}
    if shape.initrd is not None:
        start, end = shape.initrd
        props["linux,initrd-start"] = _cells(start)
        props["linux,initrd-end"] = _cells(end)
    _set(tree, "/chosen", props)


def device_tree(shape: MachineShape) -> bytes:
    """The DTB for ``shape`` (version 17), or LayoutError past booting.rst's 2 MiB."""
    tree = fdt.FDT()
    _root_and_memory(tree, shape)
    _cpus_and_psci(tree, shape)
    _gic_and_timer(tree, shape.gic)
    stdout = _uart(tree, shape.uart_base)
    _chosen(tree, shape, stdout)
    blob: bytes = tree.to_dtb(version=DTB_VERSION)
    if len(blob) > DTB_MAX:
        raise LayoutError(f"the device tree is {len(blob)} bytes; booting.rst allows 2 MiB")
    return blob
