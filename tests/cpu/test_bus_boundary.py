"""The cpu package stands on its own protocols: no KVM model, no host model underneath.

A fake bus of a few lines (three pages of RAM at 0x4000_0000, nothing else) runs real
guest code on :class:`A64Core`, so :mod:`tagvisor.cpu.bus` is all the core needs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

import numpy as np
from numpy.typing import NDArray

import tagvisor
from tagvisor.arch import with_tag
from tagvisor.arch.state import MteState
from tagvisor.arch.sysregs import SctlrMte, TcrMte
from tagvisor.arch.tagformat import U8
from tagvisor.cpu import A64Core
from tagvisor.cpu.bus import CORE_SP_EL1, MmioExit
from tagvisor.kvm.uapi import MAIR_EL1, SCTLR_EL1, TCR_EL1, TTBR0_EL1, TTBR1_EL1, ExitReason
from tests.cpu.asm import assemble

RAM: Final = 0x4000_0000
PAGES: Final = 3
CODE: Final = RAM
TABLE: Final = RAM + 0x1000
DATA: Final = RAM + 0x2000
UART: Final = 0x0900_0000
#: Level-1 blocks, accessed: the first GiB Device (MAIR index 0), RAM's Normal Tagged
#: (MAIR index 1).
DEVICE_BLOCK: Final = 1 << 10 | 1
RAM_BLOCK: Final = RAM | 1 << 2 | 3 << 8 | 1 << 10 | 1
#: MAIR index 0 Device-nGnRnE, 1 Normal Tagged; T0SZ 25 (level-1 start), EPD1, 40-bit IPS.
MAIR: Final = 0xF0 << 8
TCR: Final = 25 | 0x3500 | 1 << 23 | 2 << 32 | 1 << 37  # and TBI0, for tagged pointers
SCTLR: Final = 1 | 1 << 43  # M (MMU on) and ATA (EL1 may reach allocation tags)


@dataclass
class Generation:
    generation: int = 0


@dataclass
class Frames:
    data: NDArray[np.uint8] = field(default_factory=lambda: np.zeros((PAGES, 4096), np.uint8))
    packed_pages: NDArray[np.uint8] = field(
        default_factory=lambda: np.zeros((PAGES, 128), np.uint8)
    )


class CountingLock:
    """An RLock that counts how often it was taken."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.taken = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.taken += 1
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None:
        self.release()


@dataclass
class FakeBus:
    """RAM pages map to host frames 0, 1 and 2, all writable; the rest is MMIO."""

    memslots: Generation = field(default_factory=Generation)
    frames: Frames = field(default_factory=Frames)
    lock: CountingLock = field(default_factory=CountingLock)
    lookups: list[int] = field(default_factory=list)

    def page_for(self, gpa: int, *, write: bool) -> tuple[int, bool]:
        self.lookups.append(gpa >> 12)
        if not RAM <= gpa < RAM + PAGES * 4096:
            raise MmioExit(gpa, write)
        return (gpa - RAM) >> 12, True

    def _granule(self, gpa: int) -> tuple[int, int]:
        offset = gpa - RAM
        return offset >> 12, (offset & 0xFFF) >> 4

    def load_tags(self, gpa: int, count: int) -> U8:
        pfn, first = self._granule(gpa)
        packed = self.frames.packed_pages[pfn]
        granules = range(first, first + count)
        return np.array([packed[g >> 1] >> (4 * (g & 1)) & 15 for g in granules], np.uint8)

    def store_tags(self, gpa: int, tags: U8) -> None:
        pfn, first = self._granule(gpa)
        packed = self.frames.packed_pages[pfn]
        for g, tag in enumerate(tags.tolist(), first):
            shift = 4 * (g & 1)
            packed[g >> 1] = (int(packed[g >> 1]) & ~(15 << shift)) | tag << shift

    def write(self, gpa: int, data: bytes) -> None:
        flat = self.frames.data.reshape(-1)
        flat[gpa - RAM : gpa - RAM + len(data)] = np.frombuffer(data, np.uint8)


@dataclass
class Registers:
    core: list[int] = field(default_factory=lambda: [0] * (CORE_SP_EL1 + 5))
    sysregs: dict[int, int] = field(default_factory=dict)


@dataclass
class FakeContext:
    regs: Registers
    stage2: FakeBus
    tag_access: bool = True
    id_aa64pfr1: int = 2 << 8
    gmid_trap_ec: int | None = None

    def mte_state(self) -> MteState:
        sysregs = self.regs.sysregs
        sctlr, tcr = SctlrMte.from_raw(sysregs[SCTLR_EL1]), TcrMte.from_raw(sysregs[TCR_EL1])
        return MteState(el=1, sctlr=sctlr, tcr=tcr, hcr_ata=self.tag_access)

    def save_mte_state(self, state: MteState) -> None:
        pass


def booted(source: str) -> FakeContext:
    """``source`` at CODE in EL1h with the MMU on over one tagged 1 GiB block."""
    bus = FakeBus()
    bus.write(CODE, assemble(source, CODE))
    bus.write(TABLE, DEVICE_BLOCK.to_bytes(8, "little") + RAM_BLOCK.to_bytes(8, "little"))
    regs = Registers()
    regs.core[32] = CODE
    regs.core[33] = 0x3C5  # EL1h, DAIF masked
    regs.sysregs.update({SCTLR_EL1: SCTLR, TCR_EL1: TCR, MAIR_EL1: MAIR})
    regs.sysregs.update({TTBR0_EL1: TABLE, TTBR1_EL1: 0})
    return FakeContext(regs, bus)


#: Adds, tags a granule and reads the tag back, stores and loads RAM, writes to UART.
PROGRAM: Final = f"""
    ldr x2, =0x{DATA:x}
    ldr x4, =0x{UART:x}
    mov x0, #5
    add x1, x0, #3
    stg x6, [x6]
    add x3, x2, #0x20
    ldg x3, [x3]
    str x1, [x2]
    ldr x5, [x2]
    str x5, [x4]
    hvc #0
"""
#: Stores to and loads from RAM, then stops.
RAM_ONLY: Final = f"""
    ldr x2, =0x{DATA:x}
    mov x1, #7
    str x1, [x2]
    ldr x5, [x2]
    hvc #0
"""


def test_importing_cpu_loads_neither_the_kvm_model_nor_the_host() -> None:
    """Scenario: a fresh interpreter imports tagvisor.cpu and lists tagvisor's modules;
    none is tagvisor.kvm.model or tagvisor.host (or below them)."""
    src = Path(tagvisor.__file__).parents[1]
    path = os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    listing = "import sys, tagvisor.cpu; print(*sorted(m for m in sys.modules if 'tagvisor' in m))"
    out = subprocess.run(
        [sys.executable, "-c", listing], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "tagvisor.cpu.core" in out
    above = [m for m in out if m.startswith(("tagvisor.kvm.model", "tagvisor.host"))]
    assert above == []


def test_a_fake_bus_runs_guest_code_through_the_protocol() -> None:
    """Scenario: the guest adds, tags a granule with STG and reads it back with LDG,
    stores and loads RAM, then writes the sum to an address no page backs.

    Registers, tags and memory land where the fake bus keeps them; the store outside
    RAM comes back as an MMIO exit, PC on it, found through the bus's MmioExit; every
    block ran holding the bus's lock."""
    context = booted(PROGRAM)
    context.regs.core[6] = with_tag(DATA + 0x20, 9)
    core = A64Core(wfi_sleep=0)
    exit_ = core.run(context)
    assert exit_.reason is ExitReason.MMIO
    assert exit_.mmio is not None
    assert (exit_.mmio.phys_addr, exit_.mmio.is_write) == (UART, True)
    assert exit_.mmio.data == (8).to_bytes(8, "little")
    core_regs = context.regs.core
    assert core_regs[1] == core_regs[5] == 8
    assert context.stage2.load_tags(DATA + 0x20, 1).tolist() == [9]
    assert core_regs[3] == with_tag(DATA + 0x20, 9)
    assert int.from_bytes(context.stage2.frames.data[2, :8].tobytes(), "little") == 8
    assert context.stage2.lock.taken >= 1
    exit_ = core.run(context)  # the MMIO write completes; then the HVC
    assert exit_.reason is ExitReason.HYPERCALL


def test_moving_the_generation_makes_the_core_look_pages_up_again() -> None:
    """Scenario: a store-and-load guest runs three times from the start. The second
    run reuses the cached stage-2 answer for the data page; before the third the
    bus's generation moves, and the core asks the bus for the page again."""
    context = booted(RAM_ONLY)
    core = A64Core(wfi_sleep=0)
    lookups = context.stage2.lookups
    runs = []
    for bump in (0, 0, 1):
        context.stage2.memslots.generation += bump
        context.regs.core[32] = CODE
        assert core.run(context).reason is ExitReason.HYPERCALL
        runs.append(lookups.count(DATA >> 12))
        assert context.regs.core[5] == 7
    assert runs == [1, 1, 2]
