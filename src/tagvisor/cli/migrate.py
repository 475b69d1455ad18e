"""tagvisor migrate / tagvisor incoming: live-migrate a running guest with its tags.

Start the destination first:  tagvisor incoming --listen tcp:127.0.0.1:4444
then the source:              tagvisor migrate heap --to tcp:127.0.0.1:4444

The source boots the guest, lets it run, and moves it while it runs (pre-copy on the
dirty log, each page with its tags; --postcopy moves it early and lets the destination
fetch pages on demand). The destination refuses an incompatible guest before any page
is sent, then runs the guest on to its end. The listener binds loopback unless told
otherwise.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tagvisor.cli.common import (
    add_command,
    add_host_options,
    add_machine_options,
    boot,
    console_sink,
    guest_summary,
    model_host,
    parse_size,
    print_json,
    progress_bar,
)
from tagvisor.errors import TagvisorError
from tagvisor.migration import Listener, incoming, migrate, parse_address
from tagvisor.migration.destination import DEFAULT_MAX_MEMORY
from tagvisor.snapshot.guestpages import memory_digest


def _migrate(args: argparse.Namespace) -> int:
    address = parse_address(args.to)
    machine = boot(args, stream=not args.json)
    machine.run(max_exits=args.exits)
    with progress_bar("migrating", not args.json) as progress:
        report = migrate(
            machine,
            address,
            max_iterations=args.iterations,
            compress=args.compress,
            postcopy=args.postcopy,
            progress=lambda iteration, sent, left: progress(sent, sent + left),
        )
    if args.json:
        print_json(report.as_dict())
    else:
        print(
            f"\nmigrated to {address}: {report.iterations} iterations, {report.pages_sent} "
            f"pages ({report.zero_pages} zero), {report.data_bytes} data bytes, "
            f"{report.tag_bytes} tag bytes ({report.tag_share:.4f} of data), "
            f"{report.total_seconds:.3f} s, downtime {report.downtime_seconds * 1e3:.1f} ms",
            file=sys.stderr,
        )
    return 0


def _incoming(args: argparse.Namespace) -> int:
    address = parse_address(args.listen)
    if args.prealloc > args.max_mem:
        raise TagvisorError(
            f"--prealloc {args.prealloc} is more than --max-mem {args.max_mem}: "
            "preallocate at most the largest guest this side accepts"
        )
    kvm = model_host(args, args.max_mem, prealloc=args.prealloc)
    listener = Listener(address)
    # Announced on stderr (stdout stays clean for --json); port 0 picks a free one.
    print(f"tagvisor incoming: listening on {listener.address}", file=sys.stderr, flush=True)
    machine, report = incoming(kvm, listener, max_memory=args.max_mem, timeout=args.timeout)
    arrived = memory_digest(machine) if report.postcopy is None else None
    if not args.json and arrived is not None:
        print(
            f"tagvisor incoming: guest arrived, memory+tags digest {arrived[:16]}", file=sys.stderr
        )
    machine.console.sink = console_sink(not args.json)
    result = machine.run()
    if report.postcopy is not None:
        report.postcopy.join()
    status = result.exit_status if result.exit_status is not None else 255
    if args.json:
        print_json(
            {
                **guest_summary(machine),
                "exit_status": status,
                "error": result.error,
                "pages_received": report.pages_received,
                "iterations": report.iterations,
                "digest_at_arrival": arrived,
            }
        )
    return status


def register(commands: Any) -> None:
    send = add_command(
        commands,
        "migrate",
        "boot a guest and live-migrate it, tags and all, to a destination",
        __doc__,
    )
    send.add_argument("guest", help="an AArch64 ELF file, or a shipped guest name")
    send.add_argument("--to", required=True, metavar="tcp:HOST:PORT", help="the destination")
    send.add_argument(
        "--exits", type=int, default=40, help="VCPU exits to run before migrating (default 40)"
    )
    send.add_argument("--iterations", type=int, default=8, help="pre-copy passes at most")
    send.add_argument(
        "--postcopy",
        action="store_true",
        help="move the guest after one pass and fetch the rest on demand",
    )
    send.add_argument("--compress", action="store_true", help="zlib-compress page data")
    add_machine_options(send)
    send.add_argument("--json", action="store_true", help="print the report as JSON")
    send.set_defaults(run=_migrate)

    receive = add_command(commands, "incoming", "wait for a migrating guest, then run it", __doc__)
    receive.add_argument(
        "--listen",
        default="tcp:127.0.0.1:4444",
        metavar="tcp:HOST:PORT",
        help="where to listen (default tcp:127.0.0.1:4444, loopback)",
    )
    receive.add_argument(
        "--max-mem",
        type=parse_size,
        default=DEFAULT_MAX_MEMORY,
        help="refuse guests with more RAM than this (default 16G)",
    )
    receive.add_argument(
        "--prealloc",
        type=parse_size,
        default=0,
        metavar="SIZE",
        help="fault in this much memory before listening, e.g. 4G, so the guest's pages "
        "land in memory that is already there (as QEMU's -mem-prealloc; default 0)",
    )
    receive.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the source (default 300)"
    )
    add_host_options(receive)
    receive.add_argument("--json", action="store_true", help="print a JSON report at the end")
    receive.set_defaults(run=_incoming)
