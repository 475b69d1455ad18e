"""The ways a VMM reaches guest data and tags, behind one interface.

The seed thread (Steven Price, 2020) weighed how a VMM can touch tagged guest memory
without tripping its own tag checks, and how it can read the tags at all:

* ``copy-tags``: a plain (untagged) mapping for data, KVM_ARM_MTE_COPY_TAGS for tags.
  What Linux offers; works on every backend.
* ``prot-mte+tco``: guest RAM mapped PROT_MTE in the VMM, tags read and written as the
  process itself would (LDG/STG), and PSTATE.TCO set around the VMM's data accesses so
  its untagged pointers do not fault.
* ``prot-mte+tcma``: the same mapping, with data reached through match-all pointers
  (TCMA0 and tag 0). Linux does not let user space set TCMA0: this is the seed's
  proposal, modelled as such.

Plus ``prot-mte-naive``: a PROT_MTE mapping with checks on and nothing done about them,
which is what the seed warned against: the VMM faults on the guest's own tags.

The PROT_MTE ways need a VMM that can issue LDG/STG on its own mappings (the
backend's :meth:`~tagvisor.kvm.api.UserMemory.tagged_mapping` capability, which the
model has): on a real host Python cannot issue LDG or set TCO, so only ``copy-tags``
runs there.
"""

from __future__ import annotations

from typing import Final, Protocol

import numpy as np

from tagvisor.arch.constants import PAGE_SIZE, TAG_GRANULE
from tagvisor.arch.errors import TagCheckFault
from tagvisor.arch.state import MteState
from tagvisor.arch.sysregs import TagCheckMode, TcrMte
from tagvisor.arch.tagcheck import check_access
from tagvisor.arch.tagformat import U8
from tagvisor.errors import TagvisorError
from tagvisor.kvm.api import TaggedMapping, UserMemory, Vm
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.uapi import KVM_ARM_TAGS_FROM_GUEST, KVM_ARM_TAGS_TO_GUEST, kvm_arm_copy_mte_tags
from tagvisor.vmm.memory import GuestMemory

SEGV_MTESERR: Final = 9
#: COPY_TAGS refuses more than INT_MAX bytes (Linux 6.4+); copy in pieces.
COPY_CHUNK: Final = 1 << 30


class TagAccessError(TagvisorError):
    """The VMM could not read or write guest tags the way it was configured to."""


class VmmTagFault(TagvisorError):
    """The VMM's own untagged access met a guest tag: SIGSEGV with ``si_code``
    SEGV_MTESERR, as Linux delivers a synchronous tag check fault to user space."""

    def __init__(self, address: int, detail: str) -> None:
        super().__init__(f"SIGSEGV (si_code {SEGV_MTESERR}) at {address:#x}: {detail}")
        self.address = address
        self.si_code = SEGV_MTESERR


class TagAccess(Protocol):
    """How this VMM reaches guest memory: data without tripping checks, and tags."""

    name: str

    def read_data(self, gpa: int, length: int) -> bytes:
        """``length`` bytes of guest memory at ``gpa``, without tripping a tag check."""
        ...

    def write_data(self, gpa: int, data: bytes) -> None:
        """Store ``data`` into guest memory at ``gpa``, without tripping a tag check."""
        ...

    def read_tags(self, gpa: int, granules: int, out: U8 | None = None) -> U8:
        """Tags of ``granules`` granules from granule-aligned ``gpa``, one per byte (into
        ``out`` if given, which is then returned)."""
        ...

    def write_tags(self, gpa: int, tags: U8) -> None:
        """Set the tags of ``tags.size`` granules from granule-aligned ``gpa``, one per byte."""
        ...


class CopyTagsAccess:
    """Plain mapping for data; KVM_ARM_MTE_COPY_TAGS for tags, whole pages at a time."""

    name = "copy-tags"

    def __init__(self, vm: Vm, memory: GuestMemory, user: UserMemory) -> None:
        self.vm = vm
        self.memory = memory
        self.user = user
        self._buffer = 0
        self._buffer_size = 0

    def _bounce(self, size: int) -> int:
        if size > self._buffer_size:
            if self._buffer:
                self.user.unmap(self._buffer, self._buffer_size)
            self._buffer_size = -(-size // PAGE_SIZE) * PAGE_SIZE
            self._buffer = self.user.map_anonymous(self._buffer_size)
        return self._buffer

    def read_data(self, gpa: int, length: int) -> bytes:
        """Guest data through the VMM's plain mapping."""
        return self.memory.read(gpa, length)

    def write_data(self, gpa: int, data: bytes) -> None:
        """Guest data through the VMM's plain mapping (marked dirty)."""
        self.memory.write(gpa, data)

    def _copy(self, first_page: int, pages: int, *, to_guest: bool) -> int:
        buffer = self._bounce(pages * PAGE_SIZE // TAG_GRANULE)
        flags = KVM_ARM_TAGS_TO_GUEST if to_guest else KVM_ARM_TAGS_FROM_GUEST
        for offset in range(0, pages * PAGE_SIZE, COPY_CHUNK):
            length = min(COPY_CHUNK, pages * PAGE_SIZE - offset)
            args = kvm_arm_copy_mte_tags(
                guest_ipa=first_page + offset,
                length=length,
                addr=buffer + offset // TAG_GRANULE,
                flags=flags,
            )
            try:
                done = self.vm.arm_mte_copy_tags(args)
            except KvmError as error:
                raise TagAccessError(
                    f"copying tags at {first_page + offset:#x}: {error}"
                ) from error
            if done != length:
                raise TagAccessError(
                    f"KVM_ARM_MTE_COPY_TAGS covered {done} of {length} bytes at "
                    f"{first_page + offset:#x}: part of the range has no memslot"
                )
        return buffer

    def read_tags(self, gpa: int, granules: int, out: U8 | None = None) -> U8:
        """Tags through KVM_ARM_MTE_COPY_TAGS FROM_GUEST of the whole pages involved."""
        first = gpa - gpa % PAGE_SIZE
        end = gpa + granules * TAG_GRANULE
        pages = -(-(end - first) // PAGE_SIZE)
        buffer = self._copy(first, pages, to_guest=False)
        skip = (gpa - first) // TAG_GRANULE
        # One copy out of the bounce buffer, through a view of it where the backend
        # gives one, else through read().
        bounced = self.user.view(buffer + skip, granules)
        if bounced is None:
            bounced = np.frombuffer(self.user.read(buffer + skip, granules), np.uint8)
        if out is None:
            return np.array(bounced, np.uint8)
        np.copyto(out, bounced)
        return out

    def write_tags(self, gpa: int, tags: U8) -> None:
        """Tags through KVM_ARM_MTE_COPY_TAGS TO_GUEST (read-modify-write of partial pages)."""
        first = gpa - gpa % PAGE_SIZE
        end = gpa + tags.size * TAG_GRANULE
        pages = -(-(end - first) // PAGE_SIZE)
        whole = (gpa == first) and (end - first) % PAGE_SIZE == 0
        window = tags if whole else self.read_tags(first, pages * PAGE_SIZE // TAG_GRANULE)
        if not whole:  # read-modify-write of the partial pages
            skip = (gpa - first) // TAG_GRANULE
            window[skip : skip + tags.size] = tags
        buffer = self._bounce(pages * PAGE_SIZE // TAG_GRANULE)
        self.user.write(buffer, np.ascontiguousarray(window, np.uint8).reshape(-1).data)
        self._copy(first, pages, to_guest=True)


class ProcessMteAccess:
    """Guest RAM mapped PROT_MTE in a VMM process that checks its own accesses.

    ``avoid_checks`` is how the VMM keeps its untagged pointers from faulting on the
    guest's tags: ``"tco"`` (PSTATE.TCO set around each access), ``"tcma"`` (TCMA0 with
    match-all tag 0; not available to Linux user space, modelled as the seed's
    proposal) or ``"none"`` (the naive way: faults become SIGSEGV/SEGV_MTESERR).
    """

    def __init__(
        self, tagging: TaggedMapping, memory: GuestMemory, user: UserMemory, avoid_checks: str
    ) -> None:
        if avoid_checks not in ("tco", "tcma", "none"):
            raise ValueError(f"unknown way to avoid tag checks: {avoid_checks!r}")
        self.tagging = tagging
        self.memory = memory
        self.user = user
        self.avoid_checks = avoid_checks
        self.name = "prot-mte-naive" if avoid_checks == "none" else f"prot-mte+{avoid_checks}"
        self.state = MteState.linux_user(TagCheckMode.SYNC)
        if avoid_checks == "tcma":
            self.state.tcr = TcrMte(tbi0=True, tcma0=True)
        for region in memory.regions:
            if not tagging.is_tagged(region.hva):
                raise TagAccessError(
                    f"{self.name} needs guest RAM mapped PROT_MTE in the VMM "
                    "(MachineBuilder.memory(..., vmm_prot_mte=True))"
                )

    def _hva(self, gpa: int, length: int) -> int:
        region = self.memory.region_of(gpa, length)
        return region.hva + gpa - region.gpa

    def _check(self, hva: int, length: int, *, write: bool) -> None:
        """The VMM process's own tag check of a data access through its pointer."""
        self.state.tco = self.avoid_checks == "tco"
        memory = _CheckedTags(self.tagging, self.user)
        try:
            check_access(self.state, memory, hva, length, write=write)
        except TagCheckFault as fault:
            raise VmmTagFault(
                fault.address, "the VMM's untagged pointer met a guest tag (tag check fault)"
            ) from None
        finally:
            self.state.tco = False

    def read_data(self, gpa: int, length: int) -> bytes:
        """Guest data through the PROT_MTE mapping, checked as this way's pointers are."""
        hva = self._hva(gpa, length)
        self._check(hva, length, write=False)
        return self.user.read(hva, length)

    def write_data(self, gpa: int, data: bytes) -> None:
        """Guest data through the PROT_MTE mapping, checked as this way's pointers are."""
        hva = self._hva(gpa, len(data))
        self._check(hva, len(data), write=True)
        self.memory.write(gpa, data)

    def read_tags(self, gpa: int, granules: int, out: U8 | None = None) -> U8:
        """Tags by the VMM's own LDG on its PROT_MTE mapping."""
        tags = self.tagging.load_tags(self._hva(gpa, granules * TAG_GRANULE), granules)
        if out is None:
            return tags
        np.copyto(out, tags)
        return out

    def write_tags(self, gpa: int, tags: U8) -> None:
        """Tags by the VMM's own STG on its PROT_MTE mapping (the pages marked dirty)."""
        self.tagging.store_tags(self._hva(gpa, tags.size * TAG_GRANULE), tags)
        region = self.memory.region_of(gpa)
        first = (gpa - region.gpa) // PAGE_SIZE
        last = (gpa - region.gpa + tags.size * TAG_GRANULE - 1) // PAGE_SIZE
        region.mark_dirty(slice(first, last + 1))


class _CheckedTags:
    """The arch TagMemory over the VMM's mappings (untagged outside PROT_MTE)."""

    def __init__(self, tagging: TaggedMapping, user: UserMemory) -> None:
        self.tagging = tagging
        self.user = user

    def load_tags(self, address: int, count: int) -> U8:
        return self.tagging.checked_tags(address, count)

    def store_tags(self, address: int, tags: U8) -> None:
        self.tagging.store_tags(address, tags)

    def write_data(self, address: int, data: bytes) -> None:
        self.user.write(address, data)


WAYS: Final = ("copy-tags", "prot-mte+tco", "prot-mte+tcma", "prot-mte-naive")


def make_tag_access(way: str, vm: Vm, memory: GuestMemory, user: UserMemory) -> TagAccess:
    """The configured way; the PROT_MTE ones need the VMM's own tag instructions
    (UserMemory.tagged_mapping)."""
    if way == "copy-tags":
        return CopyTagsAccess(vm, memory, user)
    if way not in WAYS:
        raise ValueError(f"unknown tag access way {way!r}; choose from {', '.join(WAYS)}")
    tagging = user.tagged_mapping()
    if tagging is None:
        raise TagAccessError(
            f"{way} needs LDG/STG and PSTATE.TCO from the VMM, which Python cannot do on a "
            "real host; use copy-tags"
        )
    avoid = {"prot-mte+tco": "tco", "prot-mte+tcma": "tcma", "prot-mte-naive": "none"}[way]
    return ProcessMteAccess(tagging, memory, user, avoid)
