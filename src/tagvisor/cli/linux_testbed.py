"""``tagvisor testbed --linux-guest``: inside the testbed, boot its own kernel again as
a Linux guest of tagvisor on the real KVM, and print the guest's console and timings
(docs/linux-guests.md). Exit status 0 when the guest reached its /init's marker and
powered off."""

from __future__ import annotations

import argparse
import json
import sys

from tagvisor.cli.boot_phases import ConsoleWatcher
from tagvisor.testbed.boot import console_log
from tagvisor.testbed.linux_guest import boot_linux_guest, guest_console


def _say(text: str) -> None:
    """A progress line on stderr (stdout carries the guest's console)."""
    print(text, file=sys.stderr, flush=True)


def run_linux_guest_in_testbed(args: argparse.Namespace) -> int:
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
        summary = {key: value for key, value in result.items() if key != "console"}
        json.dump({"kernel": run.kernel, "status": run.status, **summary}, sys.stdout, indent=2)
        print()
    return 0 if reached and result.get("exit_status") == 0 else 1
