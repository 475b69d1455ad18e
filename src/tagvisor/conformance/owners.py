"""Memslot backings and their tags across owners: every backing, hugetlb included.

Each *tenancy* boots the tag-owner guest (guests/tag-owner) in an MTE machine with a
second memslot (slot 1, OWNER_GPA, one 2 MiB huge page's worth) over the backing under
test. Before the first instruction the VMM reads the slot's tags (COPY_TAGS
FROM_GUEST), plants tag 5 on page 1 with COPY_TAGS TO_GUEST, plants tag 6 on page 2
with its own STG when asked and the mapping takes PROT_MTE, and writes data on page 3.
The guest reads each of pages 0-3 with LDG at its first touch, then stores its tag on
all of them; the VMM reads FROM_GUEST again. Then the machine goes: VCPUs and VM closed,
the slot's memory and RAM unmapped, so the next tenancy's memory comes back on the same
frames (``_frames_reused`` says how many did: a host fact).

Tag sets are masks: bit t set if some granule of the page holds tag t (1: all zero).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, Final

from tagvisor.conformance.programs import GUEST_DIR, RAM_SIZE, run_with_watchdog
from tagvisor.conformance.scenarios import Result, add_slot, copy_tags, scenario
from tagvisor.guests import reports
from tagvisor.kvm.api import Kvm
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.uapi import KVM_ARM_TAGS_TO_GUEST
from tagvisor.vmm.builder import RAM_BASE, MachineBuilder
from tagvisor.vmm.devices.ucall import UcallCmd
from tagvisor.vmm.machine import Machine

PAGE: Final = 4096
GRANULES: Final = PAGE // 16
OWNER_GPA: Final = RAM_BASE + (64 << 20)  # guests/tag-owner OWNER_BASE
OWNER_SIZE: Final = 2 << 20
OWNER_SLOT: Final = 1
#: Pages FROM_GUEST reads: the guest's four and four it never touches (the same huge
#: page, for hugetlb backings).
READ_PAGES: Final = 8
COPY_TAG: Final = 0x5  # planted with COPY_TAGS TO_GUEST on page 1
VMM_TAG: Final = 0x6  # planted with the VMM's STG on page 2
OWNER_TAG: Final = 0xB  # what the first owner's guest stores on pages 0-3
VMM_DATA: Final = 0x1122_3344_5566_7788

Mapper = Callable[[Kvm, bool], int]

#: Every backing a memslot can have: name -> how to map OWNER_SIZE bytes (PROT_MTE if
#: asked). The disk file cannot be PROT_MTE, so it is never asked.
BACKINGS: Final[dict[str, Mapper]] = {
    "anonymous": lambda kvm, mte: kvm.user_memory.map_anonymous(OWNER_SIZE, mte=mte),
    "anonymous_shared": lambda kvm, mte: kvm.user_memory.map_anonymous(
        OWNER_SIZE, shared=True, mte=mte
    ),
    "memfd": lambda kvm, mte: kvm.user_memory.map_memfd(OWNER_SIZE, mte=mte),
    "file": lambda kvm, mte: kvm.user_memory.map_file(OWNER_SIZE),
    "hugetlb_memfd_shared": lambda kvm, mte: kvm.user_memory.map_hugetlb(OWNER_SIZE, mte=mte),
    "hugetlb_memfd_private": lambda kvm, mte: kvm.user_memory.map_hugetlb(
        OWNER_SIZE, mte=mte, shared=False
    ),
    "hugetlb_anonymous_private": lambda kvm, mte: kvm.user_memory.map_hugetlb(
        OWNER_SIZE, mte=mte, source="anonymous", shared=False
    ),
    "hugetlb_anonymous_shared": lambda kvm, mte: kvm.user_memory.map_hugetlb(
        OWNER_SIZE, mte=mte, source="anonymous"
    ),
    "hugetlb_file": lambda kvm, mte: kvm.user_memory.map_hugetlb(
        OWNER_SIZE, mte=mte, source="file"
    ),
}


def mask_of(tags: bytes) -> int:
    """Bit t set for each tag t among ``tags`` (one tag per byte, low nibble)."""
    mask = 0
    for tag in set(tags):
        mask |= 1 << (tag & 0xF)
    return mask


def errname(err: int | None) -> str:
    """errno's name (EINVAL), for a field that says why a call failed."""
    return errno.errorcode.get(err or 0, str(err))


def read_masks(kvm: Kvm, machine: Machine) -> dict[str, Any]:
    """COPY_TAGS FROM_GUEST of READ_PAGES pages of the slot: its outcome, each page's mask."""
    user = kvm.user_memory
    buffer = user.map_anonymous(PAGE)
    try:
        user.write(buffer, b"\xee" * (READ_PAGES * GRANULES))  # not a tag: 0xe would show
        done = copy_tags(machine.vm, OWNER_GPA, READ_PAGES * PAGE, buffer)
        tags = user.read(buffer, READ_PAGES * GRANULES)
    finally:
        user.unmap(buffer, PAGE)
    masks = [mask_of(tags[i * GRANULES : (i + 1) * GRANULES]) for i in range(READ_PAGES)]
    return {"outcome": done, "masks": masks if done > 0 else []}


def plant(kvm: Kvm, machine: Machine, hva: int, *, vmm_stg: bool) -> dict[str, Any]:
    """Before the first instruction: tag 5 on page 1 through COPY_TAGS, tag 6 on page 2
    through the VMM's STG (when asked and possible), data on page 3."""
    user = kvm.user_memory
    buffer = user.map_anonymous(PAGE)
    user.write(buffer, bytes([COPY_TAG]) * GRANULES)
    planted: dict[str, Any] = {
        "to_guest_page1": copy_tags(
            machine.vm, OWNER_GPA + PAGE, PAGE, buffer, KVM_ARM_TAGS_TO_GUEST
        )
    }
    user.unmap(buffer, PAGE)
    tagging = user.tag_instructions() if vmm_stg else None
    if tagging is not None and tagging.is_tagged(hva):
        import numpy as np  # the image has NumPy (the VMM needs it); scenarios.py does not

        tagging.store_tags(hva + 2 * PAGE, np.full(GRANULES, VMM_TAG, np.uint8))
        planted["vmm_stg_page2"] = mask_of(tagging.load_tags(hva + 2 * PAGE, GRANULES).tobytes())
    user.write(hva + 3 * PAGE, VMM_DATA.to_bytes(8, "little"))
    return planted


def guest_masks(machine: Machine, report: int) -> list[int]:
    """The masks the guest reported with ``report``, page by page."""
    return [
        call.args[2]
        for call in machine.ucall.calls
        if call.cmd is UcallCmd.SYNC and call.args[:1] == (report,) and len(call.args) > 2
    ]


def _machine(kvm: Kvm, store_tag: int) -> Machine:
    return (
        MachineBuilder(kvm)
        .memory(RAM_SIZE)
        .mte(True)
        .argument(store_tag)
        .image(GUEST_DIR / "tag-owner.elf")
        .build()
    )


def _dispose(kvm: Kvm, machine: Machine, hva: int | None) -> None:
    """The owner goes: VCPUs and VM closed, the slot's memory and RAM unmapped."""
    for fd in (*machine.vcpus, machine.vm):
        close = getattr(fd, "close", None)
        if callable(close):
            close()
    if hva is not None:
        kvm.user_memory.unmap(hva, OWNER_SIZE)
    for region in machine.memory.regions:
        kvm.user_memory.unmap(region.hva, region.size)


def _map(kvm: Kvm, backing: str, mte: bool, result: Result) -> int | None:
    """The backing, PROT_MTE if ``mte`` and mmap takes it (else why not, and without)."""
    for prot_mte in (True, False) if mte else (False,):
        try:
            return BACKINGS[backing](kvm, prot_mte)
        except OSError as exc:
            result["mmap_prot_mte" if prot_mte else "mmap"] = errname(exc.errno)
    return None


def tenancy(
    kvm: Kvm, backing: str, *, store_tag: int, vmm_stg: bool, frames: list[int] | None = None
) -> tuple[Result, list[int] | None]:
    """One owner of ``backing`` (module docstring): what it saw, and the frames its slot
    was on (``frames``: the previous owner's, to count how many came back)."""
    machine = _machine(kvm, store_tag)
    result: Result = {}
    hva = _map(kvm, backing, vmm_stg, result)
    try:
        if hva is None:
            return result, None
        result["slot"] = add_slot(machine.vm, OWNER_SLOT, OWNER_GPA, OWNER_SIZE, hva)
        if result["slot"] < 0:
            return result, None
        result["from_before"] = read_masks(kvm, machine)
        result.update(plant(kvm, machine, hva, vmm_stg=vmm_stg))
        try:
            run = run_with_watchdog(machine)
            result.update(state=run.state.value, status=run.exit_status)
        except KvmError as exc:  # KVM_RUN refused the fault (pre-6.2: not VM_MTE_ALLOWED)
            result["run"] = -(exc.errno or errno.EIO)
        result["guest_before"] = guest_masks(machine, reports.OWNER_BEFORE)
        result["guest_after"] = guest_masks(machine, reports.OWNER_AFTER)
        result["from_after"] = read_masks(kvm, machine)
        mine = kvm.user_memory.frame_numbers(hva, OWNER_SIZE // PAGE)
        if mine is not None and frames is not None:
            result["_frames_reused"] = len(set(mine) & set(frames) - {0})
        return result, mine
    finally:
        _dispose(kvm, machine, hva)


@scenario(
    "every memslot backing (hugetlb memfd/MAP_HUGETLB/hugetlbfs, shared and private): "
    "slot, guest run, COPY_TAGS both ways, tags at the guest's first touch"
)
def memslot_backing_tags(kvm: Kvm) -> Result:
    """A tenancy (no VMM STG) over each of BACKINGS: ``<backing>.<field>``."""
    result: Result = {}
    for backing in BACKINGS:
        seen, _ = tenancy(kvm, backing, store_tag=OWNER_TAG, vmm_stg=False)
        result.update(_fields(backing, "", seen))
    return result


def _fields(backing: str, owner: str, seen: Result, facts: frozenset[str] = frozenset()) -> Result:
    """``seen`` as ``<backing>[.<owner>].<field>``; host facts (and ``facts``) with ``_``
    in front, where compare looks for it."""
    fields: Result = {}
    for name, value in seen.items():
        fact = name.startswith("_") or name in facts
        key = ".".join(part for part in (backing, owner, name.lstrip("_")) if part)
        fields[f"_{key}" if fact else key] = value
    return fields


def _reader(backing: str, frames: list[int] | None) -> Callable[[Kvm], Result]:
    """A tenancy of ``backing`` that only reads, for a child process."""
    return lambda kvm: tenancy(kvm, backing, store_tag=0, vmm_stg=True, frames=frames)[0]


@scenario(
    "one owner's tags never reach the next: a guest tags a backing and goes, a new VM "
    "(same process, then a child) gets the frames back; with VMM-planted tags too"
)
def tags_across_owners(kvm: Kvm) -> Result:
    """Per backing: a first owner whose guest stores OWNER_TAG everywhere (VMM STG planted),
    then a second in this process and a third in a child process, each only reading."""
    result: Result = {}
    for backing in BACKINGS:
        first, frames = tenancy(kvm, backing, store_tag=OWNER_TAG, vmm_stg=True)
        # What the first owner finds depends on what ran on the host before (a real
        # host's hugetlb pool keeps pages from earlier scenarios): a host fact.
        history = frozenset({"from_before", "guest_before"})
        result.update(_fields(backing, "first", first, history))
        if "state" not in first and "run" not in first:
            continue  # refused before any run: nothing left behind to find
        second, _ = tenancy(kvm, backing, store_tag=0, vmm_stg=True, frames=frames)
        result.update(_fields(backing, "same_process", second))
        third = kvm.in_child_process(_reader(backing, frames))
        result.update(_fields(backing, "child_process", third))
    return result
