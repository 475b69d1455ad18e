"""tagvisor run: boot a guest on the KVM model and stream its console.

The exit status is the guest's: its UCALL_DONE value (0 when it powers off without
one), 255 when it stopped on an error, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tagvisor.cli.common import add_command, add_machine_options, boot, guest_summary, print_json
from tagvisor.vmm.loader import ImageError
from tagvisor.vmm.tag_access import WAYS


def _run(args: argparse.Namespace) -> int:
    try:
        machine = boot(args, stream=not args.json, tag_access=args.tag_access)
    except ImageError as error:
        print(f"tagvisor run: {error}", file=sys.stderr)
        return 2
    result = machine.run()
    status = result.exit_status if result.exit_status is not None else 255
    if args.json:
        print_json(
            {
                **guest_summary(machine),
                "exit_status": status,
                "error": result.error,
                "exits": result.exits,
                "exits_by_reason": result.by_reason,
            }
        )
    elif result.error:
        print(f"\ntagvisor run: the guest stopped: {result.error}", file=sys.stderr)
    return status


def register(commands: Any) -> None:
    parser = add_command(
        commands, "run", "boot a guest on the KVM model and stream its console", __doc__
    )
    parser.add_argument("guest", help="an AArch64 ELF file, or a shipped guest name (e.g. heap)")
    add_machine_options(parser)
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
