"""Question 3: KVM promoting guest memory against the VMM opting in with PROT_MTE.

Promotion (what Linux does): at a page's first stage-2 fault KVM sets PG_mte_tagged and
clears stale tags, so from then on the host keeps the page's tags wherever the page
goes (swap, migration, CoW). Opting in (the reviewer's suggestion): KVM would promote
only what the VMM mapped PROT_MTE, modelled by a lab profile, ``opt-in``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import numpy as np

from tagvisor.arch.constants import GRANULES_PER_PAGE, PAGE_SIZE
from tagvisor.host.migrate import migrate_pages
from tagvisor.kvm.model import ModelKvm, ModelVm
from tagvisor.kvm.model.profiles import KernelProfile, Linux613
from tagvisor.kvm.model.workloads import fill_tagged, touch_pages
from tagvisor.lab.compare import truth
from tagvisor.lab.designs import NAIVE
from tagvisor.lab.experiment import Chart, Experiment, Outcome, ProgressFn, Scale, Table, ratio
from tagvisor.lab.q4_tag_access import dma_case
from tagvisor.vmm.builder import RAM_BASE, MachineBuilder
from tagvisor.vmm.machine import Machine

MiB: Final = 1 << 20
GiB: Final = 1 << 30
HEADROOM: Final = 256 * MiB


class OptIn(Linux613):
    """The opt-in design: KVM initialises and keeps tags only of PROT_MTE memory."""

    name = "opt-in"
    description = "KVM promotes only memory the VMM mapped PROT_MTE (never Linux)"
    promotes_only_prot_mte = True


def _machine(
    size: int, *, mte: bool = True, profile: KernelProfile | None = None, prot_mte: bool = False
) -> tuple[Machine, ModelKvm]:
    # Twice the RAM: a CoW break or a page migration holds old and new frames at once.
    kvm = ModelKvm(2 * size + HEADROOM, profile=profile or Linux613(), swap_pages=size // PAGE_SIZE)
    machine = (
        MachineBuilder(kvm)
        .memory(size, vmm_prot_mte=prot_mte)
        .mte(mte)
        .python_guest(fill_tagged(RAM_BASE, size, seed=4))
        .build()
    )
    return machine, kvm


def first_touch(size: int, *, mte: bool) -> dict[str, float]:
    """A guest writing each page of ``size`` bytes once, through KVM_RUN."""
    kvm = ModelKvm(size + HEADROOM)
    machine = (
        MachineBuilder(kvm)
        .memory(size)
        .mte(mte)
        .python_guest(touch_pages(RAM_BASE, size // PAGE_SIZE))
        .build()
    )
    started = time.perf_counter()
    machine.run()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "pages_initialised": int(kvm.frames.tag_inits.sum())}


def _stage2(machine: Machine) -> Any:
    assert isinstance(machine.vm, ModelVm)
    return machine.vm.stage2


def _state(machine: Machine, kvm: ModelKvm, size: int, mte: bool) -> tuple[Any, Any]:
    data = machine.memory.view(RAM_BASE, size).copy()
    if not mte:
        return data, None
    return data, truth(machine, kvm).read_tags(RAM_BASE, size // 16)


def _wrong(before: tuple[Any, Any], after: tuple[Any, Any]) -> int:
    """Pages whose data or tags changed."""
    pages = before[0].size // PAGE_SIZE
    bad = (before[0] != after[0]).reshape(pages, -1).any(axis=1)
    if before[1] is not None:
        bad |= (before[1] != after[1]).reshape(pages, -1).any(axis=1)
    return int(bad.sum())


def host_moves(size: int, *, mte: bool) -> dict[str, Any]:
    """Swap out and in, page migration and a CoW break of a filled guest: time of
    each, tag bytes swap kept, and pages whose data or tags did not survive."""
    machine, kvm = _machine(size, mte=mte)
    machine.run()
    stage2, process = _stage2(machine), kvm.process
    hva = machine.memory.regions[0].hva
    swap = process.swap
    assert swap is not None
    # The OS backs the swap device's arrays lazily: fault them in first, so neither
    # VM's swap time includes the model's own page faults.
    swap.data.fill(0)
    result: dict[str, Any] = {}
    steps: dict[str, Callable[[], object]] = {
        "swap": partial(swap.swap_out, process, hva, size),
        "page-migration": partial(migrate_pages, process, hva, size),
        "cow": partial(_share_frames, kvm, hva, size),
    }
    for name, move in steps.items():
        before = _state(machine, kvm, size, mte)
        started = time.perf_counter()
        move()
        if name == "swap":
            result["swap_tag_bytes"] = swap.tag_bytes_saved
        stage2.map_pages(RAM_BASE, size, write=name == "cow")  # the guest touches it all
        result[f"{name}_seconds"] = time.perf_counter() - started
        result[f"{name}_pages_wrong"] = _wrong(before, _state(machine, kvm, size, mte))
    return result


def _share_frames(kvm: ModelKvm, hva: int, size: int) -> None:
    """As fork does: a second reference to every frame, stage 2 write-protected
    (the MMU notifier), so the guest's next write copies the page."""
    pfns = kvm.process.fault_in(hva, size, write=False)
    kvm.frames.get(pfns)
    kvm.process.invalidate(hva, hva + size)


#: The three ways guest RAM can be set up for the hazards: (profile, VMM maps PROT_MTE).
SETUPS: Final = {
    "promotion (Linux)": (Linux613, False),
    "opt-in, PROT_MTE": (OptIn, True),
    "opt-in, forgotten": (OptIn, False),
}


def _stale_pages(profile: KernelProfile, prot_mte: bool, size: int) -> int:
    """Pages whose first guest look shows tags: a previous owner's, left in frames the
    allocator hands to the guest (tags are not cleared when a frame is freed)."""
    kvm = ModelKvm(size + HEADROOM, profile=profile, swap_pages=size // PAGE_SIZE)
    previous = kvm.user_memory.map_anonymous(size, mte=True)
    kvm.process.fault_in(previous, size, write=True)
    rng = np.random.default_rng(6)
    kvm.process.store_tags(previous, rng.integers(1, 16, size // 16, dtype=np.uint8))
    kvm.user_memory.unmap(previous, size)
    machine = (
        MachineBuilder(kvm)
        .memory(size, vmm_prot_mte=prot_mte)
        .python_guest(touch_pages(RAM_BASE, 0))
        .build()
    )
    tags = _stage2(machine).load_tags(RAM_BASE, size // 16).reshape(-1, GRANULES_PER_PAGE)
    return int(tags.any(axis=1).sum())


def _lost_on_swap(profile: KernelProfile, prot_mte: bool, size: int) -> int:
    """Pages whose guest-stored tags did not come back from swap."""
    machine, kvm = _machine(size, profile=profile, prot_mte=prot_mte)
    machine.run()
    stage2 = _stage2(machine)
    before = stage2.load_tags(RAM_BASE, size // 16).copy()
    assert kvm.process.swap is not None
    kvm.process.swap.swap_out(kvm.process, machine.memory.regions[0].hva, size)
    after = stage2.load_tags(RAM_BASE, size // 16)
    return int((before != after).reshape(-1, GRANULES_PER_PAGE).any(axis=1).sum())


def hazards(size: int, copies: int) -> dict[str, dict[str, int]]:
    """For each setup: stale tags the guest sees, tags lost on swap, and the VMM's own
    tag faults on DMA (a PROT_MTE mapping makes its plain accesses checked)."""
    naive_faults = dma_case(NAIVE, copies)["vmm_tag_faults"]
    return {
        name: {
            "stale_pages": _stale_pages(profile(), prot_mte, size),
            "pages_lost_on_swap": _lost_on_swap(profile(), prot_mte, size),
            "vmm_tag_faults_per_dma": (naive_faults // copies) if prot_mte else 0,
            "pages": size // PAGE_SIZE,
        }
        for name, (profile, prot_mte) in SETUPS.items()
    }


MOVES: Final = ("swap", "page-migration", "cow")


def _conclusion(touch: dict[str, Any], moves: dict[str, Any], risk: dict[str, Any]) -> str:
    mte, plain = moves["mte"], moves["plain"]
    forgot, opted = risk["opt-in, forgotten"], risk["opt-in, PROT_MTE"]
    pages = forgot["pages"]
    both = forgot["stale_pages"] and opted["vmm_tag_faults_per_dma"]
    verdict = "so opting in fails either way" if both else "so opting in is safe only here"
    return (
        f"First-touch promotion cost {touch['extra_seconds_per_gib']:.3f} s per GiB in the "
        f"model ({ratio(touch['mte']['seconds'], touch['plain']['seconds']):.2f}x a VM "
        f"without MTE). Swap kept {mte['swap_tag_bytes'] / max(1, touch['pages']):.0f} "
        f"bytes of tags per page; swap, page migration and CoW took "
        + ", ".join(f"{ratio(mte[m + '_seconds'], plain[m + '_seconds']):.2f}x" for m in MOVES)
        + " the time without MTE and lost "
        f"{sum(mte[m + '_pages_wrong'] for m in MOVES)} pages' tags. Opting in: memory "
        f"the VMM forgot to map PROT_MTE showed the guest "
        f"{forgot['stale_pages']} of {pages} pages with a previous owner's tags and lost "
        f"the tags of {forgot['pages_lost_on_swap']} of {pages} pages on swap; memory it did "
        f"map PROT_MTE made its own plain DMA accesses fault "
        f"{opted['vmm_tag_faults_per_dma']} time(s) per copy, {verdict}. Promotion: "
        f"{risk['promotion (Linux)']['stale_pages']} stale, "
        f"{risk['promotion (Linux)']['pages_lost_on_swap']} lost, "
        f"{risk['promotion (Linux)']['vmm_tag_faults_per_dma']} VMM faults."
    )


def run(scale: Scale, progress: ProgressFn) -> Outcome:
    """Question 3: the first-touch cost of MTE, swap, page migration and CoW with and without it,
    and each setup's hazards (stale tags, tags lost on swap, VMM faults on DMA)."""
    touch_size = scale.pick(256 * MiB, 4 * GiB)
    size = scale.pick(32 * MiB, 512 * MiB)
    touch: dict[str, Any] = {
        "mte": first_touch(touch_size, mte=True),
        "plain": first_touch(touch_size, mte=False),
    }
    extra = touch["mte"]["seconds"] - touch["plain"]["seconds"]
    touch["extra_seconds_per_gib"] = extra * GiB / touch_size
    touch["pages"] = size // PAGE_SIZE
    progress(0.3)
    moves = {"mte": host_moves(size, mte=True), "plain": host_moves(size, mte=False)}
    progress(0.7)
    risk = hazards(size, 10)
    progress(1.0)
    table = Table(["what", "with MTE", "without MTE / detail"])
    table.rows.append(
        [
            f"first touch of {touch_size // MiB} MiB (s)",
            round(touch["mte"]["seconds"], 3),
            round(touch["plain"]["seconds"], 3),
        ]
    )
    for move in MOVES:
        table.rows.append(
            [
                f"{move} of {size // MiB} MiB (s)",
                round(moves["mte"][f"{move}_seconds"], 3),
                round(moves["plain"][f"{move}_seconds"], 3),
            ]
        )
    for name, figures in risk.items():
        table.rows.append(
            [
                name,
                f"{figures['stale_pages']} stale / {figures['pages_lost_on_swap']} lost",
                f"{figures['vmm_tag_faults_per_dma']} VMM faults per DMA",
            ]
        )
    charts = [
        Chart(
            "promotion's cost",
            "x without MTE",
            {
                "with MTE": {
                    "first touch": ratio(touch["mte"]["seconds"], touch["plain"]["seconds"]),
                    **{
                        m: ratio(moves["mte"][f"{m}_seconds"], moves["plain"][f"{m}_seconds"])
                        for m in MOVES
                    },
                }
            },
        ),
        Chart(
            "opting in: what goes wrong",
            f"pages of {size // PAGE_SIZE}",
            {
                "stale tags seen": {n: float(f["stale_pages"]) for n, f in risk.items()},
                "tags lost on swap": {n: float(f["pages_lost_on_swap"]) for n, f in risk.items()},
            },
        ),
    ]
    return Outcome(
        name="promotion",
        question=3,
        figures={"first_touch": touch, "moves": moves, "hazards": risk},
        table=table,
        charts=charts,
        conclusion=_conclusion(touch, moves, risk),
    )


EXPERIMENT: Final = Experiment(
    "promotion",
    3,
    "KVM promoting guest memory vs the VMM opting in with PROT_MTE",
    run,
)
