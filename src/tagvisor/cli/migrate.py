"""tagvisor migrate / tagvisor incoming: live-migrate a running guest with its tags.

Start the destination first:  tagvisor incoming --listen tcp:127.0.0.1:4444
then the source:              tagvisor migrate heap --to tcp:127.0.0.1:4444

The source boots the guest, lets it run, and moves it while it runs (pre-copy on the
dirty log, each page with its tags; --postcopy moves it early and lets the destination
fetch pages on demand). The destination refuses an incompatible guest before any page
is sent, then runs the guest on to its end. The listener binds loopback unless told
otherwise.

If the migration fails before the source hands the guest over (or Ctrl-C interrupts
it), the guest is intact: the source runs it on here, or stops it with --on-failure
stop. Exit codes of migrate: 0 moved; 1 an error (the migration failed and the guest
ran on here, or was stopped); 3 handed over but the destination did not confirm (the
guest stays paused here: resume it nowhere until you know the destination dropped
it); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from tagvisor.api import Controller
from tagvisor.cli import common
from tagvisor.cli.capture import CapturingListener
from tagvisor.cli.common import (
    add_command,
    add_console_options,
    add_host_options,
    add_machine_options,
    boot,
    console_sink,
    guest_summary,
    host,
    migration_bar,
    output_file,
    parse_size,
    print_json,
)
from tagvisor.cli.control import add_api_option, exit_status, served, wait_for_end
from tagvisor.cli.errors import CliError, Exit
from tagvisor.errors import TagvisorError
from tagvisor.kvm.api import Kvm
from tagvisor.migration import (
    IncomingReport,
    Listener,
    MigrationError,
    TcpAddress,
    incoming,
    migrate,
)
from tagvisor.migration.destination import DEFAULT_MAX_MEMORY
from tagvisor.migration.transport import TransportError
from tagvisor.snapshot.guestpages import memory_digest
from tagvisor.vmm import Machine

#: Exit codes of `tagvisor migrate` beyond 0 (moved) and 1 (an error).
EXIT_UNCONFIRMED = 3  # committed, but the destination did not confirm: paused here
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it


def _migrate(args: argparse.Namespace) -> int:
    address: TcpAddress = args.to
    machine = boot(args, stream=not args.json)
    machine.run(max_exits=args.exits)
    try:
        with migration_bar(not args.json) as progress:
            report = migrate(
                machine,
                address,
                max_iterations=args.iterations,
                compress=args.compress,
                postcopy=args.postcopy,
                postcopy_bandwidth=args.postcopy_bandwidth,
                progress=progress,
            )
    except (MigrationError, KeyboardInterrupt) as error:
        return _keep_guest(machine, args, error)
    if not report.confirmed:
        for note in report.notes:
            print(f"tagvisor migrate: warning: {note}", file=sys.stderr)
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
    return 0 if report.confirmed else EXIT_UNCONFIRMED


def _keep_guest(machine: Machine, args: argparse.Namespace, error: BaseException) -> int:
    """After a migration that failed before its commit (or was interrupted), the
    guest is whole here: run it on, or stop it if --on-failure stop asked for that."""
    what = "was interrupted" if isinstance(error, KeyboardInterrupt) else f"failed: {error}"
    code = EXIT_INTERRUPTED if isinstance(error, KeyboardInterrupt) else 1
    if args.on_failure == "stop":
        _say(args, f"the migration {what}; the guest is intact and was stopped here", code)
        return code
    _say(args, f"the migration {what}; the guest is intact and runs on here (Ctrl-C stops it)")
    try:
        result = machine.run()
    except KeyboardInterrupt:
        machine.pause()
        _say(args, "stopped the guest here", EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    if args.json:
        print_json({**guest_summary(machine), "migrated": False, "reason": str(error)})
    return code if result.exit_status is None else max(code, result.exit_status)


def _say(args: argparse.Namespace, message: str, code: int | None = None) -> None:
    print(f"tagvisor migrate: {message}", file=sys.stderr, flush=True)
    if args.json and code is not None:
        # The same error object as every other command's (tagvisor.cli.errors.report).
        error = {"kind": "migration-failed", "message": message, "exit_status": code}
        print_json({"error": error, "migrated": False})


def _listen(args: argparse.Namespace) -> tuple[Kvm, Listener]:
    if args.prealloc > args.max_mem:
        raise TagvisorError(
            f"--prealloc {args.prealloc} is more than --max-mem {args.max_mem}: "
            "preallocate at most the largest guest this side accepts"
        )
    kvm = host(args, args.max_mem, prealloc=args.prealloc)
    try:
        listener = _listener(args)
    except TransportError as error:  # the address is taken, or not this host's
        raise CliError(
            f"{error} (choose another --listen)", Exit.UNAVAILABLE, "unavailable"
        ) from None
    # Announced on stderr (stdout stays clean for --json); port 0 picks a free one.
    print(f"tagvisor incoming: listening on {listener.address}", file=sys.stderr, flush=True)
    return kvm, listener


def _listener(args: argparse.Namespace) -> Listener:
    if args.capture is None:
        return Listener(args.listen)
    output_file(args.capture)
    # Unbuffered: what came before a failure is in the file too. Closed at exit, after
    # the last read (a post-copy receiver reads on after incoming() returns).
    sink = args.capture.open("wb", buffering=0)
    return CapturingListener(args.listen, sink)


def _arrived(args: argparse.Namespace, machine: Machine, report: IncomingReport) -> str | None:
    arrived = memory_digest(machine) if report.postcopy is None else None
    if not args.json and arrived is not None:
        print(
            f"tagvisor incoming: guest arrived, memory+tags digest {arrived[:16]}", file=sys.stderr
        )
    machine.set_console_sink(console_sink(not args.json, raw=args.raw))
    return arrived


def _summary(
    args: argparse.Namespace,
    machine: Machine,
    report: IncomingReport,
    status: int,
    error: str | None,
    arrived: str | None,
) -> None:
    if args.json:
        print_json(
            {
                **guest_summary(machine),
                "exit_status": status,
                "error": error,
                "pages_received": report.pages_received,
                "iterations": report.iterations,
                "digest_at_arrival": arrived,
            }
        )


def _incoming(args: argparse.Namespace) -> int:
    kvm, listener = _listen(args)
    if args.api_socket is not None:
        return _incoming_served(args, kvm, listener)
    machine, report = incoming(kvm, listener, max_memory=args.max_mem, timeout=args.timeout)
    arrived = _arrived(args, machine, report)
    result = machine.run()
    if report.postcopy is not None:
        report.postcopy.join()
    status = result.exit_status if result.exit_status is not None else 255
    _summary(args, machine, report, status, result.error, arrived)
    return status


def _incoming_served(args: argparse.Namespace, kvm: Kvm, listener: Listener) -> int:
    """The destination with a control socket: `status` says "waiting" until the guest
    arrives, then the guest is driven like `run --api-socket`'s."""
    controller = Controller(None, backend=args.backend_name)
    arrival: dict[str, Any] = {}

    def receive() -> None:
        try:
            machine, report = incoming(kvm, listener, max_memory=args.max_mem, timeout=args.timeout)
        except TagvisorError as error:
            arrival["error"] = error
            controller.stop()
            return
        arrival.update(report=report, digest=_arrived(args, machine, report))
        controller.attach(machine)
        controller.start()

    with served(args.api_socket, controller):
        threading.Thread(target=receive, name="incoming", daemon=True).start()
        why = wait_for_end(controller)
    if "error" in arrival:
        raise arrival["error"]
    machine, report = controller.machine, arrival.get("report")
    if machine is None or report is None:
        return int(Exit.OK)  # stopped before any guest came
    if report.postcopy is not None and why != "stopped":
        report.postcopy.join()
    status = exit_status(controller, why)
    error = controller.result.error if controller.result is not None else None
    _summary(args, machine, report, status, error, arrival["digest"])
    return status


def register(commands: Any) -> None:
    """Add the ``migrate`` and ``incoming`` commands."""
    send = add_command(
        commands,
        "migrate",
        "boot a guest and live-migrate it, tags and all, to a destination",
        __doc__,
    )
    send.add_argument("guest", help="an AArch64 ELF file, or a shipped guest name")
    send.add_argument(
        "--to", type=common.address, required=True, metavar="tcp:HOST:PORT", help="the destination"
    )
    send.add_argument(
        "--exits",
        type=common.count,
        default=40,
        help="VCPU exits to run before migrating (default 40)",
    )
    send.add_argument("--iterations", type=common.count, default=8, help="pre-copy passes at most")
    send.add_argument(
        "--postcopy",
        action="store_true",
        help="move the guest after one pass and fetch the rest on demand",
    )
    send.add_argument(
        "--postcopy-bandwidth",
        type=common.bandwidth,
        metavar="BYTES/s",
        help="with --postcopy: push the remaining pages at most this fast (e.g. 64M); "
        "pages the guest asks for are sent at once (default: as fast as the link goes)",
    )
    send.add_argument("--compress", action="store_true", help="zlib-compress page data")
    send.add_argument(
        "--on-failure",
        choices=("resume", "stop"),
        default="resume",
        help="if the migration fails before the handover, or Ctrl-C interrupts it: run the "
        "guest on here (resume, the default) or stop it (stop)",
    )
    add_machine_options(send)
    send.add_argument("--json", action="store_true", help="print the report as JSON")
    send.set_defaults(run=_migrate)

    receive = add_command(commands, "incoming", "wait for a migrating guest, then run it", __doc__)
    receive.add_argument(
        "--listen",
        type=common.address,
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
        "--timeout",
        type=common.seconds,
        default=300.0,
        help="seconds to wait for the source (default 300)",
    )
    add_console_options(receive)
    add_host_options(receive)
    add_api_option(receive)
    receive.add_argument(
        "--capture",
        type=Path,
        metavar="FILE",
        help="keep the stream the source sends in FILE, for `tagvisor inspect FILE`",
    )
    receive.add_argument("--json", action="store_true", help="print a JSON report at the end")
    receive.set_defaults(run=_incoming)
