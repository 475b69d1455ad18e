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
        _print_session(run.kernel, figures, not problems)
    for problem in problems:
        _say(f"testbed: {problem}")
    return 0 if not problems else 1


def _yes(value: object) -> str:
    if value is None:
        return "n/a (the guest ran on while its pages came)"
    return "yes" if value is True else "NO"


def _step(name: str, figures: dict[str, Any], timing: str) -> str:
    return (
        f"  {name}: {timing}; digests equal: {_yes(figures.get('digests_equal'))}; the guest "
        f"verified {figures.get('guest_verified_granules') or 0:,} granules, "
        f"{figures.get('mismatches')} mismatches, caught {figures.get('bugs_caught')} bugs"
    )


def _moved(figures: dict[str, Any], more: str) -> str:
    """A migration's time and downtime, then ``more``; or that it did not run."""
    if figures.get("total_seconds") is None:
        return "not run"
    return f"{figures['total_seconds']} s, downtime {figures['downtime_ms']:.0f} ms, {more}"


def _print_session(kernel: str, figures: dict[str, Any], passed: bool) -> None:
    snap, mig, post = figures["snapshot"], figures["migration"], figures["postcopy"]
    granules = figures["granules"] or 0
    print(f"Linux {kernel} as tagvisor's MTE guest: {granules:,} granules tagged by its workload")
    boot, ready = figures["boot_seconds"], figures["seconds_to_ready"]
    print(f"  boot to /init {boot} s; workload READY after {ready} s")
    size = (snap.get("file_bytes") or 0) / 1e6
    timing = f"save {snap['save_seconds']} s, restore {snap['restore_seconds']} s, {size:.1f} MB"
    print(_step("snapshot", snap, timing))
    share = 100 * (mig.get("tag_share") or 0)
    print(_step("pre-copy migration", mig, _moved(mig, f"tags {share:.2f} % of the bytes sent")))
    after = f"{post.get('postcopy_pages') or 0:,} pages after the switch"
    print(_step("post-copy migration", post, _moved(post, after)))
    qemu, plain = figures.get("qemu"), figures.get("qemu_nomte_migration")
    if isinstance(qemu, dict):
        answer = json.dumps(qemu.get("migrate"))
        print(f"  QEMU 10 + KVM: boot to /init {qemu.get('boot_seconds')} s; migrate: {answer}")
    if isinstance(plain, dict):
        print(
            f"  QEMU 10 + KVM, the same guest with mte=off: migration {plain.get('total_seconds')} "
            f"s, downtime {plain.get('downtime_ms')} ms"
        )
    print("PASSED: every tag arrived after each move" if passed else "FAILED (see below)")


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
