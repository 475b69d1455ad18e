"""``tagvisor run --kernel IMAGE``: boot a Linux kernel on a real /dev/kvm.

Linux needs the in-kernel GICv3, the arch timer and FP/SIMD, which only a real KVM
has. The backend is chosen as for every guest (--backend, tagvisor.cli.backend); the
model refuses a Linux guest at once, saying what it lacks (exit 69, like any backend
that is not there). The console streams to the terminal; the exit status is 0 when
the guest powered off, 255 when it stopped otherwise or missed its deadline, 66 for
a kernel or initrd that is missing, 1 for one that is not a kernel or an initramfs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from tagvisor.cli.common import console_sink, guest_summary, host, input_file, print_json
from tagvisor.cli.errors import CliError, Exit
from tagvisor.vmm import Machine, MachineBuilder
from tagvisor.vmm.linux.guest import DEFAULT_BOOTARGS, LinuxUnsupported
from tagvisor.vmm.linux.run import LinuxBootError, console_text, run_linux

DEFAULT_DEADLINE: Final = 600.0


def _deadline(text: str) -> float:
    """--deadline: seconds, 0 for none."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: seconds, or 0 for no deadline")
    return value


def add_linux_options(parser: argparse.ArgumentParser) -> None:
    """--kernel, --initrd, --append and --deadline (docs/linux-guests.md)."""
    group = parser.add_argument_group("Linux guests (a real /dev/kvm)")
    group.add_argument("--kernel", type=Path, metavar="IMAGE", help="an arm64 Image")
    group.add_argument("--initrd", type=Path, metavar="FILE", help="its initramfs")
    group.add_argument(
        "--append",
        default=DEFAULT_BOOTARGS,
        help=f"its command line (default {DEFAULT_BOOTARGS!r})",
    )
    group.add_argument(
        "--deadline",
        type=_deadline,
        default=DEFAULT_DEADLINE,
        metavar="SECONDS",
        help=f"stop a guest that has not powered off by then (default {DEFAULT_DEADLINE:.0f}; "
        "0: never)",
    )


def build_linux_machine(args: argparse.Namespace) -> Machine:
    """The Linux machine of ``run --kernel``, paused (CliError 69 where KVM cannot run
    Linux, 66 for a missing file)."""
    kernel = input_file(args.kernel, "kernel")
    initrd = None if args.initrd is None else input_file(args.initrd, "initrd")
    builder = (
        MachineBuilder(host(args, args.mem))
        .memory(args.mem)
        .mte(not args.no_mte, tcf=args.tcf)
        .vcpus(args.vcpus)
        .console(console_sink(not args.json))
        .linux(kernel, initrd, args.append)
    )
    try:
        return builder.build()
    except LinuxUnsupported as error:
        raise CliError(str(error), Exit.UNAVAILABLE, "unavailable") from error


def run_linux_guest(args: argparse.Namespace, machine: Machine) -> int:
    """Run the Linux machine to power-off or its deadline; the exit status."""
    try:
        result = run_linux(machine, args.deadline or None)
    except LinuxBootError as error:
        print(f"\ntagvisor run: {error}", file=sys.stderr)
        return 255
    status = result.exit_status if result.exit_status is not None else 255
    if args.json:
        summary = guest_summary(machine) | {"console": console_text(machine)}
        print_json({**summary, "exit_status": status, "error": result.error})
    elif result.error:
        print(f"\ntagvisor run: the guest stopped: {result.error}", file=sys.stderr)
    return status
