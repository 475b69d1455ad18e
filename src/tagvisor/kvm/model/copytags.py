"""KVM_ARM_MTE_COPY_TAGS: the VMM reads or writes guest tags in bulk.

arch/arm64/kvm/guest.c kvm_vm_ioctl_mte_copy_tags. The checks, in the kernel's order,
each EINVAL: MTE not enabled; reserved words non-zero; unknown flag bits; guest_ipa or
length not page aligned; (6.4+) length above INT_MAX. Then (6.12+) TO_GUEST while any
memslot logs dirty pages is EBUSY, even for length 0.

Then page by page: no memslot, no VMM mapping, or a TO_GUEST write into a read-only
slot is EFAULT. FROM_GUEST of a page never tagged gives zeros; TO_GUEST keeps only the
low nibble of each byte and marks the page tagged. The pages are reached through the
VMM's mapping (get_user_pages), not through stage 2: no stage-2 entry is made and the
dirty bitmap is not touched (the reason for the 6.12 EBUSY rule). The user buffer holds
one tag per byte, 256 bytes per page; if it runs out part way through a page, the copy
stops there.

Returns ``length`` on success; if it stopped part way after some whole pages, the bytes
of guest memory those pages cover; otherwise the error.

The work is vectorised: whole runs of pages are gathered, converted and scattered with
NumPy; only the page where a copy stops is handled on its own.
"""

from __future__ import annotations

import errno

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.constants import GRANULES_PER_PAGE, PACKED_TAGS_PER_PAGE, PAGE_SIZE
from tagvisor.arch.tagformat import pack_tags, unpack_tags
from tagvisor.host.frames import FrameTable, consecutive
from tagvisor.host.process import HostProcess
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.model.memslots import MemslotTable
from tagvisor.kvm.model.profiles import KernelProfile
from tagvisor.kvm.uapi import KVM_ARM_TAGS_FROM_GUEST, kvm_arm_copy_mte_tags

IOCTL = "KVM_ARM_MTE_COPY_TAGS"
INT_MAX = 2**31 - 1
TAG_BYTES_PER_PAGE = GRANULES_PER_PAGE  # one tag per byte in the user buffer


def _einval(detail: str) -> KvmError:
    return KvmError(errno.EINVAL, IOCTL, detail)


def validate(
    copy: kvm_arm_copy_mte_tags, *, mte_enabled: bool, profile: KernelProfile, logging: int
) -> bool:
    """Run the argument checks in the kernel's order; return whether it is TO_GUEST."""
    if not mte_enabled:
        raise _einval("MTE is not enabled for this VM: KVM_ENABLE_CAP(KVM_CAP_ARM_MTE) first")
    if copy.reserved[0] or copy.reserved[1]:
        raise _einval("reserved fields must be zero")
    if copy.flags & ~KVM_ARM_TAGS_FROM_GUEST:
        raise _einval(f"unknown flags {copy.flags:#x}: only KVM_ARM_TAGS_FROM_GUEST (1)")
    if copy.length % PAGE_SIZE or copy.guest_ipa % PAGE_SIZE:
        raise _einval("guest_ipa and length must be multiples of the 4 KiB page size")
    if profile.copy_tags_checks_int_max and copy.length > INT_MAX:
        raise _einval("length must not exceed INT_MAX; copy in smaller pieces")
    to_guest = not copy.flags & KVM_ARM_TAGS_FROM_GUEST
    if to_guest and profile.copy_tags_busy_while_logging and logging:
        raise KvmError(
            errno.EBUSY,
            IOCTL,
            "tags cannot be written while a memslot logs dirty pages (Linux 6.12+)",
        )
    return to_guest


def copy_tags(
    copy: kvm_arm_copy_mte_tags,
    *,
    memslots: MemslotTable,
    process: HostProcess,
    profile: KernelProfile,
    mte_enabled: bool,
) -> int:
    """The whole ioctl: checks, then the copy. Raises KvmError or returns bytes covered."""
    to_guest = validate(
        copy, mte_enabled=mte_enabled, profile=profile, logging=memslots.logging_count()
    )
    npages = copy.length // PAGE_SIZE
    done, failure = _copy_pages(copy, npages, to_guest, memslots, process, profile)
    if done:
        return done * PAGE_SIZE
    if failure is not None:
        raise failure
    return 0


def _guest_pages(
    gpa: int, npages: int, to_guest: bool, memslots: MemslotTable, process: HostProcess
) -> tuple[list[tuple[int, int]], KvmError | None]:
    """Runs of (first hva, page count) covering the guest range, up to the first bad page."""
    runs: list[tuple[int, int]] = []
    page = 0
    while page < npages:
        address = gpa + page * PAGE_SIZE
        memslot = memslots.find(address)
        if memslot is None:
            return runs, KvmError(errno.EFAULT, IOCTL, f"no memslot covers IPA {address:#x}")
        if to_guest and memslot.readonly:
            return runs, KvmError(errno.EFAULT, IOCTL, f"memslot {memslot.slot} is read-only")
        first = (address - memslot.guest_phys_addr) // PAGE_SIZE
        count = min(memslot.npages - first, npages - page)
        hva = memslot.hva_of(first)
        reachable = process.accessible_prefix(hva, count * PAGE_SIZE, write=to_guest)
        whole = reachable // PAGE_SIZE
        if whole:
            runs.append((hva, whole))
        if whole < count:
            return runs, KvmError(errno.EFAULT, IOCTL, f"no VMM mapping behind IPA {address:#x}")
        page += count
    return runs, None


def _copy_pages(
    copy: kvm_arm_copy_mte_tags,
    npages: int,
    to_guest: bool,
    memslots: MemslotTable,
    process: HostProcess,
    profile: KernelProfile,
) -> tuple[int, KvmError | None]:
    runs, failure = _guest_pages(copy.guest_ipa, npages, to_guest, memslots, process)
    ok_pages = sum(count for _, count in runs)
    # The user buffer: FROM_GUEST writes it, TO_GUEST reads it.
    buffer_bytes = (
        process.accessible_prefix(copy.addr, ok_pages * TAG_BYTES_PER_PAGE, write=not to_guest)
        if ok_pages
        else 0
    )
    whole = min(ok_pages, buffer_bytes // TAG_BYTES_PER_PAGE)
    partial = buffer_bytes - whole * TAG_BYTES_PER_PAGE if whole < ok_pages else 0
    if whole < ok_pages:
        failure = KvmError(errno.EFAULT, IOCTL, f"the tag buffer at {copy.addr:#x} runs out")
    if not whole and not partial:
        return 0, failure
    pfns = np.concatenate(
        [process.fault_in(hva, count * PAGE_SIZE, write=to_guest) for hva, count in runs]
    )[: whole + (1 if partial else 0)]
    frames = process.frames
    buffer = copy.addr
    if to_guest:
        _to_guest(frames, process, pfns[:whole], buffer, profile)
        if partial:
            _to_guest_partial(frames, process, int(pfns[whole]), buffer, whole, partial, profile)
    else:
        _from_guest(frames, process, pfns[:whole], buffer)
        if partial:
            tags = _read_guest_tags(frames, pfns[whole : whole + 1])[:partial]
            process.write(buffer + whole * TAG_BYTES_PER_PAGE, tags.tobytes())
    return whole, failure


def _read_guest_tags(
    frames: FrameTable, pfns: NDArray[np.int64], out: NDArray[np.uint8] | None = None
) -> NDArray[np.uint8]:
    """One tag per byte for each page, into ``out`` if given; zeros for untagged pages."""
    first = int(pfns[0])
    if consecutive(pfns):
        packed = frames.packed_pages[first : first + pfns.size]
    else:
        packed = frames.packed_pages[pfns]
    if out is None:
        out = np.empty(pfns.size * TAG_BYTES_PER_PAGE, np.uint8)
    unpack_tags(np.ascontiguousarray(packed).reshape(-1), out)
    untagged = ~frames.mte_tagged[frames.folio_head[pfns]]
    if untagged.any():
        out.reshape(-1, TAG_BYTES_PER_PAGE)[untagged] = 0
    return out


def _from_guest(
    frames: FrameTable, process: HostProcess, pfns: NDArray[np.int64], buffer: int
) -> None:
    if not pfns.size:
        return
    view = process.contiguous_view(buffer, pfns.size * TAG_BYTES_PER_PAGE, write=True)
    if view is not None:
        _read_guest_tags(frames, pfns, out=view)  # straight into the user's pages
    else:
        process.write(buffer, _read_guest_tags(frames, pfns).data)


def _read_user(process: HostProcess, buffer: int, length: int) -> NDArray[np.uint8]:
    view = process.contiguous_view(buffer, length, write=False)
    if view is not None:
        return view
    return np.frombuffer(process.read(buffer, length), np.uint8)


def _to_guest(
    frames: FrameTable,
    process: HostProcess,
    pfns: NDArray[np.int64],
    buffer: int,
    profile: KernelProfile,
) -> None:
    if not pfns.size:
        return
    # The user buffer piece by piece where its frames break (none of it copied), as
    # long as every piece holds whole bytes of packed tags; else in one copy.
    parts = process.span_views(buffer, pfns.size * TAG_BYTES_PER_PAGE, write=False)
    if any(part.size % 2 for part in parts):
        parts = [np.concatenate(parts)]
    # 6.2+: try_page_mte_tagging (result ignored), copy, set_page_mte_tagged. Earlier:
    # copy, then set the flag because the whole page copied. Either way: tagged.
    frames.try_mte_tagging(pfns)
    in_place = consecutive(pfns)
    if in_place:  # pack straight into the frames' tag storage
        first = int(pfns[0])
        packed = frames.packed_pages[first : first + pfns.size].reshape(-1)
    else:
        packed = np.empty(pfns.size * PACKED_TAGS_PER_PAGE, np.uint8)
    done = 0
    for part in parts:
        pack_tags(part, packed[done : done + part.size // 2], low_nibble_only=True)
        done += part.size // 2
    if not in_place:
        frames.packed_pages[pfns] = packed.reshape(-1, PACKED_TAGS_PER_PAGE)
    frames.tag_inits[pfns] += 1
    frames.set_mte_tagged(frames.folio_head[pfns])


def _to_guest_partial(
    frames: FrameTable,
    process: HostProcess,
    pfn: int,
    buffer: int,
    whole: int,
    got: int,
    profile: KernelProfile,
) -> None:
    """The page whose user copy ran out after ``got`` tags."""
    base = pfn * GRANULES_PER_PAGE
    if profile.partial_to_guest_clears_page:
        frames.try_mte_tagging(np.array([pfn]))
        frames.packed_pages[pfn] = 0  # mte_clear_page_tags
        frames.set_mte_tagged(frames.folio_head[np.array([pfn])])
    else:
        raw = _read_user(process, buffer + whole * TAG_BYTES_PER_PAGE, got)
        frames.tags.set(base, raw, low_nibble_only=True)
