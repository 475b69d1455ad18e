"""Exclusives (LDXR/STXR and pairs), load-acquire/store-release, and LSE atomics.

The exclusive monitor is the simple single-PE one the Arm ARM allows: LDXR records the
physical address and size; STXR succeeds (status 0) only for the same address and
size, and every STXR, CLREX, exception entry and exception return clears it. These
instructions always take the slow memory path: each requires natural alignment of
the whole access (an alignment fault otherwise, whatever the memory type), and the
atomics are tag checked as stores (QEMU does the same).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from tagvisor.cpu.exceptions import FSC_ALIGNMENT, data_abort
from tagvisor.cpu.memory import GuestMemory
from tagvisor.cpu.state import CpuState


def _signed(value: int, bits: int) -> int:
    return value - ((value >> (bits - 1)) << bits)


#: LSE load-and-operate, by opc (Arm ARM "Atomic memory operations"): new value from
#: (old, operand, bits).
RMW_OPS: Final[dict[int, Callable[[int, int, int], int]]] = {
    0: lambda old, arg, bits: old + arg,  # LDADD
    1: lambda old, arg, bits: old & ~arg,  # LDCLR
    2: lambda old, arg, bits: old ^ arg,  # LDEOR
    3: lambda old, arg, bits: old | arg,  # LDSET
    4: lambda old, arg, bits: old if _signed(old, bits) >= _signed(arg, bits) else arg,
    5: lambda old, arg, bits: old if _signed(old, bits) <= _signed(arg, bits) else arg,
    6: lambda old, arg, bits: max(old, arg),  # LDUMAX
    7: lambda old, arg, bits: min(old, arg),  # LDUMIN
    8: lambda old, arg, bits: arg,  # SWP
}


class AtomicOps:
    """The helpers translated code calls for exclusive and atomic accesses."""

    def __init__(self, state: CpuState, memory: GuestMemory) -> None:
        self.state = state
        self.memory = memory

    def _physical(self, va: int, *, write: bool) -> int:
        memory = self.memory
        _, gpa = memory.translate_data(memory.canonical(va), write=write, el=self.state.el, far=va)
        return gpa

    # -- acquire / release ------------------------------------------------------------------

    def load_ordered(self, va: int, size: int) -> int:
        """LDAR, LDAPR, LDLAR: an aligned load (ordering is trivially met by one PE)."""
        return int.from_bytes(self.memory.load(va, size, align=size), "little")

    def store_ordered(self, va: int, size: int, value: int) -> None:
        """STLR, STLLR."""
        self.memory.store(va, value.to_bytes(size, "little"), align=size)

    # -- exclusives ---------------------------------------------------------------------------

    def load_exclusive(self, va: int, size: int) -> int:
        """LDXR / LDAXR: load and mark the location in the monitor."""
        value = int.from_bytes(self.memory.load(va, size, align=size), "little")
        self.state.monitor = (self._physical(va, write=False), size)
        return value

    def load_exclusive_pair(self, va: int, size: int) -> tuple[int, int]:
        """LDXP / LDAXP: two elements, aligned to the pair's size."""
        data = self.memory.load(va, 2 * size, align=2 * size, elem=size)
        self.state.monitor = (self._physical(va, write=False), 2 * size)
        return int.from_bytes(data[:size], "little"), int.from_bytes(data[size:], "little")

    def store_exclusive(self, va: int, size: int, data: bytes) -> int:
        """STXR / STLXR / STXP / STLXP: 0 if the store happened, 1 if the monitor failed."""
        memory = self.memory
        if va % size:
            raise data_abort(FSC_ALIGNMENT, va, write=True)
        gpa = self._physical(va, write=True)
        monitor, self.state.monitor = self.state.monitor, None
        if monitor != (gpa, size):
            return 1
        memory.store(va, data, align=size)
        return 0

    def store_exclusive_int(self, va: int, size: int, value: int) -> int:
        """STXR / STLXR of an integer: 0 if the store happened, 1 if the monitor failed."""
        return self.store_exclusive(va, size, value.to_bytes(size, "little"))

    def store_exclusive_pair(self, va: int, size: int, first: int, second: int) -> int:
        """STXP / STLXP of two ``size``-byte elements (low address first): 0 if stored, 1 if the
        monitor failed."""
        data = first.to_bytes(size, "little") + second.to_bytes(size, "little")
        return self.store_exclusive(va, 2 * size, data)

    def clear_monitor(self) -> None:
        """CLREX: clear the exclusive monitor, so the next store-exclusive fails."""
        self.state.monitor = None

    # -- LSE atomics -----------------------------------------------------------------------------

    def rmw(self, op: int, va: int, size: int, operand: int) -> int:
        """LDADD and friends, SWP: returns the old value."""
        memory = self.memory
        old = int.from_bytes(memory.load(va, size, align=size), "little")
        bits = 8 * size
        new = RMW_OPS[op](old, operand, bits) & ((1 << bits) - 1)
        memory.store(va, new.to_bytes(size, "little"), align=size)
        return old

    def cas(self, va: int, size: int, expected: int, new: int) -> int:
        """CAS: store ``new`` if memory holds ``expected``; returns the old value."""
        memory = self.memory
        old = int.from_bytes(memory.load(va, size, align=size), "little")
        if old == expected:
            memory.store(va, new.to_bytes(size, "little"), align=size)
        return old

    def casp(
        self, va: int, size: int, expected: tuple[int, int], new: tuple[int, int]
    ) -> tuple[int, int]:
        """CASP: compare and swap a pair of ``size``-byte elements."""
        memory = self.memory
        data = memory.load(va, 2 * size, align=2 * size, elem=size)
        old = (int.from_bytes(data[:size], "little"), int.from_bytes(data[size:], "little"))
        if old == expected:
            payload = new[0].to_bytes(size, "little") + new[1].to_bytes(size, "little")
            memory.store(va, payload, align=2 * size, elem=size)
        return old
