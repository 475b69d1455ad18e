"""The tag-moving instructions: LDG, STG, ST2G, STZG, STZ2G, STGP, LDGM, STGM, STZGM,
DC GVA and DC GZVA.

Semantics from the Arm ARM instruction descriptions and AArch64.MemTag (a tag read with
allocation tag access disabled, or from memory that is not Normal Tagged, is 0; a tag
write there does nothing), cross-checked with QEMU's target/arm/tcg/mte_helper.c
(helper_ldg, helper_stg*, helper_ldgm, helper_stgm, helper_stzgm_tags). None of these
is tag checked: they are how software sets tags. Data zeroing (STZG, DC GZVA, STZGM)
happens whether or not tags may be written.

``address`` arguments are pointers as software holds them; the top byte is stripped
when TBI applies before memory is reached.
"""

from __future__ import annotations

import numpy as np

from tagvisor.arch.constants import TAG_GRANULE, TAG_MASK
from tagvisor.arch.errors import AlignmentFault, TrappedInstruction, UndefinedInstruction
from tagvisor.arch.memory import NO_TAG, TagMemory
from tagvisor.arch.pointer import MASK64, allocation_tag_from_address, select_bit, with_tag
from tagvisor.arch.pointer import canonical_untagged as _canonical
from tagvisor.arch.state import MteState


def _untagged(state: MteState, address: int) -> int:
    tbi = state.tcr.tbi1 if select_bit(address) else state.tcr.tbi0
    return _canonical(address, tbi)


def _read_tags(state: MteState, memory: TagMemory, address: int, count: int) -> np.ndarray:
    tags = memory.load_tags(address, count)
    if not state.allocation_tag_access_enabled():
        return np.zeros(count, dtype=np.uint8)
    return np.where(tags == NO_TAG, 0, tags).astype(np.uint8)


def _write_tags(state: MteState, memory: TagMemory, address: int, tags: np.ndarray) -> None:
    if state.allocation_tag_access_enabled():
        memory.store_tags(address, tags)


def _require_el1(state: MteState, mnemonic: str) -> None:
    if state.el == 0:
        raise UndefinedInstruction(mnemonic, "UNDEFINED at EL0")


def _require_granule_aligned(address: int) -> None:
    if address % TAG_GRANULE:
        raise AlignmentFault(address=address, required=TAG_GRANULE)


def ldg(state: MteState, memory: TagMemory, address: int, xt: int) -> int:
    """LDG Xt, [Xn|SP, #simm]: ``xt`` with the tag of the granule holding ``address``.

    Only bits 59:56 of Xt change; the address needs no alignment.
    """
    granule = _untagged(state, address) & ~(TAG_GRANULE - 1)
    tag = int(_read_tags(state, memory, granule, 1)[0])
    return with_tag(xt, tag)


def stg(
    state: MteState,
    memory: TagMemory,
    address: int,
    source: int,
    *,
    granules: int = 1,
    zero_data: bool = False,
) -> None:
    """STG / ST2G (``granules=2``) / STZG / STZ2G (``zero_data``).

    The tag is bits 59:56 of ``source`` (Xt). ``address`` must be 16-byte aligned.
    """
    if granules not in (1, 2):
        raise ValueError("STG stores one or two granules")
    _require_granule_aligned(address)
    base = _untagged(state, address)
    if zero_data:
        memory.write_data(base, bytes(granules * TAG_GRANULE))
    tag = allocation_tag_from_address(source)
    _write_tags(state, memory, base, np.full(granules, tag, dtype=np.uint8))


def stgp(state: MteState, memory: TagMemory, address: int, data1: int, data2: int) -> None:
    """STGP Xt1, Xt2, [Xn|SP, #simm]: 16 bytes of data and the address's own tag."""
    _require_granule_aligned(address)
    base = _untagged(state, address)
    payload = (data1 & MASK64).to_bytes(8, "little") + (data2 & MASK64).to_bytes(8, "little")
    memory.write_data(base, payload)
    _write_tags(state, memory, base, np.array([allocation_tag_from_address(address)], np.uint8))


def _gm_block(state: MteState, address: int) -> tuple[int, int, int]:
    """(aligned base, granules, index of the first granule's nibble) for LDGM/STGM."""
    size = state.gmid.block_size
    base = _untagged(state, address) & ~(size - 1)
    count = size // TAG_GRANULE
    index = (base >> 4) & 0xF
    return base, count, index


def ldgm(state: MteState, memory: TagMemory, address: int) -> int:
    """LDGM Xt, [Xn|SP]: the tags of a GMID_EL1.BS block, nibble i from granule i.

    With a block of fewer than 16 granules the tags land in the nibbles given by
    address bits 7:4, the rest of Xt being 0. UNDEFINED at EL0.
    """
    _require_el1(state, "LDGM")
    base, count, index = _gm_block(state, address)
    tags = _read_tags(state, memory, base, count)
    value = 0
    for i, tag in enumerate(tags.tolist()):  # at most 16 granules: one register
        value |= tag << (4 * ((index + i) & 0xF))
    return value


def stgm(state: MteState, memory: TagMemory, address: int, xt: int) -> None:
    """STGM Xt, [Xn|SP]: set a GMID_EL1.BS block's tags from the nibbles of Xt."""
    _require_el1(state, "STGM")
    base, count, index = _gm_block(state, address)
    tags = [(xt >> (4 * ((index + i) & 0xF))) & TAG_MASK for i in range(count)]
    _write_tags(state, memory, base, np.array(tags, dtype=np.uint8))


def _dcz_block(state: MteState, address: int) -> tuple[int, int]:
    size = state.dczid.block_size
    return _untagged(state, address) & ~(size - 1), size


def stzgm(state: MteState, memory: TagMemory, address: int, xt: int) -> None:
    """STZGM Xt, [Xn|SP]: zero a DCZID_EL0.BS block and give it the tag Xt[3:0]."""
    _require_el1(state, "STZGM")
    base, size = _dcz_block(state, address)
    memory.write_data(base, bytes(size))
    _write_tags(state, memory, base, np.full(size // TAG_GRANULE, xt & TAG_MASK, np.uint8))


def dc_gva(state: MteState, memory: TagMemory, address: int, *, zero_data: bool = False) -> None:
    """DC GVA / DC GZVA (``zero_data``): tag a DCZID_EL0.BS block with the address's tag.

    At EL0 they trap to EL1 unless SCTLR_EL1.DZE is set, like DC ZVA.
    """
    mnemonic = "DC GZVA" if zero_data else "DC GVA"
    if state.el == 0 and not state.sctlr.dze:
        raise TrappedInstruction(mnemonic, "SCTLR_EL1.DZE is 0")
    if state.dczid.dzp:
        raise UndefinedInstruction(mnemonic, "DCZID_EL0.DZP prohibits it")
    base, size = _dcz_block(state, address)
    if zero_data:
        memory.write_data(base, bytes(size))
    tag = allocation_tag_from_address(address)
    _write_tags(state, memory, base, np.full(size // TAG_GRANULE, tag, np.uint8))
