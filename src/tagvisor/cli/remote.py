"""tagvisor remote: drive a VM through its control socket.

Start the VM with a socket, then drive it from another shell:

    tagvisor run churn --api-socket /tmp/vm.sock
    tagvisor remote --api-socket /tmp/vm.sock status
    tagvisor remote --api-socket /tmp/vm.sock pause
    tagvisor remote --api-socket /tmp/vm.sock snapshot vm.snap
    tagvisor remote --api-socket /tmp/vm.sock resume
    tagvisor remote --api-socket /tmp/vm.sock migrate --to tcp:127.0.0.1:4444
    tagvisor remote --api-socket /tmp/vm.sock stop

A refused or failed request exits 1 with the server's reason (the VM carries on; after
a failed migration it is still running here); no VM at the socket exits 69.
docs/api-socket.md describes the protocol for other clients.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tagvisor.api import ApiClient, ApiError, ApiUnavailable
from tagvisor.cli.common import add_command, address, print_json, seconds
from tagvisor.cli.errors import CliError, Exit

#: tcf numbers as the boot block has them (docs/guest-abi.md).
TCF_NAMES = {0: "none", 1: "sync", 2: "async", 3: "asymm"}


def _describe(result: dict[str, Any]) -> str:
    """A status as one line."""
    line = f"{result.get('state')} ({result.get('backend')} backend)"
    if "ram_bytes" in result:
        mte = f"MTE {TCF_NAMES.get(result.get('tcf', 0), '?')}" if result.get("mte") else "no MTE"
        line += (
            f": {result['ram_bytes'] >> 20} MiB, {result.get('vcpus')} VCPU(s), {mte}, "
            f"{result.get('exits')} exits, {result.get('ucalls')} ucalls"
        )
    if result.get("exit_status") is not None:
        line += f", exit status {result['exit_status']}"
    if "migrated_to" in result:
        line += f", migrated to {result['migrated_to']}"
    if "error" in result:
        line += f"; error: {result['error']}"
    return line


def _say(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.action == "snapshot":
        print(
            f"snapshot {result['path']}: {result['pages_stored']} of {result['pages_total']} "
            f"pages, {result['tag_bytes']} tag bytes, {result['file_bytes']} bytes; "
            f"the guest is {result['state']}"
        )
    elif args.action == "migrate":
        print(
            f"migrated to {result['to']}: {result['iterations']} passes, "
            f"{result['pages_sent']} pages, {result['tag_bytes']} tag bytes, "
            f"downtime {result['downtime_seconds'] * 1e3:.1f} ms"
        )
    else:
        print(_describe(result))


def _arguments(args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "snapshot":
        # The server may run elsewhere in the file system: send an absolute path.
        return {"path": str(Path(args.file).resolve())}
    if args.action == "migrate":
        return {"to": str(args.to), "postcopy": args.postcopy, "compress": args.compress}
    return {}


def _remote(args: argparse.Namespace) -> int:
    try:
        with ApiClient(args.api_socket, timeout=args.timeout) as client:
            result = client.call(args.action, **_arguments(args))
    except ApiUnavailable as error:
        raise CliError(str(error), Exit.UNAVAILABLE, "unavailable") from None
    except ApiError as error:
        raise CliError(f"{args.action}: {error.message}", Exit.FAILED, error.code) from None
    if args.json:
        print_json(result)
    else:
        _say(args, result)
    return int(Exit.OK)


def register(commands: Any) -> None:
    """Add the ``remote`` command."""
    parser = add_command(commands, "remote", "drive a VM through its control socket", __doc__)
    parser.add_argument(
        "--api-socket", type=Path, required=True, metavar="PATH", help="the VM's control socket"
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=600.0,
        help="seconds to wait for the reply (default 600: a migration can take a while)",
    )
    parser.add_argument("--json", action="store_true", help="print the server's result as JSON")
    # --json is accepted after the action too (`remote ... status --json`).
    late = argparse.ArgumentParser(add_help=False)
    late.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="as JSON")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("status", help="what the VM is doing", parents=[late])
    actions.add_parser("pause", help="pause the guest", parents=[late])
    actions.add_parser("resume", help="let a paused guest run on", parents=[late])
    save = actions.add_parser(
        "snapshot", help="save the guest with every tag to FILE", parents=[late]
    )
    save.add_argument("file", help="the snapshot file (written by the VM's process)")
    move = actions.add_parser(
        "migrate", help="live-migrate the guest to a `tagvisor incoming`", parents=[late]
    )
    move.add_argument(
        "--to", type=address, required=True, metavar="tcp:HOST:PORT", help="the destination"
    )
    move.add_argument("--postcopy", action="store_true", help="move early, fetch pages on demand")
    move.add_argument("--compress", action="store_true", help="zlib-compress page data")
    actions.add_parser("stop", help="end the VM (the guest does not finish)", parents=[late])
    parser.set_defaults(run=_remote)
