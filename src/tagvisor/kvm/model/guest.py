"""What runs inside a model VCPU: the execution interface and Python-level guests.

KVM_RUN on the model hands the VCPU to a :class:`GuestExecutor`. The A64 interpreter
(``tagvisor.cpu``) is one; :class:`GeneratorGuest` is another, for guests written as
Python generators that touch memory in bulk through the same stage-2 path a real guest
uses (first-touch tag initialisation, permission faults, dirty logging, tag checks)
and ``yield`` exits to the VMM as a real guest's MMIO or PSCI calls would.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tagvisor.arch.memory import NO_TAG
from tagvisor.arch.state import MteState
from tagvisor.arch.sysregs import GcrEl1, RgsrEl1, SctlrMte, TagCheckMode, TcrMte, Tfsr
from tagvisor.arch.tagcheck import CheckOutcome, check_access
from tagvisor.arch.tagformat import U8
from tagvisor.cpu.bus import MmioExit
from tagvisor.kvm.api import MmioAccess, VcpuExit
from tagvisor.kvm.model.stage2 import Stage2Mmu
from tagvisor.kvm.model.vcpu_regs import VcpuRegisters
from tagvisor.kvm.uapi import (
    GCR_EL1,
    RGSR_EL1,
    SCTLR_EL1,
    TCR_EL1,
    TFSR_EL1,
    TFSRE0_EL1,
    ExitReason,
)


class GuestPhysTagMemory:
    """The arch layer's TagMemory over guest physical memory, through stage 2.

    Guest RAM (any memslot) is taken as Normal Tagged: the guest's own stage-1 tables
    decide that in reality, and the A64 core applies them before reaching here.
    """

    def __init__(self, stage2: Stage2Mmu, tags_enabled: bool) -> None:
        self.stage2 = stage2
        self.tags_enabled = tags_enabled

    def load_tags(self, address: int, count: int) -> U8:
        """Tags of ``count`` granules from ``address`` (NO_TAG while tag access is off)."""
        if not self.tags_enabled:
            return np.full(count, NO_TAG, np.uint8)
        return self.stage2.load_tags(address, count)

    def store_tags(self, address: int, tags: U8) -> None:
        """Store tags from ``address``, if the VCPU may reach allocation tags."""
        if self.tags_enabled:
            self.stage2.store_tags(address, tags)

    def write_data(self, address: int, data: bytes) -> None:
        """Write guest memory at ``address`` through stage 2."""
        self.stage2.write(address, data)


@dataclass
class GuestContext:
    """A VCPU as its executor sees it: registers, memory through stage 2, MTE state.

    The A64 core's :class:`~tagvisor.cpu.bus.CoreContext`.
    """

    regs: VcpuRegisters
    stage2: Stage2Mmu
    #: HCR_EL2.ATA for this VCPU: whether the guest may reach allocation tags at all.
    tag_access: bool
    #: The VCPU's ID_AA64PFR1_EL1, as KVM_GET_ONE_REG reads it: what the guest's MRS sees.
    id_aa64pfr1: int = 0
    #: What the guest's MRS of GMID_EL1 raises (None: not trapped), as the kernel
    #: profile's KVM answers it (ModelVcpu.context).
    gmid_trap_ec: int | None = None

    @property
    def tag_memory(self) -> GuestPhysTagMemory:
        """The arch layer's TagMemory over this VCPU's guest-physical memory."""
        return GuestPhysTagMemory(self.stage2, self.tag_access)

    def mte_state(self) -> MteState:
        """The arch state from the VCPU's registers (RES0 bits ignored, as hardware does)."""
        sysregs = self.regs.sysregs
        state = MteState(
            el=1,
            sctlr=SctlrMte.from_raw(sysregs[SCTLR_EL1]),
            tcr=TcrMte.from_raw(sysregs[TCR_EL1]),
            hcr_ata=self.tag_access,
        )
        state.gcr = GcrEl1.from_raw(sysregs[GCR_EL1] & 0x1FFFF)
        state.rgsr = RgsrEl1.from_raw(sysregs[RGSR_EL1] & RgsrEl1.VALID)
        state.tfsr_el1 = Tfsr.from_raw(sysregs[TFSR_EL1] & Tfsr.VALID)
        state.tfsre0_el1 = Tfsr.from_raw(sysregs[TFSRE0_EL1] & Tfsr.VALID, "TFSRE0_EL1")
        return state

    def save_mte_state(self, state: MteState) -> None:
        """Write back what MTE instructions changed (RGSR, TFSR)."""
        self.regs.sysregs[RGSR_EL1] = state.rgsr.raw
        self.regs.sysregs[TFSR_EL1] = state.tfsr_el1.raw
        self.regs.sysregs[TFSRE0_EL1] = state.tfsre0_el1.raw

    def enable_tag_checks(self, mode: TagCheckMode) -> None:
        """What a guest kernel does to use MTE itself: ATA, TCF, TBI0, GCR/RGSR set up."""
        sysregs = self.regs.sysregs
        sysregs[SCTLR_EL1] = SctlrMte(tcf=mode, ata=True, ata0=True).apply(sysregs[SCTLR_EL1])
        sysregs[TCR_EL1] = TcrMte(tbi0=True).apply(sysregs[TCR_EL1])
        sysregs[GCR_EL1] = 0x1  # exclude tag 0 from IRG, as Linux does for the kernel
        sysregs[RGSR_EL1] = RgsrEl1(tag=0, seed=0xACE1).raw
        sysregs[TFSR_EL1] = 0

    def checked_access(self, ptr: int, size: int, *, write: bool) -> CheckOutcome:
        """Tag-check a data access at a tagged pointer into identity-mapped RAM.

        Raises arch.TagCheckFault for a synchronous fault; records async ones.
        """
        state = self.mte_state()
        outcome = check_access(state, self.tag_memory, ptr, size, write=write)
        self.save_mte_state(state)
        return outcome


class GuestExecutor(Protocol):
    """Runs a VCPU until it needs the VMM: the model's KVM_RUN calls this."""

    def run(self, context: GuestContext) -> VcpuExit:
        """Run until the next exit to the VMM, and say which."""
        ...

    def complete_mmio_read(self, data: bytes) -> None:
        """Data the VMM supplied for the MMIO read that ended the last run."""
        ...

    def complete_pending(self, context: GuestContext) -> VcpuExit | None:
        """Finish the access that ended the last run (KVM_RUN does this before it
        honours a kick); an exit if that needs the VMM again, else None."""
        ...


#: A Python guest: a generator given the context, yielding exits, receiving MMIO data.
GuestProgram = Callable[[GuestContext], Generator[VcpuExit, bytes | None, None]]


class GeneratorGuest:
    """Runs a :data:`GuestProgram`; each KVM_RUN resumes it until its next exit.

    An MMIO access that the program makes through stage 2 (no memslot) surfaces as
    KVM_EXIT_MMIO too; when the program returns, the VCPU reports a PSCI SYSTEM_OFF
    (KVM_EXIT_SYSTEM_EVENT, SHUTDOWN) like a guest kernel powering off.
    """

    def __init__(self, program: GuestProgram) -> None:
        self.program = program
        self._gen: Generator[VcpuExit, bytes | None, None] | None = None
        self._mmio_data: bytes | None = None
        self.finished = False

    def complete_mmio_read(self, data: bytes) -> None:
        """Keep the VMM's data for the read; the program gets it when it resumes."""
        self._mmio_data = data

    def complete_pending(self, context: GuestContext) -> VcpuExit | None:
        """Nothing to finish: the program receives its MMIO data when it resumes."""
        return None

    def run(self, context: GuestContext) -> VcpuExit:
        """Run until the next exit to the VMM, and say which."""
        if self.finished:
            return VcpuExit(ExitReason.SYSTEM_EVENT, system_event=1)
        if self._gen is None:
            self._gen = self.program(context)
            send: bytes | None = None
        else:
            send, self._mmio_data = self._mmio_data, None
        try:
            return self._gen.send(send)
        except MmioExit as mmio:
            return VcpuExit(ExitReason.MMIO, mmio=MmioAccess(mmio.gpa, 8, is_write=mmio.write))
        except StopIteration:
            self.finished = True
            return VcpuExit(ExitReason.SYSTEM_EVENT, system_event=1)


def mmio_write(address: int, value: int) -> VcpuExit:
    """The exit a guest's 8-byte store to an MMIO address produces."""
    return VcpuExit(
        ExitReason.MMIO,
        mmio=MmioAccess(address, 8, is_write=True, data=value.to_bytes(8, "little")),
    )
