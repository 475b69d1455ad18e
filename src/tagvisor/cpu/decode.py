"""The top-level A64 decode: which instruction class a word belongs to.

Arm ARM C4.1, "A64 instruction set encoding", op0 = bits 28:25. Classes tagvisor does
not implement (SME, SVE, SIMD&FP) and the reserved space are UNDEFINED.
"""

from __future__ import annotations

from tagvisor.cpu.bits import ReservedEncoding
from tagvisor.cpu.codegen import Builder
from tagvisor.cpu.decode_branch import branch_system
from tagvisor.cpu.decode_dp import dp_immediate, dp_register
from tagvisor.cpu.decode_ldst import load_store


def emit_instruction(word: int, b: Builder) -> None:
    """Append the code of one instruction; raises ReservedEncoding if UNDEFINED here."""
    op0 = (word >> 25) & 0xF
    if op0 & 0b1110 == 0b1000:
        dp_immediate(word, b)
    elif op0 & 0b1110 == 0b1010:
        branch_system(word, b)
    elif op0 & 0b0101 == 0b0100:
        load_store(word, b)
    elif op0 & 0b0111 == 0b0101:
        dp_register(word, b)
    else:
        raise ReservedEncoding(f"op0 {op0:#06b}: reserved, SME, SVE or SIMD&FP")
