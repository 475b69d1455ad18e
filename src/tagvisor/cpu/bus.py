"""What the A64 core needs from the physical side, as protocols the KVM model implements.

The core owns this boundary so it imports nothing above it: ``tagvisor.kvm.model``
implements :class:`PhysicalBus` (its ``Stage2Mmu``) and :class:`CoreContext` (its
``GuestContext``), and whoever builds the model's KVM hands it an :class:`A64Core`.

Exactly what the core touches, and how often:

* ``page_for`` on a stage-2 miss (the answer is cached per guest page until the
  generation moves); it raises :class:`MmioExit` where no memslot gives RAM.
* ``load_tags`` / ``store_tags`` for the MTE instructions and tag checks that leave
  the fast paths.
* ``lock`` around every translated block, so a dirty-log harvest or an MMU notifier
  never lands between a block's generation check and its stores.
* ``memslots.generation`` once per block and once per fast-path access: the fast
  paths bind the object once and read the attribute, so it must be a plain counter
  that moves whenever any cached stage-2 answer may have changed.
* ``frames.data`` and ``frames.packed_pages``, read once when the core binds to a VM:
  the fast paths index their buffers directly by host frame number.
"""

from __future__ import annotations

from types import TracebackType
from typing import Final, Protocol

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.state import MteState
from tagvisor.arch.tagformat import U8

#: Where SP_EL1 lives in :attr:`RegisterFile.core` (after x0-x30, SP_EL0, PC, PSTATE).
CORE_SP_EL1: Final = 34


class MmioExit(Exception):
    """The guest touched an address that no writable memslot covers: KVM_EXIT_MMIO."""

    def __init__(self, gpa: int, write: bool) -> None:
        super().__init__(f"MMIO {'write' if write else 'read'} at {gpa:#x}")
        self.gpa = gpa
        self.write = write


class GenerationCounter(Protocol):
    """Counts changes that invalidate cached stage-2 answers (memslot table edits,
    MMU-notifier unmaps, dirty-log write protection)."""

    @property
    def generation(self) -> int:
        """A counter that moves whenever a cached stage-2 answer may be stale."""
        ...


class HostFrames(Protocol):
    """The host's frame arrays, one row per host frame: 4096 data bytes, and 128 bytes
    of packed tags (two per byte, the even granule's in the low nibble)."""

    @property
    def data(self) -> NDArray[np.uint8]:
        """Page data, one 4096-byte row per host frame."""
        ...

    @property
    def packed_pages(self) -> NDArray[np.uint8]:
        """Allocation tags, one 128-byte row of packed tags per host frame."""
        ...


class BusLock(Protocol):
    """The stage-2 lock: reentrant, held while a block runs."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool:
        """Take the lock as ``threading.RLock.acquire`` does."""
        ...

    def release(self) -> None:
        """Release the lock once."""
        ...

    def __enter__(self) -> bool: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...


class PhysicalBus(Protocol):
    """Guest-physical memory of one VM as the core reaches it: stage 2."""

    @property
    def memslots(self) -> GenerationCounter:
        """The memslot table's generation counter."""
        ...

    @property
    def frames(self) -> HostFrames:
        """The host frames that back guest RAM, for the fast paths to index by frame."""
        ...

    @property
    def lock(self) -> BusLock:
        """The stage-2 lock the core holds around each translated block."""
        ...

    def page_for(self, gpa: int, *, write: bool) -> tuple[int, bool]:
        """(host frame, stage-2 writable) of the page holding ``gpa``, faulted in for
        a ``write`` or a read; raises :class:`MmioExit` where no memslot gives RAM."""
        ...

    def load_tags(self, gpa: int, count: int) -> U8:
        """Allocation tags of ``count`` granules from granule-aligned ``gpa``."""
        ...

    def store_tags(self, gpa: int, tags: U8) -> None:
        """Store tags from granule-aligned ``gpa``: a write for stage 2."""
        ...


class RegisterFile(Protocol):
    """A VCPU's registers: ``core`` is x0-x30, SP_EL0, PC, PSTATE, then SP_EL1 at
    :data:`CORE_SP_EL1`; ``sysregs`` is keyed by ONE_REG id (:mod:`tagvisor.kvm.uapi`).

    ``sysregs`` must hold SCTLR_EL1, TCR_EL1, TTBR0_EL1, TTBR1_EL1 and MAIR_EL1 (read
    at every run) and VBAR_EL1 once the guest can take an exception; the core writes
    ELR, SPSR, ESR and FAR_EL1 there and adds other registers on first use.
    """

    @property
    def core(self) -> list[int]:
        """x0-x30, SP_EL0, PC, PSTATE and SP_EL1, in KVM's ``kvm_regs`` order."""
        ...

    @property
    def sysregs(self) -> dict[int, int]:
        """The system registers by ONE_REG id."""
        ...


class CoreContext(Protocol):
    """A VCPU as ``A64Core.run`` sees it: its registers, its VM's bus, its MTE state."""

    @property
    def regs(self) -> RegisterFile:
        """The VCPU's registers, loaded at the start of a run and saved at its end."""
        ...

    @property
    def stage2(self) -> PhysicalBus:
        """The VM's guest-physical memory (stage 2)."""
        ...

    @property
    def tag_access(self) -> bool:
        """HCR_EL2.ATA: whether the guest may reach allocation tags at all."""
        ...

    @property
    def id_aa64pfr1(self) -> int:
        """ID_AA64PFR1_EL1 as the VCPU's register holds it (what KVM_GET_ONE_REG reads):
        an MRS of it returns this, as a guest under KVM sees its VCPU's value."""
        ...

    @property
    def gmid_trap_ec(self) -> int | None:
        """What an MRS of GMID_EL1 raises: None when it is not trapped (it reads the
        hardware's value), else the exception class the hypervisor injects (0x00 UNDEF
        or 0x18 with the trap's syndrome)."""
        ...

    def mte_state(self) -> MteState:
        """The arch MTE state from the registers, as the core starts running."""
        ...

    def save_mte_state(self, state: MteState) -> None:
        """Write back what the run changed in MTE state (RGSR, TFSR)."""
        ...
