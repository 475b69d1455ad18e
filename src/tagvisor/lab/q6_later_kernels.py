"""Question 6: the kernel's later answers - 6.12's EBUSY and 6.1's missing INT_MAX check.

* Since 6.12 KVM refuses KVM_ARM_MTE_COPY_TAGS TO_GUEST while any memslot logs dirty
  pages (EBUSY): writing tags does not mark pages dirty. A destination that logs
  (to migrate on, or for a live backup) while it places incoming pages must place the
  tags first and log afterwards, or stop logging around every placement.
* Before 6.4, COPY_TAGS took any length; its result comes back through ioctl(2),
  whose return is an int, so a copy above INT_MAX is reported truncated.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any, Final

import numpy as np

from tagvisor.arch.constants import GRANULES_PER_PAGE, PAGE_SIZE
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.workloads import touch_pages
from tagvisor.kvm.uapi import KVM_ARM_TAGS_FROM_GUEST, kvm_arm_copy_mte_tags
from tagvisor.lab.counting import Counters, CountingVm
from tagvisor.lab.experiment import Chart, Experiment, Outcome, ProgressFn, Scale, Table, ratio
from tagvisor.vmm.builder import RAM_BASE, MachineBuilder
from tagvisor.vmm.machine import Machine
from tagvisor.vmm.tag_access import CopyTagsAccess

MiB: Final = 1 << 20
GiB: Final = 1 << 30
#: How the destination places pages while it logs, and under which kernel.
PLANS: Final = {
    "6.11: place while logging": ("linux-6.4", "while-logging"),
    "6.12: place while logging": ("linux-6.12", "while-logging"),
    "6.12: stop logging per batch": ("linux-6.12", "toggle"),
    "6.12: place first, then log": ("linux-6.12", "place-first"),
}


def _destination(profile: str, size: int) -> tuple[Machine, ModelKvm, Counters]:
    kvm = ModelKvm(size + 256 * MiB, profile)
    machine = MachineBuilder(kvm).memory(size).python_guest(touch_pages(RAM_BASE, 0)).build()
    counters = Counters()
    machine.memory.vm = CountingVm(machine.vm, counters)
    machine.tags = CopyTagsAccess(machine.memory.vm, machine.memory, kvm.user_memory)
    return machine, kvm, counters


def place(plan: str, size: int, batch_pages: int) -> dict[str, Any]:
    """Place ``size`` bytes of tagged pages, a batch at a time, as a destination with
    dirty logging wanted would; then the guest writes every page once."""
    profile, how = PLANS[plan]
    machine, _, counters = _destination(profile, size)
    memory, rng = machine.memory, np.random.default_rng(8)
    if how != "place-first":
        memory.start_dirty_log()
    started, refused, placed = time.perf_counter(), 0, 0
    for first in range(0, size // PAGE_SIZE, batch_pages):
        gpa = RAM_BASE + first * PAGE_SIZE
        memory.write(gpa, rng.bytes(batch_pages * PAGE_SIZE))
        tags = rng.integers(1, 16, batch_pages * GRANULES_PER_PAGE, dtype=np.uint8)
        if how == "toggle":
            memory.stop_dirty_log()
        try:
            machine.tags.write_tags(gpa, tags)
            placed += batch_pages
        except Exception as error:  # EBUSY, as TagAccessError from KvmError
            refused += isinstance(error.__cause__, KvmError)
        if how == "toggle":
            memory.start_dirty_log()  # a fresh log: write-protects the whole slot again
    if how == "place-first":
        memory.start_dirty_log()
    seconds = time.perf_counter() - started
    return {
        "ioctls": counters.syscalls,
        # Each start write-protects the whole slot and begins a log with every page
        # dirty: what a restart costs the next pass.
        "log_starts": counters.ioctls["KVM_SET_USER_MEMORY_REGION"],
        "refused": refused,
        "pages_placed_with_tags": placed,
        "pages": size // PAGE_SIZE,
        "batches": -(-size // (batch_pages * PAGE_SIZE)),
        "seconds": seconds,
        "logging_throughout": how == "while-logging",
    }


def big_copy(profile: str, length: int) -> dict[str, Any]:
    """One COPY_TAGS FROM_GUEST of ``length`` bytes into a buffer pre-filled with 0xAA:
    what the kernel returns, what ioctl(2)'s int shows the VMM, what the buffer got."""
    kvm = ModelKvm(length + 512 * MiB, profile)
    machine = MachineBuilder(kvm).memory(length).python_guest(touch_pages(RAM_BASE, 0)).build()
    stage2 = machine.vm.stage2  # type: ignore[attr-defined]
    stage2.store_tags(RAM_BASE, np.full(GRANULES_PER_PAGE, 5, np.uint8))  # one tagged page
    size = length // 16
    buffer = kvm.user_memory.map_anonymous(size)
    view = kvm.process.contiguous_view(buffer, size, write=True)
    assert view is not None
    view.fill(0xAA)
    args = kvm_arm_copy_mte_tags(
        guest_ipa=RAM_BASE, length=length, addr=buffer, flags=KVM_ARM_TAGS_FROM_GUEST
    )
    try:
        returned: int | str = machine.vm.arm_mte_copy_tags(args)
        seen = ctypes.c_int(int(returned)).value  # ioctl(2) returns an int
    except KvmError as error:
        returned, seen = f"-{error.errno}", -(error.errno or 0)
    written = size - int(np.count_nonzero(view == 0xAA))
    return {
        "length": length,
        "kernel_returned": returned,
        "vmm_sees": seen,
        "buffer_bytes_written": written,
        "buffer_bytes": size,
    }


def _conclusion(plans: dict[str, dict[str, Any]], copies: dict[str, list[dict[str, Any]]]) -> str:
    before = plans["6.11: place while logging"]
    busy = plans["6.12: place while logging"]
    toggle = plans["6.12: stop logging per batch"]
    first = plans["6.12: place first, then log"]
    old = copies["linux-6.1"][-1]
    new = copies["linux-6.4"][-1]
    return (
        f"Under 6.12 a destination that logs while it places pages had "
        f"{busy['refused']} of {busy['batches']} tag writes refused with EBUSY and placed "
        f"{busy['pages_placed_with_tags']} pages' "
        f"tags. It must place every page's tags before logging starts (here "
        f"{ratio(first['ioctls'], before['ioctls']):.2f}x 6.11's ioctls, but no log until the "
        f"last page is in), or stop logging around each batch: "
        f"{ratio(toggle['ioctls'], before['ioctls']):.2f}x the ioctls and "
        f"{toggle['log_starts']} log starts, each write-protecting the whole slot and "
        f"beginning with every page dirty, so the next pass resends everything. Under 6.1 a "
        f"{old['length'] // GiB} GiB FROM_GUEST wrote {old['buffer_bytes_written'] // MiB} MiB "
        f"of the VMM's buffer and returned {old['kernel_returned']}, which ioctl(2)'s int "
        f"shows as {old['vmm_sees']}; from 6.4 the same call returns {new['vmm_sees']} "
        f"(EINVAL) and writes {new['buffer_bytes_written']} bytes, so a VMM copies in pieces."
    )


def run(scale: Scale, progress: ProgressFn) -> Outcome:
    """Question 6: a logging destination's placement plans before 6.12 and on 6.12, and COPY_TAGS
    of 1 to 4 GiB on 6.1 and 6.4."""
    size = scale.pick(16 * MiB, 256 * MiB)
    plans: dict[str, dict[str, Any]] = {}
    for index, plan in enumerate(PLANS):
        plans[plan] = place(plan, size, 256)
        progress((index + 1) / (len(PLANS) + 2))
    lengths = (GiB, 2 * GiB, 4 * GiB) if scale.quick else (GiB, 2 * GiB, 3 * GiB, 4 * GiB)
    copies: dict[str, list[dict[str, Any]]] = {}
    for index, profile in enumerate(("linux-6.1", "linux-6.4")):
        copies[profile] = [big_copy(profile, length) for length in lengths]
        progress((len(PLANS) + index + 1) / (len(PLANS) + 2))
    table = Table(["case", "ioctls", "refused", "log starts", "tags placed / detail"])
    for plan, f in plans.items():
        table.rows.append(
            [
                plan,
                f["ioctls"],
                f["refused"],
                f["log_starts"],
                f"{f['pages_placed_with_tags']}/{f['pages']} pages",
            ]
        )
    for profile, rows in copies.items():
        for f in rows:
            table.rows.append(
                [
                    f"{profile}: COPY_TAGS of {f['length'] // GiB} GiB",
                    1,
                    "",
                    "",
                    f"kernel {f['kernel_returned']}, VMM sees {f['vmm_sees']}, "
                    f"{f['buffer_bytes_written'] // MiB} MiB written",
                ]
            )
    before = plans["6.11: place while logging"]
    charts = [
        Chart(
            "placing tags while logging",
            "x 6.11's ioctls / count",
            {
                "ioctls": {p: ratio(f["ioctls"], before["ioctls"]) for p, f in plans.items()},
                "EBUSY": {p: float(f["refused"]) for p, f in plans.items()},
                "log starts": {p: float(f["log_starts"]) for p, f in plans.items()},
            },
        ),
        Chart(
            "one big COPY_TAGS: what the VMM's ioctl(2) returns",
            "GiB reported",
            {
                profile: {f"{f['length'] // GiB} GiB": f["vmm_sees"] / GiB for f in rows}
                for profile, rows in copies.items()
            },
        ),
    ]
    return Outcome(
        name="later-kernels",
        question=6,
        figures={"placing": plans, "big_copies": copies},
        table=table,
        charts=charts,
        conclusion=_conclusion(plans, copies),
    )


EXPERIMENT: Final = Experiment(
    "later-kernels",
    6,
    "6.12's EBUSY for a logging destination; 6.1's unchecked COPY_TAGS length",
    run,
)
