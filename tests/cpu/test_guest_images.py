"""The prebuilt guests of guests/ (docs/guests.md) booted on the model VMM with an
A64Core, and their console transcripts held against QEMU's ``virt`` board."""

from __future__ import annotations

import pytest

from tagvisor.arch import TagCheckMode
from tagvisor.cpu import A64Core
from tagvisor.kvm.model import ModelKvm, ModelVcpu
from tagvisor.vmm.builder import MachineBuilder
from tests.support.guests import BootConfig, prebuilt
from tests.support.qemu_system import run_guest

TCF_NAMES = {
    TagCheckMode.NONE: "none",
    TagCheckMode.SYNC: "sync",
    TagCheckMode.ASYNC: "async",
    TagCheckMode.ASYMM: "asymm",
}
#: bench-int's checksum for N = 1000 (docs/benchmarks.md).
BENCH_INT_1000 = 0x17F4_D4E3_BC58_B1E1


def run_on_tagvisor(name: str, config: BootConfig, *, mte_level: int = 3) -> tuple[int, str]:
    """(exit status, console transcript) of guest ``name`` on the model with A64Core.

    ``mte_level`` 3 advertises FEAT_MTE3 as QEMU's ``-cpu max`` does, so the guests
    choose the same tag check modes under both.
    """
    console: list[bytes] = []
    machine = (
        MachineBuilder(ModelKvm(host_memory=256 << 20, host_mte_level=mte_level))
        .memory(config.ram_size)
        .mte(config.mte, tcf=TCF_NAMES[config.mode])
        .argument(config.arg, irg_seed=config.seed)
        .image(prebuilt(name))
        .console(console.append)
        .build()
    )
    for vcpu in machine.vcpus:
        assert isinstance(vcpu, ModelVcpu)
        vcpu.attach(A64Core())
    result = machine.run()
    assert result.exit_status is not None, result
    return result.exit_status, b"".join(console).decode()


def ucall_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("mte-smoke", BootConfig()),
        ("heap", BootConfig(mode=TagCheckMode.ASYNC)),
        ("churn", BootConfig(arg=2)),
        ("bench-checked", BootConfig(arg=1000)),
    ],
)
def test_prebuilt_guests_power_off_cleanly(name: str, config: BootConfig) -> None:
    """Scenario: each guest boots through the runtime (MMU on, vectors, MTE set-up,
    console and ucalls over MMIO) and powers off with status 0."""
    status, text = run_on_tagvisor(name, config, mte_level=2)
    assert status == 0, text


def test_fill_reports_its_region_then_idles_in_wfi() -> None:
    """Scenario: fill (1 MiB, churn rate 0) tags and fills its region, reports
    FILL_DONE, then idles in WFI with interrupts masked: KVM_RUN keeps returning INTR
    (the core sleeps briefly on each WFI) and the machine is still running."""
    console: list[bytes] = []
    machine = (
        MachineBuilder(ModelKvm(host_memory=256 << 20))
        .argument(1)
        .image(prebuilt("fill"))
        .console(console.append)
        .build()
    )
    for vcpu in machine.vcpus:
        assert isinstance(vcpu, ModelVcpu)
        vcpu.attach(A64Core())
    result = machine.run(max_exits=400)
    assert "ucall 1 501 40200000 100000" in b"".join(console).decode()
    assert result.system_event is None
    assert result.by_reason["INTR"] > 50


def test_bench_int_checksum_matches_the_documented_value() -> None:
    """Scenario: bench-int with N = 1000 reports the checksum docs/benchmarks.md gives."""
    status, text = run_on_tagvisor("bench-int", BootConfig(arg=1000))
    assert status == 0
    assert f"ucall 1 400 3e8 8 {BENCH_INT_1000:x}" in text


@pytest.mark.oracle
@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("mte-smoke", BootConfig()),
        ("heap", BootConfig(mode=TagCheckMode.SYNC)),
        ("heap", BootConfig(mode=TagCheckMode.ASYNC)),
        ("heap", BootConfig(mode=TagCheckMode.ASYMM)),
        ("heap", BootConfig(mode=TagCheckMode.NONE, seed=0x1234)),
        ("churn", BootConfig(arg=3)),
    ],
)
def test_transcripts_equal_qemu_system(name: str, config: BootConfig) -> None:
    """Scenario: the same image and boot block under qemu-system-aarch64 -M virt,mte=on
    -cpu max and on tagvisor's A64 core: every console line (reports of IRG tags, tag
    store results, fault ESR/FAR/TFSR, checksums) is the same."""
    expected = run_guest(prebuilt(name), config).transcript.text
    status, text = run_on_tagvisor(name, config)
    assert status == 0
    assert ucall_lines(text) == ucall_lines(expected)
