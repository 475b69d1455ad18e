"""Question 4: how the VMM reaches tags - five designs on a migration and on DMA."""

from __future__ import annotations

import time
from typing import Any, Final

import numpy as np

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.dirtytags import PROPOSAL_DIRTY_LOG_TAGS
from tagvisor.kvm.model.guest import GuestContext, GuestProgram, mmio_write
from tagvisor.kvm.model.workloads import BATCH_PAGES, churn, fill_tagged
from tagvisor.lab import designs
from tagvisor.lab.compare import differing_pages
from tagvisor.lab.designs import COPY_TAGS, DESIGNS, NAIVE, Installed
from tagvisor.lab.experiment import Chart, Experiment, Outcome, ProgressFn, Scale, Table, ratio
from tagvisor.lab.loopback import migrate
from tagvisor.lab.workloads import chain
from tagvisor.vmm.builder import DMA_BASE, RAM_BASE, MachineBuilder
from tagvisor.vmm.devices import dma
from tagvisor.vmm.machine import Machine

MiB: Final = 1 << 20
CASES: Final = ("idle", "churning")
HEADROOM: Final = 256 * MiB
#: The DMA workload: copies of this many bytes, with tags, between two buffers.
DMA_LENGTH: Final = 64 << 10
DMA_SRC: Final = RAM_BASE + 16 * MiB
DMA_DST: Final = RAM_BASE + 32 * MiB
DMA_RAM: Final = 64 * MiB


def host(ram: int) -> ModelKvm:
    """A model host with room for ``ram`` and the lab's proposal available."""
    return ModelKvm(ram + HEADROOM, proposals=frozenset({PROPOSAL_DIRTY_LOG_TAGS}))


def build(design: str, ram: int, program: GuestProgram) -> tuple[Machine, ModelKvm, Installed]:
    """A paused MTE machine over memfd RAM (two mappings need a shareable file),
    with ``design`` installed as its way to reach tags."""
    kvm = host(ram)
    machine = (
        MachineBuilder(kvm)
        .memory(ram, backing="memfd", vmm_prot_mte=designs.needs_prot_mte(design))
        .tag_access(designs.BUILD_WAY.get(design, COPY_TAGS))
        .python_guest(program)
        .build()
    )
    return machine, kvm, designs.install(machine, kvm, design)


def _cpu() -> float:
    return time.process_time()


def migration_case(design: str, case: str, ram: int, tagged: int) -> dict[str, Any]:
    """Fill ``tagged`` bytes, then migrate (the guest paused, or churning the filled
    range meanwhile); every figure of the design, and the pages that arrived wrong."""
    program = chain(
        fill_tagged(RAM_BASE, tagged, seed=1), churn(RAM_BASE, tagged, rounds=0, seed=2)
    )
    machine, kvm, installed = build(design, ram, program)
    machine.run(max_exits=-(-tagged // (BATCH_PAGES * PAGE_SIZE)))  # the fill, then pause
    counters = installed.counters
    counters.ioctls.clear()
    counters.kernel_tag_bytes = 0
    cpu = _cpu()
    destination = host(ram)
    moved = migrate(machine, destination, run_guest=case == "churning")
    cpu = _cpu() - cpu
    wrong = differing_pages(
        machine, kvm, moved.destination, destination, RAM_BASE, ram // PAGE_SIZE
    )
    bounce = getattr(installed.access, "_buffer_size", 0)
    return {
        "syscalls": counters.syscalls,
        "ioctls": dict(counters.ioctls),
        "kernel_tag_bytes": counters.kernel_tag_bytes,
        "tag_instructions": counters.tag_instructions,
        "wire_bytes": moved.report.wire_bytes,
        "cpu_seconds": cpu,
        "total_seconds": moved.report.total_seconds,
        "downtime_seconds": moved.report.downtime_seconds,
        "overhead_bytes": counters.overhead_bytes + bounce,
        "vmm_tag_faults": counters.vmm_tag_faults,
        "pages_sent": moved.report.pages_sent,
        "iterations": moved.report.iterations,
        "pages_wrong_at_destination": wrong,
    }


def dma_guest(copies: int) -> GuestProgram:
    """Tag and fill a source buffer, then have the DMA engine copy it with tags
    ``copies`` times, reading the engine's status after each."""

    def program(ctx: GuestContext) -> Any:
        rng = np.random.default_rng(3)
        ctx.stage2.write(DMA_SRC, rng.bytes(DMA_LENGTH))
        ctx.stage2.store_tags(DMA_SRC, rng.integers(1, 16, DMA_LENGTH // 16, dtype=np.uint8))
        for register, value in ((dma.SRC, DMA_SRC), (dma.DST, DMA_DST), (dma.LEN, DMA_LENGTH)):
            yield mmio_write(DMA_BASE + register, value)
        for _ in range(copies):
            yield mmio_write(DMA_BASE + dma.CMD, dma.COPY_WITH_TAGS)

    return program


def dma_case(design: str, copies: int) -> dict[str, Any]:
    """``copies`` DMA copies with tags through ``design``: costs, and how many failed."""
    machine, _, installed = build(design, DMA_RAM, dma_guest(copies))
    failures = 0
    engine = machine.dma
    original = engine.mmio_write

    def counted(offset: int, data: bytes) -> None:
        nonlocal failures
        original(offset, data)
        failures += offset == dma.CMD and engine.status != 0

    engine.mmio_write = counted  # type: ignore[method-assign]
    started = time.perf_counter()
    machine.run()
    seconds = time.perf_counter() - started
    counters = installed.counters
    return {
        "syscalls": counters.ioctls["KVM_ARM_MTE_COPY_TAGS"],
        "tag_instructions": counters.tag_instructions,
        "tco_writes": counters.tco_writes,
        "vmm_tag_faults": counters.vmm_tag_faults,
        "failed_copies": failures,
        "last_error": engine.last_error,
        "seconds": seconds,
    }


def _row(design: str, case: str, f: dict[str, Any], base: dict[str, Any]) -> list[Any]:
    return [
        design,
        case,
        f"{f['syscalls']} ({ratio(f['syscalls'], base['syscalls']):.2f}x)",
        round(f["kernel_tag_bytes"] / MiB, 2),
        f["tag_instructions"],
        round(ratio(f["cpu_seconds"], base["cpu_seconds"]), 2),
        round(ratio(f["total_seconds"], base["total_seconds"]), 2),
        round(ratio(f["downtime_seconds"], base["downtime_seconds"]), 2),
        round(f["overhead_bytes"] / MiB, 2),
        f["vmm_tag_faults"],
        f["pages_wrong_at_destination"],
    ]


def _dma_row(design: str, f: dict[str, Any], base: dict[str, Any]) -> list[Any]:
    return [
        design,
        "dma",
        f"{f['syscalls']} ({ratio(f['syscalls'], base['syscalls']):.2f}x)",
        "",
        f["tag_instructions"],
        "",
        round(ratio(f["seconds"], base["seconds"]), 2),
        "",
        "",
        f["vmm_tag_faults"],
        f"{f['failed_copies']} failed",
    ]


COLUMNS: Final = [
    "design",
    "case",
    "syscalls (x COPY_TAGS)",
    "kernel tag MiB",
    "VMM LDG/STG",
    "CPU x",
    "total x",
    "downtime x",
    "overhead MiB",
    "VMM tag faults",
    "wrong pages",
]


def _charts(mig: dict[str, dict[str, dict[str, Any]]], dmas: dict[str, Any]) -> list[Chart]:
    def per_case(key: str) -> dict[str, dict[str, float]]:
        return {
            case: {d: ratio(mig[case][d][key], mig[case][COPY_TAGS][key]) for d in DESIGNS}
            for case in CASES
        }

    return [
        Chart("syscalls per migration", "x COPY_TAGS", per_case("syscalls")),
        Chart("total time per migration", "x COPY_TAGS", per_case("total_seconds")),
        Chart("downtime", "x COPY_TAGS", per_case("downtime_seconds")),
        Chart(
            "memory beyond guest RAM",
            "MiB",
            {"overhead": {d: mig["idle"][d]["overhead_bytes"] / MiB for d in DESIGNS}},
        ),
        Chart(
            "DMA with tags",
            "count",
            {
                "ioctls": {d: float(f["syscalls"]) for d, f in dmas.items()},
                "failed copies": {d: float(f["failed_copies"]) for d, f in dmas.items()},
                "VMM tag faults": {d: float(f["vmm_tag_faults"]) for d, f in dmas.items()},
            },
        ),
    ]


def _conclusion(mig: dict[str, dict[str, dict[str, Any]]], dmas: dict[str, Any]) -> str:
    churning = mig["churning"]
    base = churning[COPY_TAGS]
    dlt, two = churning[designs.DIRTY_LOG_TAGS], churning[designs.TWO_MAPPINGS]
    wrong = max(f["pages_wrong_at_destination"] for c in CASES for f in mig[c].values())
    ldg = churning[designs.TCO]["tag_instructions"]
    return (
        f"On the churning migration the dirty log that returns tags made "
        f"{ratio(dlt['syscalls'], base['syscalls']):.2f}x COPY_TAGS's syscalls and took "
        f"{ratio(dlt['total_seconds'], base['total_seconds']):.2f}x its time, for a "
        f"{dlt['overhead_bytes'] / MiB:.1f} MiB return buffer (slot size / 32); two mappings "
        f"made {ratio(two['syscalls'], base['syscalls']):.2f}x the syscalls for "
        f"{two['overhead_bytes'] / MiB:.2f} MiB of page tables; the PROT_MTE ways made no "
        f"tag syscalls but {ldg} LDG/STG from EL0 (LDGM is EL1 only). The most pages any "
        f"design delivered wrong was {wrong}"
        + (": the dirty log resends what changed" if not wrong else ": a design lost pages")
        + ". On DMA, "
        f"the dirty-log design failed {dmas[designs.DIRTY_LOG_TAGS]['failed_copies']} of "
        f"{dmas[COPY_TAGS]['copies']} copies (it cannot write tags) and the naive PROT_MTE "
        f"way took {dmas[NAIVE]['vmm_tag_faults']} tag faults; COPY_TAGS needed "
        f"{ratio(dmas[COPY_TAGS]['syscalls'], dmas[COPY_TAGS]['copies']):.0f} ioctls a copy."
    )


def run(scale: Scale, progress: ProgressFn) -> Outcome:
    """Question 4: each design migrating an idle and a churning guest, and serving DMA with tags
    (the naive PROT_MTE way too): the costs of each, against ``copy-tags``."""
    ram = scale.pick(256 * MiB, 4096 * MiB)
    tagged = scale.pick(64 * MiB, 1024 * MiB)
    copies = scale.pick(50, 500)
    steps = len(CASES) * len(DESIGNS) + len(DESIGNS) + 1
    done = 0
    mig: dict[str, dict[str, dict[str, Any]]] = {case: {} for case in CASES}
    for case in CASES:
        for design in DESIGNS:
            mig[case][design] = migration_case(design, case, ram, tagged)
            done += 1
            progress(done / steps)
    dmas: dict[str, Any] = {}
    for design in (*DESIGNS, NAIVE):
        dmas[design] = {**dma_case(design, copies), "copies": copies}
        done += 1
        progress(done / steps)
    table = Table(list(COLUMNS))
    for case in CASES:
        for design in DESIGNS:
            table.rows.append(_row(design, case, mig[case][design], mig[case][COPY_TAGS]))
    for design, figures in dmas.items():
        table.rows.append(_dma_row(design, figures, dmas[COPY_TAGS]))
    return Outcome(
        name="tag-access",
        question=4,
        figures={"guest_ram": ram, "tagged": tagged, "migration": mig, "dma": dmas},
        table=table,
        charts=_charts(mig, dmas),
        conclusion=_conclusion(mig, dmas),
    )


EXPERIMENT: Final = Experiment(
    "tag-access",
    4,
    "five ways to reach tags on a migration (idle, churning) and on DMA",
    run,
)
