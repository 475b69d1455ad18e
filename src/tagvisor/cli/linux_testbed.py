"""``tagvisor testbed --linux-guest``: inside the testbed, boot its own kernel again as
a Linux guest of tagvisor on the real KVM with its MTE workload, snapshot and restore
it, live-migrate it, and print what each step showed (docs/linux-guests.md). Exit
status 0 when every step passed. ``--boot-only`` just boots the guest to its /init and
powers it off, printing its console."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tagvisor.cli.boot_phases import ConsoleWatcher
from tagvisor.testbed.boot import console_log
from tagvisor.testbed.linux_guest import boot_linux_guest, guest_console, linux_session
from tagvisor.testbed.session_report import failures, summary


def _say(text: str) -> None:
    """A progress line on stderr (stdout carries the guest's console or the JSON)."""
    print(text, file=sys.stderr, flush=True)


def run_linux_guest_in_testbed(args: argparse.Namespace) -> int:
    """The session, or with --boot-only the boot to /init; 0 if it all passed."""
    if args.boot_only:
        return _boot_only(args)
    with ConsoleWatcher(console_log(), _say):
        run = linux_session(
            args.kernel, qemu=not args.no_qemu, timeout=max(args.timeout, 900.0), say=_say
        )
    result: dict[str, Any] = run.result if isinstance(run.result, dict) else {}
    if not result:
        result = {"error": run.error or f"the testbed's suite ended with status {run.status}"}
    figures = summary(result)
    problems = failures(result)
    if args.json:
        json.dump({"kernel": run.kernel, "passed": not problems, **figures}, sys.stdout, indent=2)
        print()
    else:
        _print_session(run.kernel, figures)
    for problem in problems:
        _say(f"testbed: {problem}")
    return 0 if not problems else 1


def _print_session(kernel: str, figures: dict[str, Any]) -> None:
    snap, mig = figures["snapshot"], figures["migration"]
    print(f"Linux {kernel} as tagvisor's MTE guest, {figures['granules']} granules tagged")
    boot, ready = figures["boot_seconds"], figures["seconds_to_ready"]
    print(f"  boot to /init {boot} s, workload READY {ready} s")
    print(
        f"  snapshot: save {snap['save_seconds']} s, restore {snap['restore_seconds']} s, "
        f"{snap['file_bytes']} bytes; digests equal: {snap['digests_equal']}; guest verified "
        f"{snap['guest_verified_granules']} granules, {snap['mismatches']} mismatches, "
        f"bugs caught {snap['bugs_caught']}"
    )
    print(
        f"  migration: {mig['total_seconds']} s, downtime {mig['downtime_ms']} ms, tag share "
        f"{mig['tag_share']}; digests equal: {mig['digests_equal']}; guest verified "
        f"{mig['guest_verified_granules']} granules, {mig['mismatches']} mismatches, "
        f"bugs caught {mig['bugs_caught']}"
    )
    qemu, plain = figures.get("qemu"), figures.get("qemu_nomte_migration")
    if isinstance(qemu, dict):
        print(f"  QEMU 10 + KVM: boot {qemu.get('boot_seconds')} s; migrate: {qemu.get('migrate')}")
    if isinstance(plain, dict):
        print(
            f"  QEMU 10 + KVM, mte=off migration: {plain.get('total_seconds')} s, downtime "
            f"{plain.get('downtime_ms')} ms"
        )


def _boot_only(args: argparse.Namespace) -> int:
    """The testbed's kernel as tagvisor's guest; 0 if it reached /init and powered off."""
    with ConsoleWatcher(console_log(), _say):
        run = boot_linux_guest(args.kernel, timeout=max(args.timeout, 300.0), say=_say)
    result = run.result if isinstance(run.result, dict) else {}
    sys.stdout.write(guest_console(run))
    reached = run.status == 0 and result.get("seconds_to_marker") is not None
    _say(
        f"testbed: Linux {run.kernel} as tagvisor's guest: /init's marker "
        f"{result.get('seconds_to_marker')} s after the VMM started, guest exit status "
        f"{result.get('exit_status')}; testbed boot {run.seconds_boot:.1f} s"
    )
    if run.error:
        _say(run.error)
    if args.json:
        summary_ = {key: value for key, value in result.items() if key != "console"}
        json.dump({"kernel": run.kernel, "status": run.status, **summary_}, sys.stdout, indent=2)
        print()
    return 0 if reached and result.get("exit_status") == 0 else 1
