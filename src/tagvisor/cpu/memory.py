"""Data accesses by virtual address: fast paths for translated code and the slow path.

The **slow path** (:meth:`GuestMemory.load` / :meth:`GuestMemory.store`) does an
access the way the Arm ARM's Mem[] does: alignment (explicit or SCTLR_EL1.A), TBI,
stage-1 translation and permissions page by page, the Device-memory alignment rule,
the tag check through :func:`tagvisor.arch.check_access` over the pages actually
touched, then the data through stage 2. A store checks everything before writing
anything (as QEMU does, and as the arch model assumes). Guest physical pages are
cached as gfn -> (host frame, stage-2 writable) until ``memslots.generation``
changes; a write to a page cached read-only goes through the bus's ``page_for(...,
write=True)`` (:mod:`tagvisor.cpu.bus`) so that dirty logging sees it. No memslot means MMIO:
:class:`~tagvisor.cpu.exceptions.MmioRequest`, or the data the VMM gave when the
instruction is replayed after the exit.

The **fast paths** (``R1``..``R8``, ``W1``..``W8``, pair forms ``RP4``, ``RP8``,
``WP4``, ``WP8``) serve naturally aligned accesses inside one page from four small
dicts keyed by the full 64-bit VA page (top byte included, so the logical tag is
fixed per key) mapping to the page's offset in the host frame array. A slow access
that succeeded fills them: "unchecked" when the arch rules say the access is not tag
checked for that key (or TCF is NONE, where a mismatch has no effect), "checked"
otherwise; the checked fast path compares the pointer's tag with the granule's tag in
the frame table itself and falls back to the slow path - and so to
``arch.check_access`` - on any mismatch. On a match ``check_access`` would return
MATCH and change nothing, so both paths agree. Write entries exist only for pages that
are stage-2 writable and hold no translated code. The core runs each block holding
the bus's stage-2 lock after checking the memslot generation, so dirty-log harvesting and
MMU notifiers never fall between that check and a store through a cached entry; every
fast path also compares the generation itself (memslot changes do not take the lock).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Final

from tagvisor.arch.errors import TagCheckFault
from tagvisor.arch.pointer import strip_top_byte
from tagvisor.arch.sysregs import TagCheckMode
from tagvisor.arch.tagcheck import access_is_tag_checked, check_access
from tagvisor.cpu.bus import MmioExit, PhysicalBus
from tagvisor.cpu.exceptions import (
    FSC_ALIGNMENT,
    FSC_PERMISSION,
    FSC_TAG_CHECK,
    GuestException,
    MmioRequest,
    data_abort,
)
from tagvisor.cpu.mmu import (
    DEVICE,
    TAGGED,
    Stage1Mmu,
    TlbEntry,
    WalkFault,
    permission_needed,
)
from tagvisor.cpu.state import CpuState
from tagvisor.cpu.tagmem import VirtualTagMemory
from tagvisor.kvm.uapi import SCTLR_EL1, TCR_EL1

PAGE: Final = 4096
SCTLR_A: Final = 1 << 1
TCR_TBI0: Final = 1 << 37
TCR_TBI1: Final = 1 << 38
TCR_TBID0: Final = 1 << 51
TCR_TBID1: Final = 1 << 52

if sys.byteorder != "little":  # pragma: no cover - the memoryview casts assume it
    raise ImportError("tagvisor.cpu needs a little-endian host")


def _fast_source() -> str:
    """Source of the fast accessors; constants are inlined per size."""
    out = []
    for size, view, log in ((1, "V1", 0), (2, "V2", 1), (4, "V4", 2), (8, "V8", 3)):
        align = f"not va & {size - 1} and " if size > 1 else ""
        out.append(f"""
def R{size}(va):
    if {align}ms.generation == gv[0]:
        h = ru.get(va >> 12)
        if h is not None:
            return {view}[(h | (va & 4095)) >> {log}]
        h = rc.get(va >> 12)
        if h is not None:
            o = h | (va & 4095)
            t = tg[o >> 5]
            if (t >> 4 if o & 16 else t & 15) == (va >> 56) & 15:
                return {view}[o >> {log}]
    return slow_read(va, {size})

def W{size}(va, v):
    if {align}ms.generation == gv[0]:
        h = wu.get(va >> 12)
        if h is not None:
            {view}[(h | (va & 4095)) >> {log}] = v
            return
        h = wc.get(va >> 12)
        if h is not None:
            o = h | (va & 4095)
            t = tg[o >> 5]
            if (t >> 4 if o & 16 else t & 15) == (va >> 56) & 15:
                {view}[o >> {log}] = v
                return
    slow_write(va, {size}, v)
""")
    for size, view, log in ((4, "V4", 2), (8, "V8", 3)):
        last = PAGE - 2 * size
        out.append(f"""
def RP{size}(va):
    o = va & 4095
    if not va & {size - 1} and o <= {last} and ms.generation == gv[0]:
        h = ru.get(va >> 12)
        if h is not None:
            i = (h | o) >> {log}
            return {view}[i], {view}[i + 1]
        h = rc.get(va >> 12)
        if h is not None:
            o |= h
            g = (va >> 56) & 15
            t = tg[o >> 5]
            if (t >> 4 if o & 16 else t & 15) == g:
                e = o + {2 * size - 1}
                t = tg[e >> 5]
                if (t >> 4 if e & 16 else t & 15) == g:
                    i = o >> {log}
                    return {view}[i], {view}[i + 1]
    return slow_read_pair(va, {size})

def WP{size}(va, a, b):
    o = va & 4095
    if not va & {size - 1} and o <= {last} and ms.generation == gv[0]:
        h = wu.get(va >> 12)
        if h is not None:
            i = (h | o) >> {log}
            {view}[i] = a
            {view}[i + 1] = b
            return
        h = wc.get(va >> 12)
        if h is not None:
            o |= h
            g = (va >> 56) & 15
            t = tg[o >> 5]
            if (t >> 4 if o & 16 else t & 15) == g:
                e = o + {2 * size - 1}
                t = tg[e >> 5]
                if (t >> 4 if e & 16 else t & 15) == g:
                    i = o >> {log}
                    {view}[i] = a
                    {view}[i + 1] = b
                    return
    slow_write_pair(va, {size}, a, b)
""")
    return "".join(out)


_FAST_CODE: Final = compile(_fast_source(), "<tagvisor.cpu fast memory>", "exec")


class GuestMemory:
    """Virtual-address data access for one core, over the VM's stage 2."""

    def __init__(self, state: CpuState, stage2: PhysicalBus) -> None:
        self.state = state
        self.stage2 = stage2
        self.memslots = stage2.memslots
        self.mmu = Stage1Mmu(state.sysregs, self._read_descriptor)
        frames = stage2.frames
        # ndarray.data is the array's buffer; both arrays live as long as the frames.
        flat = frames.data.data.cast("B")
        self._v1 = flat
        self._v8 = flat.cast("Q")
        self._tags = frames.packed_pages.data.cast("B")
        #: gfn -> (host frame, stage-2 writable), valid for one memslot generation.
        self.s2_cache: dict[int, tuple[int, bool]] = {}
        self.generation = [self.memslots.generation]
        self.read_unchecked: dict[int, int] = {}
        self.read_checked: dict[int, int] = {}
        self.write_unchecked: dict[int, int] = {}
        self.write_checked: dict[int, int] = {}
        #: Host frames holding translated code; writes to them call ``on_code_write``.
        self.code_frames: set[int] = set()
        self.on_code_write: Callable[[int], None] = lambda pfn: None
        #: Called when the memslot generation moved (translations to rebuild).
        self.on_generation: Callable[[], None] = lambda: None
        #: Accesses that took the slow path (for tests and benchmarks).
        self.slow_accesses = 0
        #: MMIO results for the instruction being replayed after an MMIO exit.
        self.mmio_done: list[bytes] = []
        self.mmio_index = 0
        self.fast = self._build_fast()

    def bind(self, state: CpuState) -> None:
        """Follow a new register file (KVM_RUN builds the state afresh each time)."""
        self.state = state
        self.mmu.sysregs = state.sysregs

    # -- fast paths -------------------------------------------------------------------

    def _build_fast(self) -> dict[str, Callable[..., Any]]:
        flat = self._v1
        namespace: dict[str, Any] = {
            "V1": flat,
            "V2": flat.cast("H"),
            "V4": flat.cast("I"),
            "V8": self._v8,
            "tg": self._tags,
            "ru": self.read_unchecked,
            "rc": self.read_checked,
            "wu": self.write_unchecked,
            "wc": self.write_checked,
            "ms": self.memslots,
            "gv": self.generation,
            "slow_read": self.read_int,
            "slow_write": self.write_int,
            "slow_read_pair": self.read_pair,
            "slow_write_pair": self.write_pair,
        }
        exec(_FAST_CODE, namespace)
        names = [f"{p}{s}" for p in ("R", "W") for s in (1, 2, 4, 8)]
        names += [f"{p}{s}" for p in ("RP", "WP") for s in (4, 8)]
        return {name: namespace[name] for name in names}

    def flush_fast(self) -> None:
        """Forget the fast-path entries (EL, TCO, SCTLR, TCR, MAIR, TTBR, TLBI changed)."""
        self.read_unchecked.clear()
        self.read_checked.clear()
        self.write_unchecked.clear()
        self.write_checked.clear()

    def flush_tlb(self) -> None:
        """Forget the stage-1 TLB and the fast-path entries built on it."""
        self.mmu.flush()
        self.flush_fast()

    def sync_generation(self) -> None:
        """Drop every cached stage-2 answer if the memslot generation moved."""
        generation = self.memslots.generation
        if generation != self.generation[0]:
            self.generation[0] = generation
            self.s2_cache.clear()
            self.flush_fast()
            self.on_generation()

    # -- guest physical ---------------------------------------------------------------

    def frame_of(self, gpa: int, *, write: bool) -> int | None:
        """Host frame of the page holding ``gpa``, faulting it in; None if no memslot."""
        gfn = gpa >> 12
        cached = self.s2_cache.get(gfn)
        if cached is not None and (cached[1] or not write):
            return cached[0]
        try:
            pfn, writable = self.stage2.page_for(gpa, write=write)
        except MmioExit:
            return None
        self.s2_cache[gfn] = (pfn, writable)
        return pfn

    def _read_descriptor(self, pa: int) -> int | None:
        pfn = self.frame_of(pa, write=False)
        if pfn is None:
            return None
        return int(self._v8[(pfn << 9) | ((pa & 0xFFF) >> 3)])

    def read_phys(self, gpa: int, size: int, elem: int = 8) -> bytes:
        """Bytes of guest RAM (one page at most); MMIO goes to the VMM in accesses of
        ``elem`` bytes at most (a pair is two MMIO accesses, as kvm_run.mmio holds 8)."""
        pfn = self.frame_of(gpa, write=False)
        if pfn is None:
            step = min(elem, size)
            return b"".join(
                self._mmio(gpa + at, min(step, size - at), b"", write=False)
                for at in range(0, size, step)
            )
        offset = (pfn << 12) | (gpa & 0xFFF)
        return bytes(self._v1[offset : offset + size])

    def write_phys(self, gpa: int, data: bytes, elem: int = 8) -> None:
        """Store bytes to guest RAM (one page at most) through stage 2's write path;
        MMIO in accesses of ``elem`` bytes at most."""
        pfn = self.frame_of(gpa, write=True)
        if pfn is None:
            step = min(elem, len(data))
            for at in range(0, len(data), step):
                self._mmio(gpa + at, len(data[at : at + step]), data[at : at + step], write=True)
            return
        if pfn in self.code_frames:
            self.on_code_write(pfn)
        offset = (pfn << 12) | (gpa & 0xFFF)
        self._v1[offset : offset + len(data)] = data

    def page_bytes(self, host_offset: int, size: int) -> bytes:
        """Bytes at an offset in the host frame array (instruction fetch)."""
        return bytes(self._v1[host_offset : host_offset + size])

    def _mmio(self, gpa: int, size: int, data: bytes, *, write: bool) -> bytes:
        index = self.mmio_index
        if index < len(self.mmio_done):
            self.mmio_index = index + 1
            return self.mmio_done[index]
        raise MmioRequest(gpa, size, write, data)

    def code_frame_added(self, pfn: int) -> None:
        """A block was translated from ``pfn``: stores to it must take the slow path."""
        if pfn in self.code_frames:
            return
        self.code_frames.add(pfn)
        host = pfn << 12
        for table in (self.write_unchecked, self.write_checked):
            for key in [key for key, value in table.items() if value == host]:
                del table[key]

    # -- translation ------------------------------------------------------------------

    def canonical(self, va: int, *, instruction: bool = False) -> int:
        """The address stage 1 sees: top byte ignored under TBI (TBID limits it to data)."""
        tcr = self.state.sysregs[TCR_EL1]
        if va >> 55 & 1:
            tbi = tcr & TCR_TBI1 and not (instruction and tcr & TCR_TBID1)
        else:
            tbi = tcr & TCR_TBI0 and not (instruction and tcr & TCR_TBID0)
        return strip_top_byte(va) if tbi else va

    def translate_data(self, va: int, *, write: bool, el: int, far: int) -> tuple[TlbEntry, int]:
        """(TLB entry, guest physical address) for a data access; raises the abort."""
        try:
            entry = self.mmu.translate(va)
        except WalkFault as fault:
            raise data_abort(fault.fsc, far, write=write) from None
        if not entry.perms & permission_needed(write=write, el=el):
            raise data_abort(FSC_PERMISSION + entry.level, far, write=write)
        return entry, entry.pa | (va & 0xFFF)

    # -- the slow path ----------------------------------------------------------------

    def _pieces(
        self, va: int, size: int, *, write: bool, el: int, far: int | None = None
    ) -> list[tuple[TlbEntry, int, int, int]]:
        """(entry, gpa, offset in the access, length) per page touched, all translated.

        A fault reports the first byte of the page that faulted, or ``far`` if given.
        """
        address = self.canonical(va)
        pieces = []
        done = 0
        while done < size:
            here = address + done
            length = min(size - done, PAGE - (here & 0xFFF))
            fault_address = far if far is not None else (va + done) & ((1 << 64) - 1)
            entry, gpa = self.translate_data(here, write=write, el=el, far=fault_address)
            pieces.append((entry, gpa, done, length))
            done += length
        return pieces

    def _check_alignment(self, va: int, size: int, elem: int, align: int, write: bool) -> None:
        if (align and va % align) or (self.state.sysregs[SCTLR_EL1] & SCTLR_A and va % elem):
            raise data_abort(FSC_ALIGNMENT, va, write=write)

    def _tag_check(
        self, va: int, size: int, pieces: list[tuple[TlbEntry, int, int, int]], write: bool, el: int
    ) -> bool:
        """Run the arch tag check if any touched page is Normal Tagged; True if checked."""
        if not any(piece[0].memtype == TAGGED for piece in pieces):
            return False
        mte = self.state.mte
        saved_el = mte.el
        mte.el = el  # LDTR/STTR are checked as EL0 accesses
        try:
            if not access_is_tag_checked(mte, va, write=write):
                return False
            memory = VirtualTagMemory(self, write=False, el=el, pointer=va)
            try:
                check_access(mte, memory, va, size, write=write)
            except TagCheckFault as fault:
                raise data_abort(FSC_TAG_CHECK, fault.address, write=write) from None
        finally:
            mte.el = saved_el
        return mte.tag_check_mode(el) is not TagCheckMode.NONE

    def load(
        self, va: int, size: int, *, elem: int | None = None, align: int = 0, el: int | None = None
    ) -> bytes:
        """Read ``size`` bytes at ``va`` as a data load (see the module docstring)."""
        self.slow_accesses += 1
        self.sync_generation()
        state = self.state
        access_el = state.el if el is None else el
        elem = size if elem is None else elem
        self._check_alignment(va, size, elem, align, False)
        pieces = self._pieces(va, size, write=False, el=access_el)
        if pieces[0][0].memtype == DEVICE and va % elem:
            raise data_abort(FSC_ALIGNMENT, va, write=False)
        checked = self._tag_check(va, size, pieces, False, access_el)
        if len(pieces) == 1:
            entry, gpa, _, _ = pieces[0]
            data = self.read_phys(gpa, size, elem)
            if el is None:
                self._fill(va, gpa, entry, checked, write=False)
            return data
        return b"".join(self.read_phys(gpa, length, elem) for _, gpa, _, length in pieces)

    def store(
        self,
        va: int,
        data: bytes,
        *,
        elem: int | None = None,
        align: int = 0,
        el: int | None = None,
    ) -> None:
        """Write ``data`` at ``va`` as a data store: every check before any byte moves."""
        self.slow_accesses += 1
        self.sync_generation()
        state = self.state
        size = len(data)
        access_el = state.el if el is None else el
        elem = size if elem is None else elem
        self._check_alignment(va, size, elem, align, True)
        pieces = self._pieces(va, size, write=True, el=access_el)
        if pieces[0][0].memtype == DEVICE and va % elem:
            raise data_abort(FSC_ALIGNMENT, va, write=True)
        checked = self._tag_check(va, size, pieces, True, access_el)
        for _, gpa, offset, length in pieces:
            self.write_phys(gpa, data[offset : offset + length], elem)
        if len(pieces) == 1 and el is None:
            self._fill(va, pieces[0][1], pieces[0][0], checked, write=True)

    def _fill(self, va: int, gpa: int, entry: TlbEntry, checked: bool, *, write: bool) -> None:
        cached = self.s2_cache.get(gpa >> 12)
        if cached is None:
            return  # MMIO
        pfn, writable = cached
        key = va >> 12
        host = pfn << 12
        if not write:
            (self.read_checked if checked else self.read_unchecked)[key] = host
        elif writable and pfn not in self.code_frames:
            (self.write_checked if checked else self.write_unchecked)[key] = host

    def zero_block(self, va: int, size: int) -> None:
        """DC ZVA: zero the naturally aligned ``size``-byte block holding ``va``.

        It is a store for translation, permissions and tag checking. Faults report
        ``va`` itself, the register operand (Arm ARM; QEMU differs, see docs/oracle.md),
        and Device memory gives an alignment fault.
        """
        self.sync_generation()
        el = self.state.el
        block = va & ~(size - 1)
        pieces = self._pieces(block, size, write=True, el=el, far=va)
        if any(piece[0].memtype == DEVICE for piece in pieces):
            raise data_abort(FSC_ALIGNMENT, va, write=True)
        try:
            self._tag_check(block, size, pieces, True, el)
        except GuestException as fault:
            raise data_abort(FSC_TAG_CHECK, va, write=True) from fault
        zeros = bytes(size)
        for _, gpa, offset, length in pieces:
            self.write_phys(gpa, zeros[offset : offset + length])

    # -- integer forms the fast paths fall back to ----------------------------------------

    def read_int(self, va: int, size: int) -> int:
        """A little-endian integer load of ``size`` bytes by the slow path."""
        return int.from_bytes(self.load(va, size), "little")

    def write_int(self, va: int, size: int, value: int) -> None:
        """A little-endian integer store of ``size`` bytes by the slow path."""
        self.store(va, value.to_bytes(size, "little"))

    def read_pair(self, va: int, size: int) -> tuple[int, int]:
        """Two ``size``-byte elements loaded as one access (LDP) by the slow path."""
        data = self.load(va, 2 * size, elem=size)
        return int.from_bytes(data[:size], "little"), int.from_bytes(data[size:], "little")

    def write_pair(self, va: int, size: int, first: int, second: int) -> None:
        """Two ``size``-byte elements stored as one access (STP) by the slow path."""
        data = first.to_bytes(size, "little") + second.to_bytes(size, "little")
        self.store(va, data, elem=size)
