"""Guest reports as lines a person reads.

The guests' runtime prints each ucall on the console as ``ucall <cmd> <args...>`` (hex,
docs/guest-abi.md). :class:`ReportDecoder` turns those into sentences, e.g.
``use-after-free caught: ESR 0x96000011 (tag check fault, read), FAR 0x02000000403fe000,
pointer tag 2, memory tag f``. It remembers what the heap guest allocated and freed, so
a fault can name the memory's tag as well as the pointer's. Reports it does not know
come back as None, and the caller shows the raw line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from tagvisor.guests import reports as rid

UCALL_SYNC: Final = 1
UCALL_ASSERT: Final = 2
UCALL_PRINT: Final = 3
UCALL_DONE: Final = 4
TCF_NAMES: Final = {0: "none", 1: "sync", 2: "async", 3: "asymm"}
#: ESR_EL1.EC of a data abort taken at the same EL, and the DFSC of a tag check fault.
EC_DATA_ABORT_SAME_EL: Final = 0x25
DFSC_TAG_CHECK: Final = 0x11
#: The 4-bit logical tag of a pointer: bits 59:56.
TAG_SHIFT: Final = 56


def parse_ucall_line(line: str) -> tuple[int, tuple[int, ...]] | None:
    """(cmd, args) of a console ``ucall`` line, or None for any other line."""
    words = line.split()
    if len(words) < 2 or words[0] != "ucall" or len(words) > 8:
        return None
    try:
        numbers = [int(word, 16) for word in words[1:]]
    except ValueError:
        return None
    return numbers[0], tuple(numbers[1:])


def pointer_tag(pointer: int) -> int:
    """The logical tag a pointer carries (bits 59:56)."""
    return (pointer >> TAG_SHIFT) & 0xF


def describe_esr(esr: int) -> str:
    """ESR_EL1 in words, as far as the guests' faults go."""
    ec, dfsc = esr >> 26, esr & 0x3F
    if ec == EC_DATA_ABORT_SAME_EL and dfsc == DFSC_TAG_CHECK:
        access = "write" if esr & (1 << 6) else "read"
        return f"tag check fault, {access}"
    return f"EC {ec:#x}, DFSC {dfsc:#x}"


def _panic(text: str) -> str | None:
    """The runtime's ``panic esr=<hex> far=<hex> elr=<hex>`` line in words."""
    try:
        fields = dict(word.split("=", 1) for word in text.split()[1:])
        esr, far, elr = (int(fields[name], 16) for name in ("esr", "far", "elr"))
    except (KeyError, ValueError):
        return None
    return f"the guest panicked: {describe_esr(esr)} (ESR {esr:#x}), FAR {far:#018x}, ELR {elr:#x}"


class ReportDecoder:
    """Decodes one guest's reports in order (it keeps the heap's tags as it goes)."""

    def __init__(self) -> None:
        #: The heap's blocks: untagged base -> (size, memory tag now).
        self._blocks: dict[int, tuple[int, int]] = {}
        self._handlers: dict[int, Callable[[tuple[int, ...]], str]] = {
            rid.BOOT: self._boot,
            rid.CPU: self._cpu,
            rid.HEAP_INIT: self._heap_init,
            rid.HEAP_ALLOC: self._heap_alloc,
            rid.HEAP_FREE: self._heap_free,
            rid.HEAP_UAF: lambda v: self._fault("use-after-free", v),
            rid.HEAP_OVERFLOW: lambda v: self._fault("overflow", v),
            rid.HEAP_UNDERFLOW: lambda v: self._fault("underflow", v),
            rid.HEAP_DOUBLE_FREE: self._double_free,
            rid.HEAP_SUMMARY: self._summary,
            rid.CHURN_INIT: self._churn_init,
            rid.CHURN_ROUND: self._churn_round,
        }

    def line(self, text: str) -> str | None:
        """The decoded form of a console line, or None to show it as it is."""
        if text.startswith("panic "):
            return _panic(text)
        parsed = parse_ucall_line(text)
        if parsed is None:
            return None
        return self.ucall(*parsed)

    def ucall(self, cmd: int, args: Sequence[int]) -> str | None:
        """A ucall in words, or None for one this decoder does not know."""
        values = tuple(args)
        if cmd == UCALL_DONE and values:
            return f"done: exit status {values[0]}"
        if cmd == UCALL_ASSERT and len(values) >= 3:
            return f"check failed at line {values[0]}: expected {values[1]:#x}, got {values[2]:#x}"
        if cmd == UCALL_PRINT:
            return ""  # the string itself was printed on the line before
        if cmd != UCALL_SYNC or not values:
            return None
        handler = self._handlers.get(values[0])
        if handler is None:
            return None
        try:
            return handler(values[1:])
        except ValueError:
            return None  # fewer values than the report has: show it raw

    # -- the runtime -----------------------------------------------------------------

    @staticmethod
    def _boot(v: tuple[int, ...]) -> str:
        valid, tcf, flags, ram, seed = v[:5]
        if not valid:
            return "boot: no boot configuration block, using defaults"
        mte = "MTE on" if flags & 1 else "MTE off"
        return (
            f"boot: {mte}, tag checks {TCF_NAMES.get(tcf, tcf)}, RAM {ram >> 20} MiB, "
            f"IRG seed {seed:#x}"
        )

    @staticmethod
    def _cpu(v: tuple[int, ...]) -> str:
        level, gmid, _dczid, usable = v[:4]
        feature = {0: "no MTE", 1: "FEAT_MTE (no tag storage)", 2: "FEAT_MTE2", 3: "FEAT_MTE3"}
        return (
            f"cpu: {feature.get(level, f'MTE level {level}')}, GMID_EL1.BS {gmid}, "
            f"MTE {'usable' if usable else 'NOT usable'}"
        )

    # -- heap ------------------------------------------------------------------------

    @staticmethod
    def _heap_init(v: tuple[int, ...]) -> str:
        base, size, classes, tcf = v[:4]
        return (
            f"heap: arena {base:#x} ({size >> 20} MiB), {classes} size classes, "
            f"tag checks {TCF_NAMES.get(tcf, tcf)}"
        )

    def _heap_alloc(self, v: tuple[int, ...]) -> str:
        index, pointer, size, _exclude = v[:4]
        self._blocks[pointer & ((1 << TAG_SHIFT) - 1)] = (size, pointer_tag(pointer))
        return f"malloc #{index}: {pointer:#018x}, {size} bytes, tag {pointer_tag(pointer):x}"

    def _heap_free(self, v: tuple[int, ...]) -> str:
        index, pointer, tag, _exclude = v[:4]
        base = pointer & ((1 << TAG_SHIFT) - 1)
        size, _ = self._blocks.get(base, (0, 0))
        self._blocks[base] = (size, tag)
        return f"free #{index}: {pointer:#018x} retagged {pointer_tag(pointer):x} -> {tag:x}"

    def _memory_tag(self, address: int) -> int | None:
        untagged = address & ((1 << TAG_SHIFT) - 1)
        for base, (size, tag) in self._blocks.items():
            if base <= untagged < base + size:
                return tag
        return None

    def _fault(self, bug: str, v: tuple[int, ...]) -> str:
        pointer, esr, far, tfsr = v[:4]
        memory = self._memory_tag(far or pointer)
        if not far and memory == pointer_tag(pointer):
            memory = None  # the access ran past the pointer's block: which granule is unknown
        tags = f"pointer tag {pointer_tag(pointer):x}"
        if memory is not None:
            tags += f", memory tag {memory:x}"
        if esr:
            return f"{bug} caught: ESR {esr:#x} ({describe_esr(esr)}), FAR {far:#018x}, {tags}"
        if tfsr:
            return (
                f"{bug} caught asynchronously: TFSR_EL1 {tfsr:#x} (no address: async "
                f"checks only flag the fault), {tags}"
            )
        return f"{bug} NOT caught (tag checks off?): {tags}"

    @staticmethod
    def _double_free(v: tuple[int, ...]) -> str:
        pointer, refused = v[:2]
        verdict = "refused" if refused else "NOT refused"
        return f"double free of {pointer:#018x}: {verdict}"

    @staticmethod
    def _summary(v: tuple[int, ...]) -> str:
        sync, tfsr, tcf = v[:3]
        return (
            f"heap summary: {sync} synchronous faults caught, {tfsr} asynchronous "
            f"(TFSR) hits, tag checks {TCF_NAMES.get(tcf, tcf)}"
        )

    # -- churn -----------------------------------------------------------------------

    @staticmethod
    def _churn_init(v: tuple[int, ...]) -> str:
        base, size, rounds, seed = v[:4]
        length = f"{rounds} rounds" if rounds else "rounds until stopped"
        return f"churn: region {base:#x} ({size >> 20} MiB), {length}, seed {seed:#x}"

    @staticmethod
    def _churn_round(v: tuple[int, ...]) -> str:
        round_, live, _heap_sum, _region_sum, tfsr = v[:5]
        faults = f", TFSR_EL1 {tfsr:#x}: a tag check failed" if tfsr else ""
        return f"churn round {round_}: {live} live allocations{faults}"
