"""A64Core: the A64 interpreter, run as a KVM model VCPU's executor.

``run(context)`` loads the VCPU's registers, runs translated blocks until something
needs the VMM, and stores the registers back. Exits:

* ``HYPERCALL`` for HVC/SMC at EL1, PC already past it: the model's ``vcpu.run``
  handles PSCI from x0 and calls ``run`` again (SYSTEM_OFF ends KVM_RUN there).
* ``MMIO`` for an access no memslot covers; PC stays on the instruction. For a read
  the VMM hands the data to :meth:`A64Core.complete_mmio_read` (KVM_RUN's mmio.data)
  and the next ``run`` replays that one instruction with it before going on; an
  instruction with several MMIO accesses (a pair) exits once per access.
* ``INTR`` when ``max_instructions_per_run`` instructions have run, so a VMM can
  interleave its own work (the model's stand-in for a signal kicking the VCPU), and
  after a WFI: no interrupts are modelled, so WFI completes, but the core first gives
  the host CPU back for ``wfi_sleep`` seconds, as KVM would block the VCPU thread.

Guest exceptions (aborts, SVC, UNDEFINED, ...) never leave ``run``: they go to the
guest's vector. KvmError from stage 2 propagates (KVM_RUN fails), with PC on the
instruction.

Caches, all dropped when what they depend on changes:

* ``blocks``: translated blocks by (VA, IPA) of their first instruction. A store to a
  host frame that holds translated code drops that frame's blocks; IC IALLU drops all.
* the PC cache (VA -> block) used at every block boundary: dropped on TLB flush, on
  a change of EL or of the memslot generation, and when blocks are dropped.
* the stage-1 TLB and the fast memory paths (see :mod:`tagvisor.cpu.memory`).
"""

from __future__ import annotations

import time
from typing import Any, Final

from tagvisor.arch.state import MteState
from tagvisor.cpu.bits import M64
from tagvisor.cpu.bus import CORE_SP_EL1, CoreContext, PhysicalBus
from tagvisor.cpu.entry import exception_return, take_exception
from tagvisor.cpu.exceptions import (
    EC_ILLEGAL_STATE,
    EC_PC_ALIGN,
    FSC_EXTERNAL,
    FSC_PERMISSION,
    GuestException,
    HypercallExit,
    MmioRequest,
    WaitForInterrupt,
    instruction_abort,
    undefined,
)
from tagvisor.cpu.memory import GuestMemory
from tagvisor.cpu.mmu import EXEC_EL0, EXEC_EL1, WalkFault
from tagvisor.cpu.runtime import build_namespace
from tagvisor.cpu.state import PSTATE_IL, CpuState
from tagvisor.cpu.sysreg import SystemRegisters
from tagvisor.cpu.translate import Block, Entry, translate_block
from tagvisor.kvm.api import MmioAccess, VcpuExit
from tagvisor.kvm.uapi import MAIR_EL1, SCTLR_EL1, TCR_EL1, TTBR0_EL1, TTBR1_EL1, ExitReason

DEFAULT_BUDGET: Final = 1_000_000
MAX_BLOCK_INSNS: Final = 128


class A64Core:
    """An A64 processing element at EL0/EL1 running a KVM model VCPU's guest code."""

    def __init__(
        self,
        *,
        max_instructions_per_run: int | None = DEFAULT_BUDGET,
        max_block_instructions: int = MAX_BLOCK_INSNS,
        wfi_sleep: float = 0.001,
    ) -> None:
        # ID_AA64PFR1_EL1 (MTE 2 or 3) is the VCPU's (CoreContext.id_aa64pfr1), not the
        # core's. Asymmetric checking (TCF = 3, FEAT_MTE3) works either way; guests use
        # it only when the VCPU says MTE3.
        self.max_instructions_per_run = max_instructions_per_run
        #: Seconds a WFI idles the host before KVM_RUN returns INTR (0: WFI is a NOP).
        #: Without modelled interrupts an idle guest would otherwise spin a host CPU.
        self.wfi_sleep = wfi_sleep
        self.max_block_instructions = max_block_instructions
        #: Instructions retired (counted per block; a faulting block counts whole).
        self.instructions = 0
        #: Blocks translated, for tests and benchmarks.
        self.translations = 0
        self._stage2: PhysicalBus | None = None
        self._mte = MteState()
        self.state = CpuState({}, self._mte, False)
        self.blocks: dict[tuple[int, ...], Block] = {}
        self._code_keys: dict[int, list[tuple[int, ...]]] = {}
        self._pc_cache: dict[int, Entry] = {}
        self._signature: tuple[Any, ...] | None = None
        self._replay = False
        self._mmio_read_pending = False
        self._memory: GuestMemory | None = None
        self._sysregs: SystemRegisters | None = None
        self._namespace: dict[str, Any] = {}

    # -- the GuestExecutor protocol ---------------------------------------------------------

    def complete_mmio_read(self, data: bytes) -> None:
        """The data for the MMIO read that ended the last run (KVM's mmio.data)."""
        if self._replay and self._mmio_read_pending:
            memory = self.memory
            size = len(memory.mmio_done[-1])
            memory.mmio_done[-1] = bytes(data[:size]).ljust(size, b"\0")
            self._mmio_read_pending = False

    def run(self, context: CoreContext) -> VcpuExit:
        """Run the guest until it needs the VMM (see the module docstring)."""
        self._bind(context)
        self._load(context)
        try:
            return self._execute()
        finally:
            self._save(context)

    def complete_pending(self, context: CoreContext) -> VcpuExit | None:
        """Finish the instruction whose MMIO access ended the last run, and no more.

        What KVM_RUN does first, before it looks at immediate_exit or signals
        (kvm_handle_mmio_return, arch/arm64/kvm/mmio.c). Returns the exit if finishing
        needs the VMM again (the next access of a pair), else None.
        """
        if not self._replay:
            return None
        self._bind(context)
        self._load(context)
        try:
            exit_ = self._execute(pending_only=True)
        finally:
            self._save(context)
        return None if exit_.reason is ExitReason.INTR else exit_

    # -- public helpers ---------------------------------------------------------------------

    @property
    def memory(self) -> GuestMemory:
        """The guest memory paths of the VM the core is bound to (after its first run)."""
        assert self._memory is not None, "the core has not run yet"
        return self._memory

    @property
    def sysregs(self) -> SystemRegisters:
        """The system registers as MRS and MSR reach them (after the first run)."""
        assert self._sysregs is not None, "the core has not run yet"
        return self._sysregs

    def flush_translations(self) -> None:
        """Forget every translated block (for a VMM that rewrote guest code itself)."""
        self.code_changed()

    # -- hooks used by system registers and memory ----------------------------------------------

    def translation_changed(self) -> None:
        """Hook for a write to SCTLR, TCR, TTBR or MAIR_EL1, a TLBI or new registers at a run's
        start: drop the TLB, the fast paths and the PC cache."""
        self.memory.flush_tlb()
        self._pc_cache.clear()

    def checks_changed(self) -> None:
        """Hook for a change of PSTATE.TCO: drop the fast paths, which have tag checking built
        in."""
        self.memory.flush_fast()

    def code_changed(self) -> None:
        """Hook for IC IALLU(IS) or a VMM that rewrote guest code: drop every translated block."""
        self.blocks.clear()
        self._code_keys.clear()
        self._pc_cache.clear()
        if self._memory is not None:
            self._memory.code_frames.clear()

    def _code_written(self, pfn: int) -> None:
        for key in self._code_keys.pop(pfn, ()):
            self.blocks.pop(key, None)
        self.memory.code_frames.discard(pfn)
        self._pc_cache.clear()

    def exception_return(self) -> int:
        """ERET (called by translated code)."""
        state = self.state
        if state.el == 0:
            raise undefined()
        pc = exception_return(state)
        self.memory.flush_fast()
        self._pc_cache.clear()
        return pc

    # -- binding to a VCPU --------------------------------------------------------------------

    def _bind(self, context: CoreContext) -> None:
        if context.stage2 is self._stage2:
            return
        self._stage2 = context.stage2
        memory = GuestMemory(self.state, context.stage2)
        memory.on_code_write = self._code_written
        memory.on_generation = self._pc_cache.clear
        self._memory = memory
        self._sysregs = SystemRegisters(self.state, memory, self)
        self._namespace = build_namespace(self)
        self.code_changed()

    def _load(self, context: CoreContext) -> None:
        regs = context.regs
        state = self.state
        core = regs.core
        state.sysregs = regs.sysregs
        state.tag_access = context.tag_access
        state.id_aa64pfr1 = context.id_aa64pfr1
        state.gmid_trap_ec = context.gmid_trap_ec
        self.memory.bind(state)
        fresh = context.mte_state()
        mte = self._mte
        mte.sctlr, mte.tcr, mte.gcr = fresh.sctlr, fresh.tcr, fresh.gcr
        mte.rgsr, mte.tfsr_el1, mte.tfsre0_el1 = fresh.rgsr, fresh.tfsr_el1, fresh.tfsre0_el1
        mte.hcr_ata = fresh.hcr_ata
        pstate = core[33]
        el = min((pstate >> 2) & 3, 1)
        state.x[:31] = core[:31]
        state.sp_banks = [core[31], core[CORE_SP_EL1]]
        state.el = el
        state.spsel = pstate & 1
        state.x[31] = state.sp_banks[state.sp_index()]
        state.load_pstate((pstate & ~0xF) | el << 2 | (pstate & 1))
        state.pc = core[32]
        signature = self._translation_signature(context)
        if signature != self._signature:
            self.translation_changed()
        self._signature = signature

    def _save(self, context: CoreContext) -> None:
        state = self.state
        core = context.regs.core
        core[:31] = state.x[:31]
        state.sp_banks[state.sp_index()] = state.x[31]
        core[31] = state.sp_banks[0]
        core[CORE_SP_EL1] = state.sp_banks[1]
        core[32] = state.pc & M64
        core[33] = state.pstate()
        context.save_mte_state(state.mte)
        self._signature = self._translation_signature(context)

    def _translation_signature(self, context: CoreContext) -> tuple[Any, ...]:
        """What cached guest-page translations depend on: the same at the next load
        means they still hold."""
        state, sysregs = self.state, context.regs.sysregs
        return (
            id(context.regs),
            sysregs[SCTLR_EL1],
            sysregs[TCR_EL1],
            sysregs[TTBR0_EL1],
            sysregs[TTBR1_EL1],
            sysregs[MAIR_EL1],
            state.el,
            state.mte.tco,
            state.tag_access,
        )

    # -- the loop -----------------------------------------------------------------------------

    def _execute(self, *, pending_only: bool = False) -> VcpuExit:
        state = self.state
        memory = self.memory
        x = state.x
        pc_cache = self._pc_cache
        memslots = memory.memslots
        generation = memory.generation
        # Stage 2's lock is held while a block runs (and only then), so dirty-log
        # harvesting and MMU notifiers never fall between a block's generation check
        # and its stores through cached translations (tagvisor.cpu.bus).
        lock = memory.stage2.lock
        acquire, release = lock.acquire, lock.release
        budget = self.max_instructions_per_run or (1 << 62)
        remaining = budget
        pc = state.pc
        entry: Entry | None = None
        single = self._replay
        while True:
            try:
                if single:
                    entry = None
                    with lock:
                        memory.sync_generation()
                        entry = self._lookup(pc, single=True)
                        memory.mmio_index = 0
                        pc = entry[0](x)
                    self._end_replay()
                    single = False
                    remaining -= 1
                if pending_only:
                    remaining = 0
                while remaining > 0:
                    acquire()
                    try:
                        if memslots.generation != generation[0]:
                            memory.sync_generation()
                        entry = pc_cache.get(pc)
                        if entry is None:
                            entry = self._lookup(pc)
                        pc = entry[0](x)
                    finally:
                        release()
                    remaining -= entry[1]
                state.pc = pc
                self.instructions += budget - remaining
                return VcpuExit(ExitReason.INTR)
            except GuestException as exc:
                fault_pc = self._fault_pc(exc, entry, pc)
                self._end_replay()
                single = False
                pc = self._take_exception(exc, fault_pc)
                remaining -= 1
            except WaitForInterrupt as exc:
                state.pc = (self._fault_pc(exc, entry, pc) + 4) & M64
                self.instructions += budget - remaining
                time.sleep(self.wfi_sleep)  # outside stage 2's lock
                return VcpuExit(ExitReason.INTR)
            except HypercallExit as exc:
                state.pc = (self._fault_pc(exc, entry, pc) + 4) & M64
                self.instructions += budget - remaining
                return VcpuExit(ExitReason.HYPERCALL)
            except MmioRequest as request:
                state.pc = self._fault_pc(request, entry, pc)
                self.instructions += budget - remaining
                return self._mmio_exit(request)
            except BaseException as error:
                state.pc = self._fault_pc(error, entry, pc)
                self._end_replay()
                raise

    def _fault_pc(self, error: BaseException, entry: Entry | None, pc: int) -> int:
        """The PC of the instruction that raised ``error``."""
        known = getattr(error, "pc", None)
        if isinstance(known, int):
            return known
        if entry is None:
            return pc
        block = entry[2]
        tb = error.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code is block.code:
                return block.source.pc_at_line(tb.tb_lineno)
            tb = tb.tb_next
        return pc

    def _take_exception(self, exc: GuestException, pc: int) -> int:
        vector = take_exception(self.state, exc, pc)
        self.memory.flush_fast()  # EL and PSTATE.TCO changed
        self._pc_cache.clear()
        return vector

    # -- MMIO -----------------------------------------------------------------------------------

    def _mmio_exit(self, request: MmioRequest) -> VcpuExit:
        memory = self.memory
        memory.mmio_done.append(b"" if request.is_write else bytes(request.size))
        self._replay = True
        self._mmio_read_pending = not request.is_write
        access = MmioAccess(request.gpa, request.size, request.is_write, request.data)
        return VcpuExit(ExitReason.MMIO, mmio=access)

    def _end_replay(self) -> None:
        if self._replay:
            self._replay = False
            self._mmio_read_pending = False
            self.memory.mmio_done.clear()
            self.memory.mmio_index = 0

    # -- finding and translating blocks ----------------------------------------------------

    def _fetch_fault(self, exc: GuestException, pc: int) -> GuestException:
        exc.pc = pc
        return exc

    def _lookup(self, pc: int, *, single: bool = False) -> Entry:
        """The block at ``pc`` (translating it if needed), entered in the PC cache."""
        state = self.state
        memory = self.memory
        if state.pstate_rest & PSTATE_IL:
            raise self._fetch_fault(GuestException(EC_ILLEGAL_STATE), pc)
        # BranchAddr: under TBI (and not TBID) the top byte of a branch target is ignored.
        va = memory.canonical(pc, instruction=True)
        if va & 3:
            raise self._fetch_fault(GuestException(EC_PC_ALIGN, far=va), va)
        try:
            tlb = memory.mmu.translate(va)
        except WalkFault as fault:
            raise self._fetch_fault(instruction_abort(fault.fsc, va), va) from None
        if not tlb.perms & (EXEC_EL1 if state.el else EXEC_EL0):
            raise self._fetch_fault(instruction_abort(FSC_PERMISSION + tlb.level, va), va)
        gpa = tlb.pa | (va & 0xFFF)
        pfn = memory.frame_of(gpa, write=False)
        if pfn is None:  # executing MMIO: KVM injects an external abort
            raise self._fetch_fault(instruction_abort(FSC_EXTERNAL, va), va)
        key: tuple[int, ...] = (va, gpa, 1) if single else (va, gpa)
        block = self.blocks.get(key)
        if block is None or block.pfn != pfn:
            block = self._translate(key, va, gpa, pfn, 1 if single else None)
        if not single:
            self._pc_cache[pc] = block.entry
            self._pc_cache[va] = block.entry
        return block.entry

    def _translate(
        self, key: tuple[int, ...], va: int, gpa: int, pfn: int, limit: int | None
    ) -> Block:
        memory = self.memory
        offset = gpa & 0xFFF
        count = min(limit or self.max_block_instructions, (4096 - offset) // 4)
        start = (pfn << 12) | offset
        words = memoryview(memory.page_bytes(start, 4 * count)).cast("I").tolist()
        block = translate_block(va, gpa, pfn, words, self._namespace)
        self.translations += 1
        self.blocks[key] = block
        self._code_keys.setdefault(pfn, []).append(key)
        memory.code_frame_added(pfn)
        return block
