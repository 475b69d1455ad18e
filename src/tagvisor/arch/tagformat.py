"""Conversions between the two formats Linux uses for allocation tags.

*Byte format*: one tag per byte, in the low nibble. KVM_ARM_MTE_COPY_TAGS and
PTRACE_PEEKMTETAGS/POKEMTETAGS use it (Documentation/virt/kvm/api.rst, section
KVM_ARM_MTE_COPY_TAGS; Documentation/arch/arm64/memory-tagging-extension.rst).

*Packed format*: two tags per byte, the even granule in the low nibble. This is what
``mte_save_page_tags`` in arch/arm64/lib/mte.S writes for swap (it stores LDGM results,
whose nibble i is granule i) and what core dumps carry in PT_AARCH64_MEMTAG_MTE
(arch/arm64/kernel/elfcore.c); QEMU's TCG tag RAM uses the same layout.

Both directions work on cache-sized chunks with 16-bit lanes: each lane turns one packed
byte into two tag bytes (or back) with a shift, an OR and a mask, so the cost per byte
is a few vector operations and no Python loop runs per granule.
"""

from typing import Final

import numpy as np
from numpy.typing import NDArray

from tagvisor.arch.errors import TagValueError

U8 = NDArray[np.uint8]

#: Lanes handled per NumPy call; 128 Ki lanes keep the temporaries (2 x 256 KiB) in L2.
_CHUNK: Final = 1 << 17


def unpack_tags(packed: U8, out: U8) -> None:
    """Expand ``packed`` (two tags per byte) into ``out`` (one tag per byte).

    ``out`` must hold exactly ``2 * len(packed)`` bytes and be C-contiguous.
    """
    n = packed.size
    if out.size != 2 * n:
        raise ValueError(f"unpack_tags: out has {out.size} bytes, needs {2 * n}")
    lanes = out.view("<u2")
    work = np.empty(min(n, _CHUNK), np.uint16)
    shifted = np.empty_like(work)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        w = work[: stop - start]
        s = shifted[: stop - start]
        np.copyto(w, packed[start:stop], casting="unsafe")
        # hhhhllll -> (w | w << 4) & 0x0F0F = 0000hhhh 0000llll: low byte is the even tag.
        np.left_shift(w, 4, out=s)
        np.bitwise_or(w, s, out=w)
        np.bitwise_and(w, 0x0F0F, out=lanes[start:stop])


def pack_tags(tags: U8, out: U8, *, low_nibble_only: bool = False) -> None:
    """Pack ``tags`` (one per byte, even length) into ``out`` (two per byte).

    With ``low_nibble_only`` the high nibble of each input byte is ignored, as
    KVM_ARM_MTE_COPY_TAGS does for KVM_ARM_TAGS_TO_GUEST; otherwise a byte above 15
    raises :class:`TagValueError` and ``out`` is left unchanged.
    """
    if tags.size % 2:
        raise ValueError("pack_tags: needs an even number of tags")
    n = tags.size // 2
    if out.size != n:
        raise ValueError(f"pack_tags: out has {out.size} bytes, needs {n}")
    lanes = tags.view("<u2")
    if not low_nibble_only:
        _check_tag_bytes(lanes)
    work = np.empty(min(n, _CHUNK), np.uint16)
    masked = np.empty_like(work) if low_nibble_only else work
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        w = work[: stop - start]
        src = lanes[start:stop]
        if low_nibble_only:
            src = np.bitwise_and(src, 0x0F0F, out=masked[: stop - start])
        # 0000hhhh 0000llll -> low byte (w >> 4 | w) = hhhhllll; the cast drops the rest.
        np.right_shift(src, 4, out=w)
        np.bitwise_or(w, src, out=w)
        np.copyto(out[start:stop], w, casting="unsafe")


def _check_tag_bytes(lanes: NDArray[np.uint16]) -> None:
    as_bytes = lanes.view(np.uint8)
    # One vectorised reduction; locating the culprit only happens on the error path.
    if as_bytes.size and int(as_bytes.max()) > 0xF:
        index = int(np.flatnonzero(as_bytes > 0xF)[0])
        raise TagValueError(
            f"tag byte {index} is {int(as_bytes[index]):#x}: allocation tags are 4 bits (0 to 15)"
        )
