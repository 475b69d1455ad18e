"""A resumable Python guest that churns a tagged heap, for migration tests.

Its state is its registers: X19 the next round, X21 the rounds wanted. Each round
retags and rewrites one random 64 KiB span (chosen from the round number, so the work
does not depend on where it runs) and reports SYNC(round). Every 64th round it checks
that the tagged pointer kept in X20 since boot still matches (SYNC(0xC4EC, 1), or 0
after a fault). After the last round: DONE(0).
"""

from __future__ import annotations

import numpy as np

from tagvisor.arch import TagCheckFault, TagCheckMode, with_tag
from tagvisor.kvm.model.guest import GuestContext, GuestProgram
from tagvisor.vmm.builder import RAM_BASE
from tagvisor.vmm.devices.ucall import UcallCmd
from tests.vmm.guests import Exits, ucall

HEAP = RAM_BASE + 0x10_0000
SPAN = 64 << 10
CHECK = 0xC4EC
ROUND, POINTER, WANTED = 19, 20, 21


def churner(rounds: int, heap_size: int = 4 << 20) -> GuestProgram:
    def program(ctx: GuestContext) -> Exits:
        regs = ctx.regs.core
        if regs[ROUND] == 0:
            ctx.enable_tag_checks(TagCheckMode.SYNC)
            rng = np.random.default_rng(5)
            ctx.stage2.write(HEAP, rng.bytes(heap_size))
            ctx.stage2.store_tags(HEAP, rng.integers(1, 16, heap_size // 16, dtype=np.uint8))
            regs[POINTER] = with_tag(HEAP, int(ctx.stage2.load_tags(HEAP, 1)[0]))
            regs[ROUND], regs[WANTED] = 1, rounds
        spans = heap_size // SPAN
        while regs[ROUND] <= regs[WANTED]:
            step = regs[ROUND]
            rng = np.random.default_rng(1000 + step)
            start = HEAP + SPAN * (1 + int(rng.integers(0, spans - 1)))
            ctx.stage2.store_tags(
                start, np.repeat(rng.integers(1, 16, SPAN // 256, dtype=np.uint8), 16)
            )
            ctx.stage2.write(start, rng.bytes(SPAN))
            regs[ROUND] = step + 1
            yield ucall(ctx, UcallCmd.SYNC, step)
            if step % 64 == 0:
                try:
                    ctx.checked_access(regs[POINTER], 16, write=False)
                    yield ucall(ctx, UcallCmd.SYNC, CHECK, 1)
                except TagCheckFault:
                    yield ucall(ctx, UcallCmd.SYNC, CHECK, 0)
        yield ucall(ctx, UcallCmd.DONE, 0)

    return program
