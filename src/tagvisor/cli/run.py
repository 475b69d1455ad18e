"""tagvisor run: boot a guest on the KVM model and stream its console.

The exit status is the guest's: its UCALL_DONE value (0 when it powers off without
one), 255 when it stopped on an error, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tagvisor.kvm.model import DEFAULT_PROFILE, PROFILES, ModelKvm
from tagvisor.vmm import MachineBuilder
from tagvisor.vmm.builder import TCF_MODES
from tagvisor.vmm.loader import ImageError
from tagvisor.vmm.tag_access import WAYS

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


def _run(args: argparse.Namespace) -> int:
    try:
        image = resolve_guest(args.guest)
    except ImageError as error:
        print(f"tagvisor run: {error}", file=sys.stderr)
        return 2
    kvm = ModelKvm(host_memory=args.mem + (64 << 20), profile=args.profile)
    stream = not args.json

    def echo(byte: bytes) -> None:
        if stream:
            sys.stdout.buffer.write(byte)
            sys.stdout.buffer.flush()

    machine = (
        MachineBuilder(kvm)
        .memory(args.mem, vmm_prot_mte=args.tag_access != "copy-tags")
        .mte(not args.no_mte, tcf=args.tcf)
        .vcpus(args.vcpus)
        .tag_access(args.tag_access)
        .console(echo)
        .image(image)
        .build()
    )
    result = machine.run()
    status = result.exit_status if result.exit_status is not None else 255
    if args.json:
        report: dict[str, Any] = {
            "guest": str(image),
            "exit_status": status,
            "state": result.state.value,
            "error": result.error,
            "console": machine.console.text,
            "ucalls": [
                {"cmd": c.cmd.name, "args": list(c.args), "text": c.text}
                for c in machine.ucall.calls
            ],
            "exits": result.exits,
            "exits_by_reason": result.by_reason,
        }
        print(json.dumps(report, indent=2))
    elif result.error:
        print(f"\ntagvisor run: the guest stopped: {result.error}", file=sys.stderr)
    return status


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="boot a guest on the KVM model and stream its console",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("guest", help="an AArch64 ELF file, or a shipped guest name (e.g. heap)")
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
        "--profile",
        choices=sorted(PROFILES),
        default=DEFAULT_PROFILE,
        help=f"kernel ABI the model follows (default {DEFAULT_PROFILE})",
    )
    parser.add_argument(
        "--tag-access",
        choices=WAYS,
        default="copy-tags",
        help="how the VMM reaches guest tags (default copy-tags)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON report instead of streaming the console"
    )
    parser.set_defaults(run=_run)
