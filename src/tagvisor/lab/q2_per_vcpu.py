"""Question 2: MTE per VCPU (the seed's v2) against per VM (upstream's capability).

The builder enables MTE per VCPU on the seed-v2 profile (the heap guest boots there as
upstream). Then a VM with MTE on VCPU 0 only: a guest thread using a tagged heap on
either VCPU, memory first touched by the VCPU without MTE, and a migration of the VM.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any, Final

import numpy as np

from tagvisor.arch.constants import PAGE_SIZE, TAG_GRANULE
from tagvisor.arch.errors import TagCheckFault
from tagvisor.arch.state import MteState
from tagvisor.arch.sysregs import TagCheckMode
from tagvisor.arch.tagcheck import check_access
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import ModelKvm, ModelVcpu, ModelVm
from tagvisor.kvm.model.workloads import fill_tagged, touch_pages
from tagvisor.kvm.uapi import SEED_V2_VCPU_FEATURE_MTE
from tagvisor.lab.experiment import Chart, Experiment, Outcome, ProgressFn, Scale, Table
from tagvisor.lab.loopback import migrate
from tagvisor.vmm.builder import RAM_BASE, MachineBuilder
from tagvisor.vmm.machine import Machine, MachineError

MiB: Final = 1 << 20
HEAP: Final = RAM_BASE + 8 * MiB
ALLOCATION: Final = 256
GUESTS: Final = Path(__file__).resolve().parents[1] / "guests"


def boot_heap(profile: str) -> dict[str, Any]:
    """The heap guest, built with MTE the way the profile's ABI offers it."""
    machine = (
        MachineBuilder(ModelKvm(256 << 20, profile))
        .memory(64 * MiB)
        .image(GUESTS / "heap.elf")
        .build()
    )
    started = time.perf_counter()
    result = machine.run()
    return {
        "exit_status": result.exit_status,
        "ucalls": len(machine.ucall.calls),
        "seconds": time.perf_counter() - started,
    }


def _split_vm(
    profile: str = "seed-v2", *, prot_mte: bool = False, guest_bytes: int = 0
) -> tuple[Machine, ModelKvm]:
    kvm = ModelKvm(256 << 20, profile)
    machine = (
        MachineBuilder(kvm)
        .memory(32 * MiB, vmm_prot_mte=prot_mte)
        .mte(vcpus=[0])
        .vcpus(2)
        .tag_access("prot-mte+tco" if prot_mte else "copy-tags")
        .python_guest(fill_tagged(RAM_BASE, guest_bytes, seed=3))
        .build()
    )
    return machine, kvm


def _vcpu(machine: Machine, index: int) -> ModelVcpu:
    vcpu = machine.vcpus[index]
    assert isinstance(vcpu, ModelVcpu)
    return vcpu


def _checked(vcpu: ModelVcpu, pointer: int) -> bool:
    """Whether a 16-byte load through ``pointer`` on ``vcpu`` faults (TCF sync)."""
    state = MteState.bare_metal_el1(TagCheckMode.SYNC)
    state.hcr_ata = vcpu.tag_access
    try:
        check_access(state, vcpu.context().tag_memory, pointer, TAG_GRANULE, write=False)
    except TagCheckFault:
        return True
    return False


def moving_thread(allocations: int) -> dict[str, int]:
    """A guest thread's heap: allocate (STG a tag), free (retag), use the stale
    pointer - on VCPU 0 (MTE), on VCPU 1 (none), and allocated on 1, used on 0."""
    machine, _ = _split_vm()
    vcpus = (_vcpu(machine, 0), _vcpu(machine, 1))
    counts = {"uaf_caught_on_mte_vcpu": 0, "uaf_caught_on_plain_vcpu": 0, "false_faults": 0}
    rng = np.random.default_rng(1)
    for index in range(allocations):
        address = HEAP + index * ALLOCATION
        tag = int(rng.integers(1, 15))
        granules = ALLOCATION // TAG_GRANULE
        for name, (alloc_on, use_on) in {
            "uaf_caught_on_mte_vcpu": (0, 0),
            "uaf_caught_on_plain_vcpu": (1, 1),
        }.items():
            memory = vcpus[alloc_on].context().tag_memory
            memory.store_tags(address, np.full(granules, tag, np.uint8))  # malloc
            memory.store_tags(address, np.full(granules, tag + 1, np.uint8))  # free
            counts[name] += _checked(vcpus[use_on], address | tag << 56)
        fresh = address + allocations * ALLOCATION  # allocated on 1, used (live) on 0
        vcpus[1].context().tag_memory.store_tags(fresh, np.full(granules, tag, np.uint8))
        counts["false_faults"] += _checked(vcpus[0], fresh | tag << 56)
    counts["allocations"] = allocations
    return counts


def promotion_by_plain_vcpu(pages: int) -> dict[str, int]:
    """Pages first touched by the VCPU without MTE: are their tags initialised?"""
    out = {}
    for name, mte_vcpus in (("some VCPU has MTE", [0]), ("no VCPU has MTE", [])):
        kvm = ModelKvm(128 << 20, "seed-v2")
        machine = (
            MachineBuilder(kvm)
            .memory(32 * MiB)
            .mte(bool(mte_vcpus), vcpus=mte_vcpus)
            .vcpus(2)
            .python_guest(touch_pages(RAM_BASE, 0))
            .build()
        )
        _vcpu(machine, 1).context().stage2.map_pages(RAM_BASE, pages * PAGE_SIZE, write=True)
        out[name] = int(kvm.frames.tag_inits.sum())
    return out


def _stage2_tags(machine: Machine, length: int) -> Any:
    assert isinstance(machine.vm, ModelVm)
    return machine.vm.stage2.load_tags(RAM_BASE, length // TAG_GRANULE)


def migrate_split(way: str, guest_bytes: int) -> dict[str, Any]:
    """Migrate a VM with MTE on VCPU 0 only to another seed-v2 host; and, since the
    stream's machine shape is what a destination builds from, what it would build."""
    machine, _ = _split_vm(prot_mte=way != "copy-tags", guest_bytes=guest_bytes)
    machine.run(max_exits=-(-guest_bytes // (16 * MiB)))  # filled, then paused
    rebuilt = MachineBuilder.from_config(ModelKvm(256 << 20, "seed-v2"), machine.config).build()
    result: dict[str, Any] = {
        "source_vcpu_mte": [_vcpu(machine, i).tag_access for i in range(2)],
        "rebuilt_vcpu_mte": [_vcpu(rebuilt, i).tag_access for i in range(2)],
    }
    try:
        moved = migrate(machine, ModelKvm(256 << 20, "seed-v2"), run_guest=False)
    except Exception as error:  # the finding is the error
        return {**result, "migrated": False, "error": str(error)}
    same = np.array_equal(
        _stage2_tags(machine, guest_bytes), _stage2_tags(moved.destination, guest_bytes)
    )
    return {**result, "migrated": True, "tags_equal": bool(same), "error": ""}


def vm_cap_rules_out() -> dict[str, Any]:
    """What the upstream ABI says to MTE on some VCPUs only."""
    try:
        _split_vm("linux-6.13")
        builder = "built"
    except MachineError as error:
        builder = str(error)
    kvm = ModelKvm(64 << 20)
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu(0)
    init = vm.arm_preferred_target()
    init.features[0] = 1 << SEED_V2_VCPU_FEATURE_MTE
    try:
        vcpu.arm_vcpu_init(init)
        code = 0
    except KvmError as error:
        code = error.errno or 0
    return {"builder": builder, "feature_bit_errno": errno.errorcode.get(code, str(code))}


def _conclusion(f: dict[str, Any]) -> str:
    boot, thread, touched = f["boot"], f["thread"], f["promotion"]
    moved, cap = f["migration"]["prot-mte+tco"], f["vm_cap"]
    n = thread["allocations"]
    return (
        f"With per-VCPU enable in the builder, the heap guest boots on seed-v2 with exit "
        f"status {boot['seed-v2']['exit_status']} and {boot['seed-v2']['ucalls']} ucalls, as "
        f"on linux-6.13 ({boot['linux-6.13']['exit_status']}, "
        f"{boot['linux-6.13']['ucalls']}). With MTE on VCPU 0 only, a thread's stale "
        f"pointer was caught {thread['uaf_caught_on_mte_vcpu']} of {n} times on VCPU 0 and "
        f"{thread['uaf_caught_on_plain_vcpu']} times on VCPU 1, and memory it tagged on "
        f"VCPU 1 faulted {thread['false_faults']} of {n} times once it moved to VCPU 0"
        + (
            ": a thread's safety depends on where the scheduler puts it"
            if thread["uaf_caught_on_mte_vcpu"] != thread["uaf_caught_on_plain_vcpu"]
            else ""
        )
        + f". VCPU 1's first touches "
        f"still initialised {touched['some VCPU has MTE']} pages' tags (against "
        f"{touched['no VCPU has MTE']} in a VM with no MTE VCPU): promotion is VM-wide as "
        f"soon as any VCPU has MTE. The machine shape a migration carries rebuilds MTE on "
        f"VCPUs {moved['rebuilt_vcpu_mte']} where the source had {moved['source_vcpu_mte']}"
        + (", and migration failed: " + moved["error"] if not moved["migrated"] else "")
        + f'. The VM cap rules the split out: the builder says "{cap["builder"]}" and '
        f"feature bit 7 gives {cap['feature_bit_errno']} upstream."
    )


def run(scale: Scale, progress: ProgressFn) -> Outcome:
    """Question 2: the heap guest booted per profile, a guest thread moving between a tagged and
    a plain VCPU, promotion by the plain VCPU, the split VM's migration with ``copy-tags`` and
    with ``prot-mte+tco``, and what the VM capability rules out."""
    allocations = scale.pick(100, 2000)
    figures: dict[str, Any] = {
        "boot": {p: boot_heap(p) for p in ("seed-v2", "linux-6.13")},
    }
    progress(0.3)
    figures["thread"] = moving_thread(allocations)
    figures["promotion"] = promotion_by_plain_vcpu(scale.pick(1024, 8192))
    progress(0.6)
    guest = scale.pick(4 * MiB, 16 * MiB)
    figures["migration"] = {w: migrate_split(w, guest) for w in ("copy-tags", "prot-mte+tco")}
    figures["vm_cap"] = vm_cap_rules_out()
    progress(1.0)
    thread = figures["thread"]
    table = Table(["what", "figure"])
    for profile, boot in figures["boot"].items():
        table.rows.append(
            [
                f"heap guest on {profile}",
                f"exit {boot['exit_status']}, {boot['ucalls']} ucalls, {boot['seconds']:.2f} s",
            ]
        )
    for key in ("uaf_caught_on_mte_vcpu", "uaf_caught_on_plain_vcpu", "false_faults"):
        table.rows.append([key.replace("_", " "), f"{thread[key]}/{allocations}"])
    for name, pages in figures["promotion"].items():
        table.rows.append([f"pages promoted by VCPU 1 ({name})", pages])
    for way, moved in figures["migration"].items():
        table.rows.append(
            [f"migration, {way}", "migrated" if moved["migrated"] else moved["error"]]
        )
    table.rows.append(["VM cap, MTE on VCPU 0 only", figures["vm_cap"]["builder"]])
    charts = [
        Chart(
            "a thread's heap with MTE on VCPU 0 only",
            f"of {allocations} allocations",
            {
                "count": {
                    "UAF caught, VCPU 0": float(thread["uaf_caught_on_mte_vcpu"]),
                    "UAF caught, VCPU 1": float(thread["uaf_caught_on_plain_vcpu"]),
                    "false faults 1->0": float(thread["false_faults"]),
                }
            },
        ),
        Chart(
            "pages promoted by the VCPU without MTE",
            "pages",
            {"pages": {k: float(v) for k, v in figures["promotion"].items()}},
        ),
    ]
    return Outcome(
        name="per-vcpu",
        question=2,
        figures=figures,
        table=table,
        charts=charts,
        conclusion=_conclusion(figures),
    )


EXPERIMENT: Final = Experiment(
    "per-vcpu", 2, "MTE per VCPU (seed v2) against the VM capability (upstream)", run
)
