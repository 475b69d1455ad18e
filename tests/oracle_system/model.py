"""The model's side of the guests' EL1 state: registers as the runtime sets them, ESR
for a tag check fault, and the outcome of a checked access as the guests report it."""

from __future__ import annotations

from dataclasses import dataclass

from tagvisor.arch import FlatTaggedMemory, MteState, TagCheckFault, TagCheckMode
from tagvisor.arch.sysregs import DczidEl0, GcrEl1, GmidEl1, RgsrEl1, Tfsr
from tagvisor.arch.tagcheck import check_access
from tests.support import guest_reports as rid
from tests.support.transcript import Transcript

#: ESR_ELx.EC of a data abort taken without a change of exception level.
EC_DATA_ABORT_SAME_EL = 0x25
ESR_IL = 1 << 25
ESR_WNR = 1 << 6
#: GCR_EL1 the runtime writes: Exclude = {0}, RRND = 0.
RUNTIME_GCR = GcrEl1(exclude=0x1, rrnd=False)


def esr_of(fault: TagCheckFault) -> int:
    """ESR_EL1 for a synchronous tag check fault at EL1 (no instruction syndrome)."""
    return (EC_DATA_ABORT_SAME_EL << 26) | ESR_IL | (ESR_WNR if fault.write else 0) | fault.fsc


def guest_el1_state(transcript: Transcript, mode: TagCheckMode = TagCheckMode.SYNC) -> MteState:
    """EL1 with TBI0, ATA, TCF = ``mode``, the runtime's GCR_EL1, and the GMID_EL1 /
    DCZID_EL0 block sizes the guest's CPU report gives."""
    _mte, gmid, dczid, _usable = transcript.report(rid.CPU)
    state = MteState.bare_metal_el1(mode)
    state.gcr = RUNTIME_GCR
    state.gmid = GmidEl1.from_raw(gmid)
    state.dczid = DczidEl0.from_raw(dczid)
    return state


def seeded(state: MteState, rgsr: int) -> MteState:
    state.rgsr = RgsrEl1.from_raw(rgsr)
    return state


@dataclass(frozen=True)
class Outcome:
    """What a guest reports about one checked access: ESR and FAR of a synchronous
    fault (0 when none) and TFSR_EL1 read after it."""

    esr: int
    far: int
    tfsr: int


def predict_access(
    state: MteState, memory: FlatTaggedMemory, ptr: int, size: int, *, write: bool
) -> Outcome:
    """The model's outcome for one access, starting from a clear TFSR_EL1."""
    state.tfsr_el1 = Tfsr()
    try:
        check_access(state, memory, ptr, size, write=write)
    except TagCheckFault as fault:
        return Outcome(esr_of(fault), fault.address, state.tfsr_el1.raw)
    return Outcome(0, 0, state.tfsr_el1.raw)
