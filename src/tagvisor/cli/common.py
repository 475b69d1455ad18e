"""Helpers shared by the commands: building a machine from the usual options, sizes,
progress bars, and printing reports."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from tagvisor.kvm.model import DEFAULT_PROFILE, PROFILES, ModelKvm
from tagvisor.vmm import Machine, MachineBuilder
from tagvisor.vmm.builder import TCF_MODES
from tagvisor.vmm.loader import ImageError

PREBUILT = Path(__file__).resolve().parents[1] / "guests"


def parse_size(text: str) -> int:
    """'128M', '1G', '65536' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 128M, 1G)") from None


def resolve_guest(name: str) -> Path:
    """A path, or the name of a guest that ships with tagvisor (e.g. ``heap``)."""
    path = Path(name)
    if path.exists():
        return path
    shipped = PREBUILT / f"{name}.elf"
    if shipped.exists():
        return shipped
    known = sorted(p.stem for p in PREBUILT.glob("*.elf")) if PREBUILT.exists() else []
    hint = f"; shipped guests: {', '.join(known)}" if known else ""
    raise ImageError(f"no guest image {name!r}{hint}")


def add_command(commands: Any, name: str, summary: str, doc: str | None) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its module's docstring as written."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return parser


def add_machine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-mte", action="store_true", help="do not enable KVM_CAP_ARM_MTE")
    parser.add_argument(
        "--tcf",
        choices=[m for m in TCF_MODES if m != "none"],
        default="sync",
        help="tag check fault mode the guest should use (default: sync)",
    )
    parser.add_argument(
        "--mem",
        type=parse_size,
        default=128 << 20,
        help="guest RAM, e.g. 128M or 1G (default 128M)",
    )
    parser.add_argument("--vcpus", type=int, default=1, help="number of VCPUs (default 1)")
    parser.add_argument(
        "--arg",
        type=int,
        default=0,
        metavar="N",
        help="the guest's program argument, e.g. churn rounds (default 0)",
    )
    add_host_options(parser)


def add_host_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=DEFAULT_PROFILE,
        help=f"kernel ABI the model follows (default {DEFAULT_PROFILE})",
    )


def model_host(args: argparse.Namespace, memory: int, *, prealloc: int = 0) -> ModelKvm:
    return ModelKvm(host_memory=memory + (256 << 20), profile=args.profile, prealloc=prealloc)


def console_sink(enabled: bool) -> Callable[[bytes], None]:
    def echo(byte: bytes) -> None:
        if enabled:
            sys.stdout.buffer.write(byte)
            sys.stdout.buffer.flush()

    return echo


def boot(args: argparse.Namespace, *, stream: bool, tag_access: str = "copy-tags") -> Machine:
    """A paused machine running the guest named on the command line."""
    image = resolve_guest(args.guest)
    return (
        MachineBuilder(model_host(args, args.mem))
        .memory(args.mem, vmm_prot_mte=tag_access != "copy-tags")
        .mte(not args.no_mte, tcf=args.tcf)
        .vcpus(args.vcpus)
        .argument(args.arg)
        .tag_access(tag_access)
        .console(console_sink(stream))
        .image(image)
        .build()
    )


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields update(done, total)."""
    with Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    ) as progress:
        task = progress.add_task(label, total=1)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=max(total, 1))

        yield update


def print_json(value: dict[str, Any]) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def guest_summary(machine: Machine) -> dict[str, Any]:
    return {
        "exit_status": machine.exit_status,
        "state": machine.state.value,
        "console": machine.console.text,
        "ucalls": [
            {"cmd": c.cmd.name, "args": list(c.args), "text": c.text} for c in machine.ucall.calls
        ],
    }
