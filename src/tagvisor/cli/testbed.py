"""tagvisor testbed: boot Debian's arm64 kernel under QEMU and run a suite on real KVM.

``tagvisor testbed`` builds the image (cached under .cache/testbed), boots it with
``-M virt,virtualization=on,mte=on`` and runs the conformance suite against the
guest kernel's ``/dev/kvm``; ``--compare`` also runs the model's matching profile and
lists every field that differs. ``--suite`` runs another suite: a module inside
tagvisor, or a ``.py`` file with a ``run()`` returning JSON-able results.
``--cross-migrate`` live-migrates the heap guest from the model into a real KVM VM and
from a real one into the model, and compares the digests on both sides.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tagvisor.cli.boot_phases import ConsoleWatcher
from tagvisor.testbed.boot import DEFAULT_TIMEOUT, console_log, run_suite
from tagvisor.testbed.parts import KERNEL_SUITES

CONFORMANCE = "tagvisor.conformance.suite"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _cross(args: argparse.Namespace) -> int:
    from tagvisor.conformance.crossing import cross_backend_migration

    result = cross_backend_migration(args.kernel)
    if result["status"] != 0:
        _say(f"testbed: the image's side failed:\n{result['error']}")
        return 1
    status = 0
    for direction, source, destination in (
        ("model -> real KVM", result["host"]["model_to_real"], result["image"]["into_real"]),
        ("real KVM -> model", result["image"]["out_of_real"], result["host"]["real_to_model"]),
    ):
        same = source["source_digest"] == destination["arrival_digest"]
        ok = same and destination["overflow_at_destination"] and destination["status"] == 0
        status = status or (0 if ok else 1)
        _say(
            f"testbed: {direction} ({result['kernel']}): memory and tags "
            f"{'equal' if same else 'DIFFER'}, downtime {source['downtime_ms']} ms, "
            f"overflow caught at the destination: {destination['overflow_at_destination']}, "
            f"exit status {destination['status']}"
        )
    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        print()
    return status


def _run(args: argparse.Namespace) -> int:
    if args.cross_migrate:
        return _cross(args)
    if args.linux_guest:
        from tagvisor.cli.linux_testbed import run_linux_guest_in_testbed

        return run_linux_guest_in_testbed(args)
    # The boot takes a minute under TCG: say how far it got as it goes.
    with ConsoleWatcher(console_log(), _say):
        run = run_suite(args.suite, kernel_suite=args.kernel, timeout=args.timeout, say=_say)
    _say(
        f"testbed: kernel {run.kernel} ({run.kernel_package}); image built in "
        f"{run.seconds_build:.1f} s, boot to power-off {run.seconds_boot:.1f} s, "
        f"suite {run.seconds_suite:.1f} s; exit status {run.status}"
    )
    if run.error:
        _say(run.error)
    if args.console:
        print(run.console, file=sys.stderr)
    report: dict[str, Any] = {
        "kernel": run.kernel,
        "kernel_package": run.kernel_package,
        "status": run.status,
        "result": run.result,
    }
    status = run.status
    if args.compare and args.suite == CONFORMANCE and run.status == 0:
        from tagvisor.conformance.compare import compare, model_results, profile_for

        profile = profile_for(args.kernel)
        real = run.result["scenarios"]
        model = model_results(profile)
        differences = compare(model, real)
        both = sorted(model.keys() & real.keys())
        report["profile"] = profile
        report["differences"] = [vars(d) for d in differences]
        differing = {d.scenario for d in differences}
        _say(
            f"testbed: {len(both)} scenarios on both backends ({profile} vs {run.kernel}): "
            f"{len(both) - len(differing)} agree, {len(differing)} differ"
        )
        for difference in differences:
            _say(f"  {difference}")
        status = status or (1 if differences else 0)
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        print()
    return status


def register(commands: Any) -> None:
    """Add the ``testbed`` command."""
    parser = commands.add_parser(
        "testbed",
        help="run a suite against a real arm64 KVM with MTE, under QEMU",
        description=(__doc__ or "").replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--suite", default=CONFORMANCE, help=f"module or .py file (default {CONFORMANCE})"
    )
    parser.add_argument(
        "--kernel",
        choices=KERNEL_SUITES,
        default="6.1",
        metavar="{6.1,6.12,7.3}",
        help="the kernel: 6.1 (bookworm), 6.12 (bookworm-backports) or 7.3 "
        "(trixie-backports); release and backports are the old names of 6.1 and 6.12",
    )
    parser.add_argument("--compare", action="store_true", help="compare with the model")
    parser.add_argument(
        "--cross-migrate",
        action="store_true",
        help="migrate the heap guest model -> real KVM and back instead of a suite",
    )
    parser.add_argument(
        "--linux-guest",
        action="store_true",
        help="boot the testbed's kernel as tagvisor's MTE Linux guest on the real KVM, "
        "snapshot and restore it, live-migrate it, and report each step",
    )
    parser.add_argument(
        "--boot-only",
        action="store_true",
        help="with --linux-guest: only boot the guest to its /init and power it off",
    )
    parser.add_argument(
        "--no-qemu",
        action="store_true",
        help="with --linux-guest: skip the side-by-side run of QEMU 10 + KVM",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds the testbed may take (default {DEFAULT_TIMEOUT:g}; --linux-guest "
        "allows at least 900, --boot-only 300)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--console", action="store_true", help="print the serial console")
    parser.set_defaults(run=_run)
