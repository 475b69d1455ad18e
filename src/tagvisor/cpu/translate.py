"""Translating a run of guest instructions into one compiled Python function.

A block starts at a PC and runs to the first branch, exception-generating or
state-changing system instruction, the end of the 4 KiB page, or ``max_insns``
instructions. An UNDEFINED encoding becomes ``raise UNDEF()`` in place, so the
instructions before it still run (hardware takes the exception only on reaching it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

from tagvisor.cpu.bits import M64, ReservedEncoding
from tagvisor.cpu.codegen import BlockSource, Builder
from tagvisor.cpu.decode import emit_instruction

BlockFn = Callable[[list[int]], int]
#: What the PC cache holds: the function, its instruction count, the block.
Entry = tuple[BlockFn, int, "Block"]


@dataclass(eq=False)
class Block:
    """A translated block and what it was translated from."""

    pc: int
    gpa: int
    pfn: int
    count: int
    code: CodeType
    source: BlockSource
    fn: BlockFn
    entry: Entry = field(init=False)

    def __post_init__(self) -> None:
        self.entry = (self.fn, self.count, self)


def generate(pc: int, words: Sequence[int]) -> Builder:
    """The source of a block at ``pc`` from the instruction ``words`` that follow it."""
    b = Builder(pc)
    for index, word in enumerate(words):
        b.begin((pc + 4 * index) & M64)
        mark = len(b.out.lines)
        try:
            emit_instruction(word, b)
        except ReservedEncoding:
            del b.out.lines[mark:]
            b.end_raise("UNDEF()")
        if b.ended:
            break
    else:
        b.end(f"{(pc + 4 * len(words)) & M64:#x}")
    return b


def translate_block(
    pc: int, gpa: int, pfn: int, words: Sequence[int], namespace: dict[str, Any]
) -> Block:
    """Generate, compile and bind a block; ``namespace`` supplies the run-time helpers."""
    b = generate(pc, words)
    code = compile(b.out.text(), f"<a64 block {pc:#x}>", "exec")
    scope: dict[str, Any] = {}
    exec(code, namespace, scope)
    fn: BlockFn = scope["_block"]
    inner = fn.__code__
    return Block(pc, gpa, pfn, b.count, inner, b.out, fn)
