"""tagvisor snapshot / tagvisor restore: save a running guest with its tags, and
bring it back.

``snapshot`` boots a guest, lets it run for a number of exits, pauses it and writes
the snapshot. ``restore`` builds the machine from the file (verified whole first),
writes every page's tags before the guest runs, and runs it to the end.
``--no-tags`` restores data only, as a VMM that ignores MTE would: watch the guest
fault on its own pointers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tagvisor.cli.common import (
    add_command,
    add_console_options,
    add_host_options,
    add_machine_options,
    boot,
    console_sink,
    count,
    guest_summary,
    host,
    input_file,
    output_file,
    print_json,
    progress_bar,
)
from tagvisor.cli.errors import CliError
from tagvisor.snapshot import FormatError, read_snapshot, restore_snapshot, save_snapshot
from tagvisor.vmm.machine import Machine


def _snapshot(args: argparse.Namespace) -> int:
    output_file(args.output)  # before the guest runs for nothing
    machine = boot(args, stream=not args.json)
    machine.run(max_exits=args.exits)
    with progress_bar("saving", not args.json) as progress:
        report = save_snapshot(machine, args.output, progress)
    summary = {
        "path": report.path,
        "file_bytes": report.file_bytes,
        "pages_total": report.pages_total,
        "pages_stored": report.stats.pages - report.stats.zero_pages,
        "data_bytes": report.stats.data_bytes,
        "tag_bytes": report.stats.tag_bytes,
        "digest": report.digest,
        "guest_exits_before": machine.exits,
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"\nsnapshot {report.path}: {summary['pages_stored']} of {report.pages_total} "
            f"pages stored, {report.stats.tag_bytes} tag bytes, {report.file_bytes} bytes, "
            f"digest {report.digest[:16]}",
            file=sys.stderr,
        )
    return 0


def unfinished_line(machine: Machine) -> bytes:
    """What the guest's console holds after its last newline (the polled console's, or
    a Linux guest's PL011)."""
    text = machine.console.text
    device = machine.devices.get("pl011-amba")
    amba = getattr(device, "text", "")
    if isinstance(amba, str) and amba:
        text = amba
    return text.rpartition("\n")[2].encode()


def _restore(args: argparse.Namespace) -> int:
    try:
        snapshot = read_snapshot(input_file(args.file, "snapshot file"))
    except FormatError as error:
        raise CliError(f"{args.file} is not a snapshot tagvisor can restore: {error}") from None
    kvm = host(args, snapshot.machine.config.ram_size)
    with progress_bar("restoring", not args.json) as progress:
        machine = restore_snapshot(args.file, kvm, with_tags=not args.no_tags, progress=progress)
    sink = console_sink(not args.json, raw=args.raw)
    # The guest may have been saved half way through a line: give the sink that part
    # again, so the line comes out whole (and decoded) when the guest finishes it.
    for byte in unfinished_line(machine):
        sink(bytes([byte]))
    machine.set_console_sink(sink)
    result = machine.run()
    status = result.exit_status if result.exit_status is not None else 255
    if args.json:
        print_json({**guest_summary(machine), "exit_status": status, "error": result.error})
    return status


def register(commands: Any) -> None:
    """Add the ``snapshot`` and ``restore`` commands."""
    save = add_command(
        commands, "snapshot", "boot a guest, run it a while, and save it with every tag", __doc__
    )
    save.add_argument("guest", help="an AArch64 ELF file, or a shipped guest name")
    save.add_argument("-o", "--output", type=Path, required=True, help="the snapshot file")
    save.add_argument(
        "--exits",
        type=count,
        default=40,
        help="let the guest run this many VCPU exits first (default 40)",
    )
    add_machine_options(save)
    save.add_argument("--json", action="store_true", help="print the report as JSON")
    save.set_defaults(run=_snapshot)

    load = add_command(
        commands, "restore", "restore a snapshot (tags first) and run the guest on", __doc__
    )
    load.add_argument("file", type=Path, help="a snapshot written by tagvisor snapshot")
    load.add_argument(
        "--no-tags",
        action="store_true",
        help="restore data only (shows what losing tags does to a guest)",
    )
    add_console_options(load)
    add_host_options(load)
    load.add_argument("--json", action="store_true", help="print a JSON report at the end")
    load.set_defaults(run=_restore)
