"""The guest's device tree: made with the fdt package, read back by its parser and dtc."""

from __future__ import annotations

import shutil
import subprocess

import fdt
import pytest

from tagvisor.vmm.linux.devicetree import MachineShape, device_tree
from tagvisor.vmm.linux.platform import UART_BASE, gic_layout

RAM = 0x4000_0000


def shape(
    vcpus: int = 2, initrd: tuple[int, int] | None = (0x4300_0000, 0x4310_0000)
) -> MachineShape:
    return MachineShape(
        ram_base=RAM,
        ram_size=256 << 20,
        mpidrs=tuple(range(vcpus)),
        gic=gic_layout(vcpus),
        uart_base=UART_BASE,
        bootargs=b"console=ttyAMA0 panic=-1 rdinit=/init",
        initrd=initrd,
    )


def words(tree: object, name: str, path: str) -> list[int]:
    return list(tree.get_property(name, path).data)  # type: ignore[attr-defined]


def test_the_blob_round_trips_through_the_fdt_parser() -> None:
    """Scenario: a 2-VCPU machine with 256 MiB and an initrd; parse the blob back and
    find memory, both CPUs on PSCI, the GICv3 frames, four timer PPIs, the PL011 with
    its clocks and /chosen with the command line and initrd range."""
    tree = fdt.parse_dtb(device_tree(shape()))
    assert words(tree, "reg", "/memory@40000000") == [0, RAM, 0, 256 << 20]
    for cpu in (0, 1):
        assert tree.get_property("enable-method", f"/cpus/cpu@{cpu}").value == "psci"
    assert tree.get_property("method", "/psci").value == "hvc"
    gic = gic_layout(2)
    assert words(tree, "reg", "/intc@8000000") == [
        0, gic.dist_base, 0, gic.dist_size, 0, gic.redist_base, 0, 2 * 0x20000,
    ]  # fmt: skip
    assert words(tree, "interrupts", "/timer")[1::3] == [13, 14, 11, 10]
    uart = f"/pl011@{UART_BASE:x}"
    assert list(tree.get_property("clock-names", uart).data) == ["uartclk", "apb_pclk"]
    assert words(tree, "interrupts", uart) == [0, 1, 4]
    chosen = "/chosen"
    assert tree.get_property("bootargs", chosen).value.startswith("console=ttyAMA0")
    assert tree.get_property("stdout-path", chosen).value == uart
    assert words(tree, "linux,initrd-start", chosen) == [0, 0x4300_0000]
    assert words(tree, "linux,initrd-end", chosen) == [0, 0x4310_0000]


def test_without_an_initrd_chosen_names_none() -> None:
    """Scenario: no initrd: /chosen has no linux,initrd-* properties."""
    tree = fdt.parse_dtb(device_tree(shape(initrd=None)))
    assert not tree.exist_property("linux,initrd-start", "/chosen")


@pytest.mark.skipif(shutil.which("dtc") is None, reason="needs dtc (device-tree-compiler)")
def test_dtc_decompiles_the_blob_without_a_warning() -> None:
    """Scenario: ``dtc -I dtb -O dts`` of a 4-VCPU machine's blob: exit 0, nothing on
    stderr (dtc's checks cover phandles, unit addresses and reg sizes)."""
    done = subprocess.run(
        ["dtc", "-I", "dtb", "-O", "dts", "-o", "-"],
        input=device_tree(shape(vcpus=4)),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr.decode() == ""
    assert b'compatible = "arm,gic-v3";' in done.stdout
