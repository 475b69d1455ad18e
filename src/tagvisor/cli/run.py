"""tagvisor run: boot a guest and show its console, its reports put in words.

The guest runs on the real /dev/kvm of an arm64 host with MTE, else on the software
model (--backend; the command says which).

With --api-socket PATH the VM also serves its control socket: `tagvisor remote
--api-socket PATH status|pause|resume|snapshot FILE|migrate --to ADDR|stop`
(docs/api-socket.md). The command then ends when the guest powers off, fails,
migrates away or is stopped.

The exit status is the guest's: its UCALL_DONE value (0 when it powers off without
one), 255 when it stopped on an error; 0 when it migrated away or was stopped through
the socket. Before the guest runs: 2 for a usage error, 66 for a missing guest image,
69 for a socket that cannot be served (docs/cli.md).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tagvisor.api import Controller
from tagvisor.cli.common import add_command, add_machine_options, boot, guest_summary, print_json
from tagvisor.cli.control import add_api_option, exit_status, served, wait_for_end
from tagvisor.cli.errors import UsageError
from tagvisor.cli.linux import add_linux_options, build_linux_machine, run_linux_guest
from tagvisor.guests.catalogue import BY_NAME, help_table
from tagvisor.vmm import Machine
from tagvisor.vmm.machine import RunResult
from tagvisor.vmm.tag_access import WAYS


def _serve(args: argparse.Namespace, machine: Machine) -> int:
    controller = Controller(machine, backend=args.backend_name)
    with served(args.api_socket, controller):
        controller.start()
        why = wait_for_end(controller)
    if controller.migrated_to is not None and not args.json:
        print(f"\ntagvisor run: the guest migrated to {controller.migrated_to}", file=sys.stderr)
    if why == "stopped" and not args.json:
        print("\ntagvisor run: stopped through the control socket", file=sys.stderr)
    result = controller.result
    _finish(args, machine, result, exit_status(controller, why), why)
    return exit_status(controller, why)


def _finish(
    args: argparse.Namespace, machine: Machine, result: RunResult | None, status: int, end: str
) -> None:
    error = result.error if result is not None else None
    if args.json:
        print_json(
            {
                **guest_summary(machine),
                "exit_status": status,
                "error": error,
                "end": end,
                "backend": args.backend_name,
                "exits": machine.exits,
                "exits_by_reason": dict(machine.by_reason),
            }
        )
    elif error:
        print(f"\ntagvisor run: the guest stopped: {error}", file=sys.stderr)


def _warn_if_endless(args: argparse.Namespace) -> None:
    guest = BY_NAME.get(args.guest)
    if guest is not None and not guest.ends and args.arg == 0 and not args.json:
        print(f"tagvisor run: note: {guest.forever}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    if args.kernel is not None:
        linux = build_linux_machine(args)
        if args.api_socket is not None:  # served like any guest, with no deadline
            return _serve(args, linux)
        return run_linux_guest(args, linux)
    if args.guest is None:
        raise UsageError("tagvisor run: name a guest, or a Linux kernel with --kernel")
    machine = boot(args, stream=not args.json, tag_access=args.tag_access)
    _warn_if_endless(args)
    if args.api_socket is not None:
        return _serve(args, machine)
    result = machine.run()
    status = result.exit_status if result.exit_status is not None else 255
    _finish(args, machine, result, status, "powered-off" if result.error is None else "failed")
    return status


def register(commands: Any) -> None:
    """Add the ``run`` command."""
    parser = add_command(
        commands,
        "run",
        "boot a guest and show its console, its reports in words",
        f"{__doc__}\n{help_table()}",
    )
    parser.add_argument(
        "guest", nargs="?", help="an AArch64 ELF file, or a shipped guest name (e.g. heap)"
    )
    add_machine_options(parser)
    parser.add_argument(
        "--tag-access",
        choices=WAYS,
        default="copy-tags",
        help="how the VMM reaches guest tags (default copy-tags)",
    )
    add_api_option(parser)
    add_linux_options(parser)
    parser.add_argument(
        "--json", action="store_true", help="print a JSON report instead of streaming the console"
    )
    parser.set_defaults(run=_run)
