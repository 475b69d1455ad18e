"""Run the MTE probe (probe/mteprobe.c) under QEMU's linux-user emulator and parse it.

The probe is an AArch64 Linux program that reads one command per line and answers each
with one line (the command language is described at the top of mteprobe.c). It is built
once with the cross compiler (tests/support/cross.py, cached by a hash of its source,
the flags and the compiler's version), and run as ``qemu-aarch64 -cpu max -seed N``: ``-cpu
max`` has FEAT_MTE3, and ``-seed`` makes the IRG seed (QEMU draws it from its guest
random source) repeat from run to run.

Each run starts a fresh process: the memory is new (data and tags 0) and the tag check
mode is whatever the script's ``prctl`` commands set.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Final, Literal

from tagvisor.arch import TagCheckMode
from tests.support.cross import QEMU_USER

PROBE_SOURCE: Final = Path(__file__).parent / "probe" / "mteprobe.c"
CFLAGS: Final = ("-march=armv8.5-a+memtag", "-O1", "-static", "-Wall", "-Wextra", "-Werror")

#: Bytes in each of the probe's three memory regions (REGION in mteprobe.c).
REGION: Final = 0x10000

SIGILL: Final = int(signal.SIGILL)
SIGBUS: Final = int(signal.SIGBUS)
SIGSEGV: Final = int(signal.SIGSEGV)
#: si_code values (include/uapi/asm-generic/siginfo.h).
ILL_ILLOPC: Final = 1
ILL_ILLOPN: Final = 2
BUS_ADRALN: Final = 1
SEGV_MTEAERR: Final = 8
SEGV_MTESERR: Final = 9

#: prctl(PR_SET_TAGGED_ADDR_CTRL) bits (include/uapi/linux/prctl.h).
PR_TAGGED_ADDR_ENABLE: Final = 1
PR_MTE_TCF_SYNC: Final = 1 << 1
PR_MTE_TCF_ASYNC: Final = 1 << 2
PR_MTE_TAG_SHIFT: Final = 3


class ProbeError(RuntimeError):
    """The probe could not be built or did not answer as it should."""


def prctl_arg(mode: TagCheckMode, include_mask: int) -> int:
    """The PR_SET_TAGGED_ADDR_CTRL argument for a tag check mode and IRG include mask."""
    # ASYMM has no prctl of its own: Linux picks it for SYNC | ASYNC only when the CPU's
    # preferred mode says so, and QEMU 7.2 turns SYNC | ASYNC into SYNC.
    tcf = {
        TagCheckMode.NONE: 0,
        TagCheckMode.SYNC: PR_MTE_TCF_SYNC,
        TagCheckMode.ASYNC: PR_MTE_TCF_ASYNC,
    }[mode]
    return PR_TAGGED_ADDR_ENABLE | tcf | (include_mask & 0xFFFF) << PR_MTE_TAG_SHIFT


def set_mode(mode: TagCheckMode, include_mask: int = 0xFFFF) -> str:
    """The probe command for prctl(PR_SET_TAGGED_ADDR_CTRL, mode | include mask)."""
    return f"prctl {prctl_arg(mode, include_mask):#x}"


@dataclass(frozen=True)
class Signal:
    """A signal the probe caught while running one command.

    ``at_syscall`` is True when the signal was delivered on return from the getppid()
    that follows each access (so the access itself completed: an asynchronous fault),
    False when it was delivered at the instruction (a synchronous fault).
    """

    signo: int
    code: int
    address: int
    at_syscall: bool


@dataclass(frozen=True)
class Reply:
    """The probe's answer to one command."""

    status: Literal["ok", "sig", "err", "skip"]
    values: tuple[int, ...] = ()
    signal: Signal | None = None
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def value(self) -> int:
        """The first value of an ``ok`` reply (the result register)."""
        if self.status != "ok" or not self.values:
            raise ProbeError(f"expected an ok reply with a value, got {self.text!r}")
        return self.values[0]

    @property
    def loaded(self) -> int:
        """The value a load brought into its register (16-byte loads: both halves)."""
        if len(self.values) != 2:
            raise ProbeError(f"not the reply to a load: {self.text!r}")
        return self.values[0] | self.values[1] << 64

    @property
    def data(self) -> bytes:
        """The bytes of a ``peek`` reply."""
        if self.status != "ok":
            raise ProbeError(f"expected an ok reply, got {self.text!r}")
        for word in self.text.split():
            if word.startswith("="):
                return bytes.fromhex(word[1:])
        raise ProbeError(f"not the reply to a peek: {self.text!r}")

    def fault(self) -> Signal:
        if self.signal is None:
            raise ProbeError(f"expected a signal, got {self.text!r}")
        return self.signal


def parse_reply(line: str) -> Reply:
    """Parse one line of the probe's output."""
    words = line.split()
    if not words:
        raise ProbeError("empty reply line")
    head = words[0]
    if head == "ok":
        # A peek answers with "=" and the bytes in hex; the text keeps them.
        values = tuple(int(w, 0) for w in words[1:] if not w.startswith("="))
        return Reply("ok", values, text=line)
    if head == "sig":
        signo, code, address, where = int(words[1]), int(words[2]), int(words[3], 16), words[4]
        if where not in ("svc", "insn"):
            raise ProbeError(f"bad signal location in {line!r}")
        values = tuple(int(w, 16) for w in words[5:])
        return Reply("sig", values, Signal(signo, code, address, where == "svc"), line)
    if head == "err":
        return Reply("err", text=line)
    if head == "skip":
        return Reply("skip", text=line)
    raise ProbeError(f"unparseable reply {line!r}")


@dataclass(frozen=True)
class Arena:
    """The probe's memory: three regions of ``region`` bytes from ``base``.

    Probe offsets [region, 2 * region) are Normal Tagged (PROT_MTE); the regions
    below and above are untagged.
    """

    base: int
    region: int

    @property
    def tagged(self) -> int:
        """Probe offset of the first tagged byte."""
        return self.region

    def pointer(self, offset: int, top: int = 0) -> int:
        """The pointer the probe uses for ``offset`` with top byte ``top``."""
        return (self.base + offset) | top << 56


class QemuProbe:
    """Runs scripts of probe commands under ``qemu-aarch64 -cpu max``."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.qemu = QEMU_USER

    def run(self, commands: Sequence[str], *, seed: int = 1, timeout: float = 120.0) -> list[Reply]:
        """Run ``commands`` in one fresh process and return one reply per command."""
        script = "base\n" + "".join(f"{command}\n" for command in commands)
        try:
            done = subprocess.run(
                [self.qemu, "-cpu", "max", "-seed", str(seed), str(self.binary)],
                input=script,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ProbeError(f"the probe did not finish {len(commands)} commands") from exc
        lines = done.stdout.splitlines()
        if done.returncode != 0 or len(lines) != len(commands) + 1:
            raise ProbeError(
                f"the probe exited with {done.returncode} after {len(lines)} of "
                f"{len(commands) + 1} replies; stderr:\n{done.stderr}"
            )
        replies = [parse_reply(line) for line in lines]
        arena = Arena(*replies[0].values)
        if arena.region != REGION:
            raise ProbeError(f"mteprobe.c has REGION {arena.region:#x}, qemu_probe.py {REGION:#x}")
        if "arena" in self.__dict__ and arena != self.arena:
            # Tests compute model addresses from the arena of the first run.
            raise ProbeError(f"the arena moved: {arena} in this run, {self.arena} before")
        return replies[1:]

    @cached_property
    def arena(self) -> Arena:
        replies = self.run(["base"])
        return Arena(*replies[0].values)

    @cached_property
    def dczid(self) -> int:
        """DCZID_EL0 as the emulated CPU reports it."""
        return self.run(["dczid"])[0].value

    def check_mte(self) -> None:
        """Fail clearly if this QEMU does not give linux-user programs MTE."""
        reply = self.run([set_mode(TagCheckMode.SYNC)])[0]
        if not reply.ok:
            raise ProbeError(
                f"prctl(PR_SET_TAGGED_ADDR_CTRL) failed under {self.qemu} -cpu max "
                f"({reply.text}): this QEMU has no MTE for linux-user programs"
            )
