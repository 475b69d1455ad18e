"""Building a translated block: Python source for a run of A64 instructions.

A block becomes one function ``_block(x)`` over the register list ``x`` (see
:mod:`tagvisor.cpu.state`); it returns the next PC. The names it uses besides ``x``
(``C`` the state, ``R8``/``W8``... the memory paths, ``NZCV``, ``CT`` ...) come from the
core's namespace, built once per core (:mod:`tagvisor.cpu.runtime`).

Lazy flags: a flag-setting instruction copies its operands into the locals ``fa``,
``fb`` and its result into ``fr`` and stores the tuple in ``C.flags``. The builder
remembers what those locals mean until the next flag writer, so a B.cond, CSEL or
CCMP later in the same block tests ``fr != 0`` or ``fa >= fb`` directly instead of
asking for NZCV. Everything that may fault is a call, and a call never sees stale
flags because ``C.flags`` is stored eagerly; the fault's PC comes from the line the
traceback points at (:meth:`BlockSource.pc_at_line`), so blocks carry no per-
instruction bookkeeping at run time.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from tagvisor.cpu.alu import LOGIC64, SUB64, WIDTH32
from tagvisor.cpu.bits import M32, M64

MASK64: Final = f"{M64:#x}"
#: Line numbers of a compiled block start at 2 (line 1 is the ``def``).
FIRST_LINE: Final = 2
MASK32: Final = f"{M32:#x}"


class FlagSource(NamedTuple):
    """What ``C.flags`` holds, as expressions valid at this point of the block."""

    kind: int
    a: str
    b: str
    r: str


def mask(sf: int) -> str:
    """The register mask of the width ``sf`` selects (64 or 32 bits), as a hex literal."""
    return MASK64 if sf else MASK32


def _specialise(flags: FlagSource, cond: int) -> str | None:
    """A Python condition equal to ConditionHolds(cond) for these lazy flags, if simple."""
    kind, a, b, r = flags
    top = 31 if kind & WIDTH32 else 63
    sign = f"{1 << top:#x}"
    op = kind & 3
    base, invert = cond >> 1, cond & 1
    table: dict[int, str] = {}
    if op == SUB64:
        table = {
            0: f"{r} == 0",
            1: f"{a} >= {b}",
            2: f"{r} >> {top}",
            4: f"{a} > {b}",
            5: f"({a} ^ {sign}) >= ({b} ^ {sign})",
            6: f"({a} ^ {sign}) > ({b} ^ {sign})",
        }
    elif op == LOGIC64:
        table = {
            0: f"{r} == 0",
            1: "False",
            2: f"{r} >> {top}",
            3: "False",
            4: "False",
            5: f"not {r} >> {top}",
            6: f"({r} != 0 and not {r} >> {top})",
        }
    else:  # ADD: only the N and Z tests are simpler than NZCV
        table = {0: f"{r} == 0", 2: f"{r} >> {top}"}
    expr = table.get(base)
    if expr is None:
        return None
    return f"(not ({expr}))" if invert else f"({expr})"


@dataclass
class BlockSource:
    """Source lines of one block and where each instruction starts."""

    start: int
    lines: list[str] = field(default_factory=list)
    #: Index in ``lines`` of each instruction's first line.
    insn_lines: list[int] = field(default_factory=list)

    def pc_at_line(self, lineno: int) -> int:
        """The PC of the instruction whose code holds source line ``lineno``."""
        index = bisect_right(self.insn_lines, lineno - FIRST_LINE) - 1
        return self.start + 4 * max(index, 0)

    def text(self) -> str:
        """The block as the source of one function, ``_block(x)`` over the X registers, ready to
        ``compile``."""
        body = "\n".join("    " + line for line in self.lines)
        return f"def _block(x):\n{body}\n"


class Builder:
    """Emits the code of instructions one after another into a :class:`BlockSource`."""

    def __init__(self, start: int) -> None:
        self.out = BlockSource(start)
        self.pc = start
        self.flags: FlagSource | None = None
        self.ended = False
        self.count = 0

    # -- structure ------------------------------------------------------------------------

    def begin(self, pc: int) -> None:
        """Start the code of the instruction at ``pc``, noting its first line so a fault maps
        back to its PC."""
        self.pc = pc
        self.count += 1
        self.out.insn_lines.append(len(self.out.lines))

    def emit(self, line: str) -> None:
        """Append one line of Python to the block."""
        self.out.lines.append(line)

    def end(self, next_pc_expr: str) -> None:
        """Finish the block with ``return next_pc_expr``."""
        self.emit(f"return {next_pc_expr}")
        self.ended = True

    def end_raise(self, exception_expr: str) -> None:
        """Finish the block with ``raise exception_expr``."""
        self.emit(f"raise {exception_expr}")
        self.ended = True

    @property
    def next_pc(self) -> int:
        """The address of the instruction after the current one (modulo 2^64)."""
        return (self.pc + 4) & M64

    # -- registers --------------------------------------------------------------------------

    @staticmethod
    def x(n: int) -> str:
        """Xn as a 64-bit read; register 31 is XZR."""
        return "0" if n == 31 else f"x[{n}]"

    @staticmethod
    def w(n: int) -> str:
        """Wn (zero-extended); register 31 is WZR."""
        return "0" if n == 31 else f"(x[{n}] & {MASK32})"

    def r(self, n: int, sf: int) -> str:
        """Xn if ``sf`` is 1, else Wn; register 31 is the zero register."""
        return self.x(n) if sf else self.w(n)

    @staticmethod
    def rsp(n: int, sf: int) -> str:
        """Xn|SP or Wn|WSP: register 31 is the current stack pointer."""
        return f"x[{n}]" if sf else f"(x[{n}] & {MASK32})"

    def set(self, n: int, expr: str) -> None:
        """Xn = expr (already masked); writes to XZR vanish."""
        if n != 31:
            self.emit(f"x[{n}] = {expr}")

    def result(self, n: int, expr: str) -> None:
        """Xn = expr, or just evaluate expr (an access still happens) when n is XZR."""
        self.emit(expr if n == 31 else f"x[{n}] = {expr}")

    def set_sp(self, n: int, expr: str) -> None:
        """Xn|SP = expr."""
        self.emit(f"x[{n}] = {expr}")

    # -- flags ------------------------------------------------------------------------------

    def set_flags(self, kind: int, a: str, b: str, r: str) -> None:
        """Record a flag-setting result (operands and result already in locals)."""
        self.emit(f"C.flags = ({kind}, {a}, {b}, {r})")
        self.flags = FlagSource(kind, a, b, r)

    def flags_unknown(self) -> None:
        """Forget which expressions ``C.flags`` holds (the flags were set by a helper or
        conditionally): conditions read the NZCV table again."""
        self.flags = None

    def cond(self, cond: int) -> str:
        """A Python expression that is true when condition ``cond`` holds now."""
        if cond >= 14:
            return "True"
        if self.flags is not None:
            expr = _specialise(self.flags, cond)
            if expr is not None:
                return expr
        return f"CT[{cond}][NZCV(C.flags)]"
