"""Helpers shared by the commands: building a machine from the usual options, sizes,
progress bars, and printing reports."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tagvisor.cli.backend import add_backend_options, choose
from tagvisor.cli.errors import CliError, Exit
from tagvisor.guests.decode import ReportDecoder
from tagvisor.kvm.api import Kvm
from tagvisor.migration import TcpAddress, parse_address
from tagvisor.vmm import Machine, MachineBuilder
from tagvisor.vmm.builder import TCF_MODES

PREBUILT = Path(__file__).resolve().parents[1] / "guests"


#: The largest guest RAM the CLI builds (the model's host memory is allocated whole).
MAX_GUEST_RAM = 64 << 30
#: Guest RAM comes in 2 MiB blocks (docs/vmm.md).
RAM_GRANULE = 2 << 20


def parse_size(text: str) -> int:
    """'128M', '1G', '65536' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if cleaned and cleaned[-1] in units:
            size = int(float(cleaned[:-1]) * units[cleaned[-1]])
        else:
            size = int(cleaned)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 128M, 1G)") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size cannot be negative")
    return size


def guest_ram(text: str) -> int:
    """A --mem value: a size that is a positive multiple of 2 MiB, at most 64 GiB."""
    size = parse_size(text)
    if size <= 0 or size % RAM_GRANULE:
        raise argparse.ArgumentTypeError(
            f"{text!r}: guest RAM is a positive multiple of 2 MiB (e.g. 128M, 1G)"
        )
    if size > MAX_GUEST_RAM:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_GUEST_RAM >> 30}G of guest RAM")
    return size


def bandwidth(text: str) -> int:
    """A bytes-per-second value: a positive size, '/s' allowed (e.g. 64M, 64MiB/s)."""
    size = parse_size(text.strip().removesuffix("/s").removesuffix("/S"))
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a bandwidth is a positive size (e.g. 64M)")
    return size


def _whole(text: str, *, base: int, not_a_number: str, low: int, high: int, out: str) -> int:
    """``text`` as an integer in [low, high]; else the usage error the messages say."""
    try:
        value = int(text, base)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {not_a_number}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: {out}")
    return value


def vcpu_count(text: str) -> int:
    """A --vcpus value: 1 to 8."""
    return _whole(
        text,
        base=10,
        not_a_number="a number of VCPUs (1 to 8)",
        low=1,
        high=8,
        out="tagvisor machines have 1 to 8 VCPUs",
    )


def u64(text: str) -> int:
    """A --arg value: an unsigned 64-bit number, decimal or 0x-hex."""
    return _whole(
        text,
        base=0,
        not_a_number="a number (e.g. 0, 100, 0x40)",
        low=0,
        high=(1 << 64) - 1,
        out="the argument is from 0 to 2**64 - 1",
    )


def count(text: str) -> int:
    """A count of things (exits, passes): a whole number of at least 1."""
    return _whole(
        text, base=10, not_a_number="a whole number", low=1, high=1 << 62, out="at least 1"
    )


def seconds(text: str) -> float:
    """A timeout: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: a positive number of seconds")
    return value


def address(text: str) -> TcpAddress:
    """A migration address, tcp:HOST:PORT."""
    try:
        return parse_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def input_file(path: Path, what: str = "file") -> Path:
    """``path`` if it is a readable file; else CliError (exit 66) saying what to do."""
    if path.is_dir():
        raise CliError(f"{path} is a directory: name a {what} in it", Exit.NO_INPUT, "no-input")
    if not path.exists():
        raise CliError(f"no {what} at {path}", Exit.NO_INPUT, "no-input")
    if not os.access(path, os.R_OK):
        raise CliError(f"{path} is not readable: check its permissions", Exit.NO_INPUT, "no-input")
    return path


def output_file(path: Path) -> Path:
    """``path`` if a file can be written there; else CliError (exit 73), checked before
    any work is done for it."""
    kind = "cannot-create"
    if path.is_dir():
        raise CliError(f"{path} is a directory: name a file in it", Exit.CANNOT_CREATE, kind)
    parent = path.parent
    if not parent.is_dir():
        raise CliError(f"{parent} is not a directory: create it first", Exit.CANNOT_CREATE, kind)
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CliError(f"cannot write {path}: permission denied", Exit.CANNOT_CREATE, kind)
    return path


def resolve_guest(name: str) -> Path:
    """A path, or the name of a guest that ships with tagvisor (e.g. ``heap``)."""
    path = Path(name)
    if path.is_dir():
        raise CliError(f"{path} is a directory: give an ELF file", Exit.NO_INPUT, "no-input")
    if path.exists():
        return input_file(path, "guest image")
    shipped = PREBUILT / f"{name}.elf"
    if "/" not in name and shipped.exists():
        return shipped
    known = sorted(p.stem for p in PREBUILT.glob("*.elf")) if PREBUILT.exists() else []
    hint = f"; give an ELF file or a shipped guest: {', '.join(known)}" if known else ""
    raise CliError(f"no guest image {name!r}{hint}", Exit.NO_INPUT, "no-input")


def add_command(commands: Any, name: str, summary: str, doc: str | None) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its module's docstring as written."""
    # The docstrings are reStructuredText for pdoc; a terminal shows ``x`` as `x`.
    text = None if doc is None else doc.replace("``", "`")
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=text, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return parser


def add_machine_options(parser: argparse.ArgumentParser) -> None:
    """The options that shape a machine: MTE, TCF, RAM, VCPUs, the argument, the console."""
    parser.add_argument("--no-mte", action="store_true", help="do not enable KVM_CAP_ARM_MTE")
    parser.add_argument(
        "--tcf",
        choices=[m for m in TCF_MODES if m != "none"],
        default="sync",
        help="tag check fault mode the guest should use (default: sync)",
    )
    parser.add_argument(
        "--mem",
        type=guest_ram,
        default=128 << 20,
        help="guest RAM, e.g. 128M or 1G (default 128M)",
    )
    parser.add_argument(
        "--vcpus", type=vcpu_count, default=1, help="number of VCPUs, 1 to 8 (default 1)"
    )
    parser.add_argument(
        "--arg",
        type=u64,
        default=0,
        metavar="N",
        help="the guest's program argument, e.g. churn rounds (default 0)",
    )
    add_console_options(parser)
    add_host_options(parser)


def add_host_options(parser: argparse.ArgumentParser) -> None:
    """Which backend, and the model's kernel profile (tagvisor.cli.backend)."""
    add_backend_options(parser)


def host(args: argparse.Namespace, memory: int, *, prealloc: int = 0) -> Kvm:
    """The KVM for a guest of ``memory`` bytes, chosen by --backend and announced."""
    return choose(args, memory, prealloc=prealloc)


def console_sink(enabled: bool, raw: bool = True) -> Callable[[bytes], None]:
    """Where a guest's console bytes go: stdout as they come (``raw``), or a line at
    a time with every report the decoder knows put in words (tagvisor.guests.decode)."""
    if not enabled:
        return lambda byte: None
    decoder = ReportDecoder()
    pending = bytearray()

    def decode(byte: bytes) -> None:
        # A line at a time, through sys.stdout: a live progress bar redirects it and
        # prints each line above itself instead of being written over.
        pending.extend(byte)
        if not pending.endswith(b"\n"):
            return
        line = pending.decode("utf-8", "replace").rstrip("\n")
        pending.clear()
        words = None if raw else decoder.line(line)
        if words is None:
            print(line, flush=True)
        elif words:
            print(words, flush=True)

    return decode


def add_console_options(parser: argparse.ArgumentParser) -> None:
    """--raw: the guest's console as it is, reports in hex."""
    parser.add_argument(
        "--raw",
        action="store_true",
        help="show the guest's console as it is (reports as hex `ucall` lines) instead of "
        "putting the reports in words",
    )


def boot(args: argparse.Namespace, *, stream: bool, tag_access: str = "copy-tags") -> Machine:
    """A paused machine running the guest named on the command line."""
    image = resolve_guest(args.guest)
    return (
        MachineBuilder(host(args, args.mem))
        .memory(args.mem, vmm_prot_mte=tag_access != "copy-tags")
        .mte(not args.no_mte, tcf=args.tcf)
        .vcpus(args.vcpus)
        .argument(args.arg)
        .tag_access(tag_access)
        .console(console_sink(stream, raw=args.raw))
        .image(image)
        .build()
    )


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields update(done, total). What the guest prints
    meanwhile goes above the bar (rich redirects stdout while it is live)."""
    with Progress(
        SpinnerColumn(),
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    ) as progress:
        task = progress.add_task(label, total=1)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=max(total, 1))

        yield update


class MigrationProgress:
    """What a migration has done, as its bar shows it: the pass, the pages sent so
    far, and the pages this pass still has to send; once a pass has nothing left, that
    the source is waiting for the destination (the bar would otherwise sit at 100%)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task = progress.add_task("migrating", total=1)
        self._pass = 0
        self._pass_start = 0  # pages sent before the current pass
        self._sent = 0

    def __call__(self, iteration: int, sent: int, left: int) -> None:
        if iteration != self._pass:
            # The callback comes after each window, so the last pass's final count is
            # where this one started.
            self._pass, self._pass_start = iteration, self._sent
        self._sent = sent
        done = sent - self._pass_start
        state = f"{left} left" if left else "waiting for the destination"
        self._progress.update(
            self._task,
            completed=done,
            total=max(done + left, 1),
            description=f"pass {iteration + 1}: {sent} pages sent, {state}",
        )


@contextmanager
def migration_bar(enabled: bool) -> Iterator[MigrationProgress]:
    """A bar for a migration (tagvisor.migration's progress callback), on stderr."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    ) as progress:
        yield MigrationProgress(progress)


def print_json(value: dict[str, Any]) -> None:
    """A report as indented JSON with sorted keys on stdout."""
    print(json.dumps(value, indent=2, sort_keys=True))


def guest_summary(machine: Machine) -> dict[str, Any]:
    """What a guest did, for --json: its status, state, console and ucalls."""
    return {
        "exit_status": machine.exit_status,
        "state": machine.state.value,
        "console": machine.console.text,
        "ucalls": [
            {"cmd": c.cmd.name, "args": list(c.args), "text": c.text} for c in machine.ucall.calls
        ],
    }
