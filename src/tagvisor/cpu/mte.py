"""The MTE instructions as the translated code calls them: thin adapters to
:mod:`tagvisor.arch`, which owns the semantics (ChooseNonExcludedTag, the RGSR LFSR,
LDG/STG/... and their alignment and EL rules).

What this layer adds is the guest view: addresses are virtual and reach tags through
:class:`~tagvisor.cpu.tagmem.VirtualTagMemory` (stage 1 with the instruction's
permission, then stage 2), and the architecture's exceptions become guest exceptions
(an alignment fault is a data abort with DFSC 0x21 and WnR set, an UNDEFINED
instruction is EC 0x0).
"""

from __future__ import annotations

from tagvisor.arch import taggen, tagmove
from tagvisor.arch.errors import AlignmentFault, UndefinedInstruction
from tagvisor.cpu.bits import M64
from tagvisor.cpu.exceptions import FSC_ALIGNMENT, data_abort, undefined
from tagvisor.cpu.memory import GuestMemory
from tagvisor.cpu.state import CpuState
from tagvisor.cpu.tagmem import VirtualTagMemory


class MteOps:
    """IRG, GMI, ADDG, SUBG, LDG, STG, ST2G, STZG, STZ2G, STGP, LDGM, STGM, STZGM."""

    def __init__(self, state: CpuState, memory: GuestMemory) -> None:
        self.state = state
        self.memory = memory

    def _tags(self, pointer: int, *, write: bool) -> VirtualTagMemory:
        return VirtualTagMemory(self.memory, write=write, el=self.state.el, pointer=pointer)

    def irg(self, operand: int, exclude: int) -> int:
        """IRG: ``operand`` with a random allocation tag outside ``exclude`` and GCR_EL1.Exclude."""
        return taggen.irg(self.state.mte, operand, exclude)

    @staticmethod
    def gmi(pointer: int, mask: int) -> int:
        """GMI: ``mask`` with the bit of the pointer's logical tag set."""
        return taggen.gmi(pointer, mask)

    def addg(self, pointer: int, granules: int, tag_offset: int) -> int:
        """ADDG: ``pointer`` plus ``granules`` * 16 bytes, its tag advanced by
        ``tag_offset`` (ChooseNonExcludedTag)."""
        return taggen.addg(self.state.mte, pointer, granules, tag_offset)

    def subg(self, pointer: int, granules: int, tag_offset: int) -> int:
        """SUBG: ``pointer`` minus ``granules`` * 16 bytes, its tag advanced by
        ``tag_offset`` (ChooseNonExcludedTag)."""
        return taggen.subg(self.state.mte, pointer, granules, tag_offset)

    def ldg(self, address: int, xt: int) -> int:
        """LDG: ``xt`` with bits 59:56 replaced by the allocation tag of ``address``'s granule."""
        return tagmove.ldg(self.state.mte, self._tags(address, write=False), address, xt)

    def stg(self, address: int, source: int, granules: int, zero: bool) -> None:
        """STG / ST2G / STZG / STZ2G: set ``granules`` granules' tags to ``source``'s logical
        tag, zeroing their data if ``zero``."""
        memory = self._tags(address, write=True)
        try:
            tagmove.stg(self.state.mte, memory, address, source, granules=granules, zero_data=zero)
        except AlignmentFault as fault:
            raise data_abort(FSC_ALIGNMENT, fault.address, write=True) from None

    def stgp(self, address: int, first: int, second: int) -> None:
        """STGP: store 16 bytes of data (``first``, ``second``) and the address's own tag."""
        memory = self._tags(address, write=True)
        try:
            tagmove.stgp(self.state.mte, memory, address, first & M64, second & M64)
        except AlignmentFault as fault:
            raise data_abort(FSC_ALIGNMENT, fault.address, write=True) from None

    def ldgm(self, address: int) -> int:
        """LDGM: the tags of a GMID_EL1.BS block as nibbles (UNDEFINED at EL0)."""
        try:
            return tagmove.ldgm(self.state.mte, self._tags(address, write=False), address)
        except UndefinedInstruction:
            raise undefined() from None

    def stgm(self, address: int, xt: int) -> None:
        """STGM: set a GMID_EL1.BS block's tags from the nibbles of ``xt`` (UNDEFINED at EL0)."""
        try:
            tagmove.stgm(self.state.mte, self._tags(address, write=True), address, xt)
        except UndefinedInstruction:
            raise undefined() from None

    def stzgm(self, address: int, xt: int) -> None:
        """STZGM: zero a DCZID_EL0.BS block and give it the tag ``xt[3:0]`` (UNDEFINED at EL0)."""
        try:
            tagmove.stzgm(self.state.mte, self._tags(address, write=True), address, xt)
        except UndefinedInstruction:
            raise undefined() from None
