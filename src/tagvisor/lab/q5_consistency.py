"""Question 5: tags travel with their page - torn page/tag pairs, and what repairs them.

A VMM reads a page's data and its tags in two steps, whatever the design; a guest that
retags and rewrites the page between them leaves it with a torn pair. Python threads
interleave at the GIL's whim, so the race is run as a calibrated interleaving instead:
the time of each design's second read is measured, and between the two reads the guest
runs as many steps as it does in that time on average (Poisson), stopping where it
would (also between its tag store and its data store). The guest really runs, through
stage 2, on the VCPU; only the timing is drawn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import numpy as np

from tagvisor.arch.constants import GRANULES_PER_PAGE, PAGE_SIZE
from tagvisor.arch.tagformat import U8
from tagvisor.host.userfault import PROPOSAL_UFFDIO_COPY_MTE
from tagvisor.kvm.model import ModelKvm, ModelVm
from tagvisor.kvm.model.dirtytags import PROPOSAL_DIRTY_LOG_TAGS
from tagvisor.lab.compare import differing_pages, truth
from tagvisor.lab.designs import COPY_TAGS, DESIGNS, DIRTY_LOG_TAGS
from tagvisor.lab.experiment import Chart, Experiment, Outcome, ProgressFn, Scale, Table
from tagvisor.lab.loopback import Moved, migrate
from tagvisor.lab.q4_tag_access import build, host
from tagvisor.lab.workloads import torn, versioned_churn
from tagvisor.vmm.builder import RAM_BASE
from tagvisor.vmm.machine import Machine
from tagvisor.vmm.tag_access import TagAccess

RAM: Final = 32 << 20
#: The churned range: small, so that a sampled page is often being rewritten.
CHURN_PAGES: Final = 256
ORDERS: Final = ("data-then-tags", "tags-then-data")
CALIBRATION: Final = 64


def _reader(machine: Machine, design: str, what: str) -> Callable[[int], Any]:
    """Reads one page's data or tags the way ``design`` does."""
    if what == "data":
        return lambda gpa: machine.tags.read_data(gpa, PAGE_SIZE)

    def tags(gpa: int) -> U8:
        if design == DIRTY_LOG_TAGS:  # tags come only with a harvest
            machine.memory.take_dirty(machine.memory.regions[0])
        return machine.tags.read_tags(gpa, GRANULES_PER_PAGE)

    return tags


def _seconds_each(call: Callable[[], Any], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - started) / count


def sample_torn(design: str, samples: int, seed: int = 0) -> dict[str, Any]:
    """Torn pairs among ``samples`` random pages per order, read while the guest churns."""
    machine, _, _ = build(design, RAM, versioned_churn(RAM_BASE, CHURN_PAGES, seed=seed))
    machine.run(max_exits=2 * CHURN_PAGES)  # most pages rewritten at least once
    machine.memory.start_dirty_log()  # the same conditions for every design
    rng = np.random.default_rng(seed)
    step = _seconds_each(lambda: machine.run(max_exits=1), CALIBRATION)
    result: dict[str, Any] = {"guest_step_seconds": step}
    for order in ORDERS:
        first, second = ("data", "tags") if order == "data-then-tags" else ("tags", "data")
        read_first, read_second = (_reader(machine, design, w) for w in (first, second))
        window = _seconds_each(partial(read_second, RAM_BASE), CALIBRATION)
        steps = window / step  # guest steps while the second read runs
        count = 0
        for page in rng.integers(0, CHURN_PAGES, samples):
            gpa = RAM_BASE + int(page) * PAGE_SIZE
            a = read_first(gpa)
            if (k := int(rng.poisson(steps))) > 0:
                machine.run(max_exits=k)
            b = read_second(gpa)
            data, tags = (a, b) if first == "data" else (b, a)
            count += torn(data, tags)
        result[order] = count
        result[f"{order}_guest_steps_per_read"] = steps
    return result


def count_torn(machine: Machine, kvm: ModelKvm, gpa: int, npages: int) -> int:
    """Pages whose data and tags (read with COPY_TAGS) are from different versions."""
    data = machine.memory.view(gpa, npages * PAGE_SIZE).reshape(npages, PAGE_SIZE)
    tags = truth(machine, kvm).read_tags(gpa, npages * GRANULES_PER_PAGE)
    tags = tags.reshape(npages, GRANULES_PER_PAGE)
    return sum(torn(data[i], tags[i]) for i in range(npages))


def _arrival(source: Machine, kvm: ModelKvm, moved: Moved, destination: ModelKvm) -> dict[str, int]:
    """How the destination's pages compare with the paused source's.

    A guest paused between its tag store and its data store is torn at the source
    too (``torn_at_source``); a migration is to blame only for pages that differ."""
    return {
        "torn_at_source": count_torn(source, kvm, RAM_BASE, CHURN_PAGES),
        "torn_at_destination": count_torn(moved.destination, destination, RAM_BASE, CHURN_PAGES),
        "pages_differing": differing_pages(
            source, kvm, moved.destination, destination, RAM_BASE, CHURN_PAGES
        ),
    }


def precopy_repair(design: str) -> dict[str, int]:
    """Migrate the churning guest pre-copy; what the destination ends with."""
    machine, kvm, _ = build(design, RAM, versioned_churn(RAM_BASE, CHURN_PAGES, seed=5))
    machine.run(max_exits=2 * CHURN_PAGES)
    destination = host(RAM)
    moved = migrate(machine, destination, run_guest=True)
    return {
        **_arrival(machine, kvm, moved, destination),
        "pages_sent": moved.report.pages_sent,
        "iterations": moved.report.iterations,
    }


class _WindowWatcher:
    """The destination's tag writes, with another VCPU touching each page just before:
    between UFFDIO_COPY (data) and COPY_TAGS (tags), the window post-copy leaves open."""

    def __init__(self, machine: Machine, seen: dict[str, int]) -> None:
        assert isinstance(machine.vm, ModelVm)
        self.stage2 = machine.vm.stage2
        self.inner: TagAccess = machine.tags
        self.name = self.inner.name
        self.seen = seen

    def read_data(self, gpa: int, length: int) -> bytes:
        return self.inner.read_data(gpa, length)

    def write_data(self, gpa: int, data: bytes) -> None:
        self.inner.write_data(gpa, data)

    def read_tags(self, gpa: int, granules: int, out: U8 | None = None) -> U8:
        return self.inner.read_tags(gpa, granules, out)

    def write_tags(self, gpa: int, tags: U8) -> None:
        """Before the tags land, VCPU 1 touches each page (its first touch clears the
        tags) and reads what it would check against. A page whose right tags are all
        zero has no window to fall into (zeroed tags are its tags); any other is a
        window, torn if VCPU 1 saw other tags than the ones about to be written. (The
        data's version cannot tell: a page the source paused between its tag store and
        its data store carries an old version whose tags may be zero.)"""
        for page in range(tags.size // GRANULES_PER_PAGE):
            at = gpa + page * PAGE_SIZE
            right = tags[page * GRANULES_PER_PAGE : (page + 1) * GRANULES_PER_PAGE]
            self.stage2.read(at, PAGE_SIZE)  # VCPU 1, in the window
            if not right.any():
                continue
            self.seen["windows"] += 1
            seen = self.stage2.load_tags(at, GRANULES_PER_PAGE)
            self.seen["torn"] += bool((seen != right).any())
        self.inner.write_tags(gpa, tags)


def postcopy_window(*, atomic: bool) -> dict[str, int]:
    """Post-copy after one pass of the churning guest: what another destination VCPU
    sees in the placement window, with UFFDIO_COPY + COPY_TAGS or the atomic proposal."""
    machine, kvm, _ = build(COPY_TAGS, RAM, versioned_churn(RAM_BASE, CHURN_PAGES, seed=9))
    machine.run(max_exits=2 * CHURN_PAGES)
    proposals = {PROPOSAL_DIRTY_LOG_TAGS} | ({PROPOSAL_UFFDIO_COPY_MTE} if atomic else set())
    destination = ModelKvm(RAM + (256 << 20), proposals=frozenset(proposals))
    seen = {"windows": 0, "torn": 0}

    def observe(dest: Machine) -> Callable[[], None]:
        dest.tags = _WindowWatcher(dest, seen)
        return lambda: None

    moved = migrate(
        machine, destination, run_guest=True, observe=observe, postcopy=True, max_iterations=1
    )
    arrival = _arrival(machine, kvm, moved, destination)
    return {**seen, **arrival, "postcopy_pages": moved.report.postcopy_pages}


def _charts(sampled: dict[str, dict[str, Any]], samples: int, post: dict[str, Any]) -> list[Chart]:
    return [
        Chart(
            "torn pairs read while the guest churns",
            "% of page reads",
            {o: {d: 100 * sampled[d][o] / samples for d in DESIGNS} for o in ORDERS},
        ),
        Chart(
            "post-copy: another VCPU in the placement window",
            "pages",
            {
                k: {m: float(post[m][k]) for m in post}
                for k in ("windows", "torn", "pages_differing")
            },
        ),
    ]


def _conclusion(
    sampled: dict[str, dict[str, Any]],
    samples: int,
    pre: dict[str, dict[str, int]],
    post: dict[str, dict[str, int]],
) -> str:
    rates = [100 * sampled[d][o] / samples for d in DESIGNS for o in ORDERS]
    worst = max(DESIGNS, key=lambda d: sampled[d]["data-then-tags"] + sampled[d]["tags-then-data"])
    plain, atomic = post["uffdio-copy + copy-tags"], post["uffdio-copy-mte"]
    tore = sum(1 for d in DESIGNS if sampled[d]["data-then-tags"] + sampled[d]["tags-then-data"])
    return (
        f"Every design reads data and tags in two steps; {tore} of {len(DESIGNS)} tore: "
        f"{min(rates):.1f}% to {max(rates):.1f}% of page reads while the guest churned "
        f"(most: {worst}). Pre-copy repaired all of it: across the designs the "
        f"destination differed from the paused source in "
        f"{max(p['pages_differing'] for p in pre.values())} pages at most, because a "
        f"torn page was dirtied again and resent. Post-copy cannot resend: with data placed "
        f"by UFFDIO_COPY and tags by COPY_TAGS, a VCPU touching the page in between saw "
        f"{plain['torn']} of {plain['windows']} pages torn (its first touch cleared the "
        f"tags). COPY_TAGS then wrote the right tags ({plain['pages_differing']} pages "
        f"differ at the end): the harm is what that VCPU did meanwhile with zero tags, a "
        f"spurious tag check fault or a missed one. With the atomic uffdio-copy-mte "
        f"proposal there were {atomic['windows']} windows and {atomic['torn']} torn pages."
    )


def run(scale: Scale, progress: ProgressFn) -> Outcome:
    """Question 5: torn page/tag pairs per design and read order, whether pre-copy repairs them,
    and the post-copy window with and without atomic placement of a page and its tags."""
    samples = scale.pick(1500, 20000)
    steps = 2 * len(DESIGNS) + 2
    sampled: dict[str, dict[str, Any]] = {}
    pre: dict[str, dict[str, int]] = {}
    for index, design in enumerate(DESIGNS):
        sampled[design] = sample_torn(design, samples, seed=index)
        progress((2 * index + 1) / steps)
        pre[design] = precopy_repair(design)
        progress((2 * index + 2) / steps)
    post = {"uffdio-copy + copy-tags": postcopy_window(atomic=False)}
    progress((steps - 1) / steps)
    post["uffdio-copy-mte"] = postcopy_window(atomic=True)
    progress(1.0)
    table = Table(["design / way", "torn data>tags", "torn tags>data", "after migration"])
    for design in DESIGNS:
        table.rows.append(
            [
                design,
                f"{sampled[design]['data-then-tags']}/{samples}",
                f"{sampled[design]['tags-then-data']}/{samples}",
                f"pre-copy: {pre[design]['pages_differing']} pages differ",
            ]
        )
    for way, figures in post.items():
        table.rows.append(
            [
                way,
                f"{figures['torn']}/{figures['windows']} in window",
                "",
                f"post-copy: {figures['pages_differing']} pages differ",
            ]
        )
    return Outcome(
        name="consistency",
        question=5,
        figures={"samples": samples, "sampled": sampled, "precopy": pre, "postcopy": post},
        table=table,
        charts=_charts(sampled, samples, post),
        conclusion=_conclusion(sampled, samples, pre, post),
    )


EXPERIMENT: Final = Experiment(
    "consistency",
    5,
    "torn page/tag pairs per design; pre-copy repairs them, post-copy needs atomic placement",
    run,
)
