"""A Python guest whose whole state is in its registers and RAM, so it survives a
snapshot or a migration like real guest code: after a restore a fresh program object
reads X19 (its step) and carries on.

Step 0 fills a heap with data and tags and keeps a tagged pointer in X20; each later
step makes a checked access through that pointer and reports the outcome:
SYNC(step, 1) when the tags still match, SYNC(step, 0xFA17) when the access faulted.
"""

from __future__ import annotations

import numpy as np

from tagvisor.arch import TagCheckFault, TagCheckMode, with_tag
from tagvisor.kvm.model.guest import GuestContext
from tagvisor.vmm.builder import RAM_BASE
from tagvisor.vmm.devices.ucall import UcallCmd
from tests.vmm.guests import Exits, ucall

HEAP = RAM_BASE + 0x10_0000
HEAP_SIZE = 0x8_0000
FAULTED = 0xFA17
STEP, POINTER = 19, 20


def resumable(steps: int) -> object:
    def program(ctx: GuestContext) -> Exits:
        regs = ctx.regs.core
        if regs[STEP] == 0:
            ctx.enable_tag_checks(TagCheckMode.SYNC)
            rng = np.random.default_rng(11)
            ctx.stage2.write(HEAP, rng.bytes(HEAP_SIZE))
            ctx.stage2.store_tags(HEAP, rng.integers(1, 16, HEAP_SIZE // 16, dtype=np.uint8))
            tag = int(ctx.stage2.load_tags(HEAP + 0x1230, 1)[0])
            regs[POINTER] = with_tag(HEAP + 0x1230, tag)
            regs[STEP] = 1
        while regs[STEP] <= steps:
            step = regs[STEP]
            regs[STEP] = step + 1
            try:
                ctx.checked_access(regs[POINTER], 8, write=False)
                yield ucall(ctx, UcallCmd.SYNC, step, 1)
            except TagCheckFault:
                yield ucall(ctx, UcallCmd.SYNC, step, FAULTED)
        yield ucall(ctx, UcallCmd.DONE, 0)

    return program
