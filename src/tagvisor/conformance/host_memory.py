"""The host moves a guest's tagged pages: swap, page migration (soft offline) and KSM.

Each scenario boots the tag-owner guest (guests/tag-owner) with a second memslot (slot 1,
OWNER_GPA, 16 pages of private anonymous memory, PROT_MTE in the VMM or not). The VMM
writes a pattern on pages 0-5 (pages 0 and 1 alike, 4 and 5 alike); the *writer* guest
stores OWNER_TAG on pages 0-3 with STG; the VMM plants COPY_TAG on page 4 with COPY_TAGS
TO_GUEST (page 5 stays untagged). Then the host is made to move the pages, and a
*reader* guest, a second VM over the same memory, reads pages 0-3 with LDG at its first
touch, and the VMM reads pages 0-5 back with COPY_TAGS FROM_GUEST and compares the data.

Linux's rules, which the model follows (tagvisor.host): swap saves a tagged page's tags
and restores them at swap-in (arch/arm64/mm/mteswap.c); migration copies them with the
data (copy_highpage, arch/arm64/mm/copypage.c); KSM never merges a page that is
PG_mte_tagged (memcmp_pages, arch/arm64/kernel/mte.c).

Tag sets are masks, as in tagvisor.conformance.owners (bit t: some granule holds tag t).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from tagvisor.conformance.owners import (
    COPY_TAG,
    GRANULES,
    OWNER_GPA,
    OWNER_SLOT,
    OWNER_TAG,
    PAGE,
    _dispose,
    _machine,
    guest_masks,
    mask_of,
)
from tagvisor.conformance.programs import run_with_watchdog
from tagvisor.conformance.scenarios import Result, add_slot, copy_tags, scenario
from tagvisor.guests import reports
from tagvisor.kvm.api import Kvm, UserMemory
from tagvisor.kvm.uapi import KVM_ARM_TAGS_TO_GUEST
from tagvisor.vmm.machine import Machine

#: Pages the VMM writes and reads back: 0-3 the guest tags, 4 COPY_TAGS tags, 5 untagged.
PAGES: Final = 6
LENGTH: Final = PAGES * PAGE
#: The slot: 16 pages, less than a PMD, so that no kernel backs it with a transparent
#: huge page (6.7+ aligns anonymous mappings of 2 MiB and more to THP boundaries,
#: efa7df3e3bb5, and the testbed's THP is "always"; KVM then maps the whole 2 MiB and
#: sanitises the tags of all its pages, which the model does not follow).
SLOT_SIZE: Final = 16 * PAGE


def pattern(page: int) -> bytes:
    """Page ``page``'s data: pages 0 and 1 alike, 4 and 5 alike (KSM's candidates), none
    zero (a zero page merges with any other)."""
    fill = {0: 0x5A, 1: 0x5A, 4: 0xC3, 5: 0xC3}.get(page, 0x10 + page)
    return bytes([fill]) * PAGE


def from_guest(kvm: Kvm, machine: Machine) -> dict[str, Any]:
    """COPY_TAGS FROM_GUEST of PAGES pages: its outcome and each page's mask."""
    user = kvm.user_memory
    buffer = user.map_anonymous(PAGE)
    try:
        done = copy_tags(machine.vm, OWNER_GPA, LENGTH, buffer)
        tags = user.read(buffer, PAGES * GRANULES)
    finally:
        user.unmap(buffer, PAGE)
    masks = [mask_of(tags[i * GRANULES : (i + 1) * GRANULES]) for i in range(PAGES)]
    return {"outcome": done, "masks": masks if done > 0 else []}


def _to_guest(kvm: Kvm, machine: Machine, page: int, tag: int) -> int:
    user = kvm.user_memory
    buffer = user.map_anonymous(PAGE)
    try:
        user.write(buffer, bytes([tag]) * GRANULES)
        return copy_tags(machine.vm, OWNER_GPA + page * PAGE, PAGE, buffer, KVM_ARM_TAGS_TO_GUEST)
    finally:
        user.unmap(buffer, PAGE)


def guest(kvm: Kvm, hva: int, store_tag: int, result: Result, prefix: str) -> Machine:
    """A tag-owner VM with slot 1 over ``hva``, run to its end: ``<prefix>.slot``,
    ``.state``, ``.status`` and the masks it reported, LDG at first touch (``.before``)
    and after its STGs (``.after``)."""
    machine = _machine(kvm, store_tag)
    result[f"{prefix}.slot"] = add_slot(machine.vm, OWNER_SLOT, OWNER_GPA, SLOT_SIZE, hva)
    run = run_with_watchdog(machine)
    result[f"{prefix}.state"] = run.state.value
    result[f"{prefix}.status"] = run.exit_status
    result[f"{prefix}.before"] = guest_masks(machine, reports.OWNER_BEFORE)
    if store_tag:
        result[f"{prefix}.after"] = guest_masks(machine, reports.OWNER_AFTER)
    return machine


def _data_kept(user: UserMemory, hva: int) -> list[bool]:
    return [user.read(hva + i * PAGE, PAGE) == pattern(i) for i in range(PAGES)]


def _moved(before: list[int] | None, after: list[int] | None) -> int | None:
    """How many pages are on another frame than before (None: frames not visible)."""
    if before is None or after is None:
        return None
    return sum(1 for a, b in zip(before, after, strict=True) if a and b and a != b)


Move = Callable[[UserMemory, int], dict[str, Any]]


def moved_and_read_back(kvm: Kvm, mte: bool, move: Move) -> Result:
    """The writer, ``move`` (its fields as ``move.<name>``), the reader, FROM_GUEST and the
    data; whether pages changed frames (``move.pages_moved``)."""
    user = kvm.user_memory
    result: Result = {}
    hva = user.map_anonymous(SLOT_SIZE, mte=mte)
    machines: list[Machine] = []
    try:
        for page in range(PAGES):
            user.write(hva + page * PAGE, pattern(page))
        writer = guest(kvm, hva, OWNER_TAG, result, "writer")
        machines.append(writer)
        result["to_guest_page4"] = _to_guest(kvm, writer, 4, COPY_TAG)
        result["from_guest_before"] = from_guest(kvm, writer)
        frames = user.frame_numbers(hva, PAGES)
        result["_frames_before"] = frames
        result.update({f"move.{k}": v for k, v in move(user, hva).items()})
        # Again once the writer's VM is gone (its stage 2 with it): what a live VM's
        # mapping of the pages changes.
        _dispose(kvm, machines.pop(), None)
        result.update({f"move_writer_gone.{k}": v for k, v in move(user, hva).items()})
        machines.append(guest(kvm, hva, 0, result, "reader"))
        result["from_guest_after"] = from_guest(kvm, machines[-1])
        result["data_kept"] = _data_kept(user, hva)
        after = user.frame_numbers(hva, PAGES)
        result["_frames_after"] = after
        result["_move.pages_moved"] = _moved(frames, after)
    finally:
        for machine in machines:
            _dispose(kvm, machine, None)
        user.unmap(hva, SLOT_SIZE)
    return result


def _variants(kvm: Kvm, move: Move) -> Result:
    """``moved_and_read_back`` with the VMM's mapping plain (``vmm_plain.``) and PROT_MTE
    (``vmm_prot_mte.``)."""
    result: Result = {}
    for name, mte in (("vmm_plain", False), ("vmm_prot_mte", True)):
        for key, value in moved_and_read_back(kvm, mte, move).items():
            fact = key.startswith("_")
            result[f"{'_' if fact else ''}{name}.{key.lstrip('_')}"] = value
    return result


def _page_out(user: UserMemory, hva: int) -> dict[str, Any]:
    return {"in_swap": user.page_out(hva, LENGTH)}


def _soft_offline(user: UserMemory, hva: int) -> dict[str, Any]:
    return {"outcome": user.soft_offline(hva, LENGTH)}


@scenario(
    "swap: MADV_PAGEOUT of a guest's tagged pages (zram); the tags come back at swap-in, "
    "read by a second guest's LDG and by COPY_TAGS FROM_GUEST"
)
def swap_keeps_guest_tags(kvm: Kvm) -> Result:
    """Module docstring, with MADV_PAGEOUT as the move: ``move.in_swap`` pages went out."""
    return _variants(kvm, _page_out)


@scenario(
    "page migration: MADV_SOFT_OFFLINE moves each of a guest's tagged pages to a new "
    "frame; its tags move with it"
)
def migration_keeps_guest_tags(kvm: Kvm) -> Result:
    """Module docstring, with MADV_SOFT_OFFLINE of each page as the move; ``pages_moved``
    counts the pages on a new frame afterwards (pagemap)."""
    result = _variants(kvm, _soft_offline)
    for name in ("vmm_plain", "vmm_prot_mte"):  # the frames moving is the point here
        result[f"{name}.move.pages_moved"] = result.pop(f"_{name}.move.pages_moved")
    return result


def _pair(kvm: Kvm, *, mte: bool, fill: int) -> int:
    """Two pages alike, in a mapping of their own (PROT_MTE if ``mte``)."""
    user = kvm.user_memory
    address = user.map_anonymous(2 * PAGE, mte=mte)
    user.write(address, bytes([fill]) * (2 * PAGE))
    return address


def _merged(user: UserMemory, address: int) -> bool | None:
    """Whether the pages at ``address`` and one page on share a frame (KSM merged them)."""
    frames = user.frame_numbers(address, 2)
    return None if frames is None else frames[0] != 0 and frames[0] == frames[1]


@scenario(
    "KSM: equal untagged pages merge; equal pages a guest tagged, or in a PROT_MTE "
    "mapping, never do (arm64 memcmp_pages)"
)
def ksm_skips_tagged_pages(kvm: Kvm) -> Result:
    """The writer guest as in the module docstring (plain VMM mapping), plus two pairs of
    equal pages in mappings of their own, plain and PROT_MTE (tags all zero); all made
    MADV_MERGEABLE and scanned; which pairs share a frame, then the reader guest's LDG."""
    user = kvm.user_memory
    result: Result = {}
    hva = user.map_anonymous(SLOT_SIZE)
    plain, tagged = _pair(kvm, mte=False, fill=0x77), _pair(kvm, mte=True, fill=0x99)
    machines: list[Machine] = []
    try:
        for page in range(PAGES):
            user.write(hva + page * PAGE, pattern(page))
        machines.append(guest(kvm, hva, OWNER_TAG, result, "writer"))
        result["_frames_before"] = user.frame_numbers(hva, PAGES)
        result["ksm"] = user.ksm_merge([(hva, LENGTH), (plain, 2 * PAGE), (tagged, 2 * PAGE)])
        result["_frames_after"] = user.frame_numbers(hva, PAGES)
        result["merged.slot_guest_tagged_0_1"] = _merged(user, hva)
        result["merged.slot_untagged_4_5"] = _merged(user, hva + 4 * PAGE)
        result["merged.plain_pair"] = _merged(user, plain)
        result["merged.prot_mte_pair"] = _merged(user, tagged)
        _dispose(kvm, machines.pop(), None)  # again without the writer's VM
        result["ksm_writer_gone"] = user.ksm_merge([(hva, LENGTH)])
        result["merged_writer_gone.slot_untagged_4_5"] = _merged(user, hva + 4 * PAGE)
        machines.append(guest(kvm, hva, 0, result, "reader"))
        result["from_guest_after"] = from_guest(kvm, machines[-1])
        result["data_kept"] = _data_kept(user, hva)
    finally:
        for machine in machines:
            _dispose(kvm, machine, None)
        for address, length in ((hva, SLOT_SIZE), (plain, 2 * PAGE), (tagged, 2 * PAGE)):
            user.unmap(address, length)
    return result
