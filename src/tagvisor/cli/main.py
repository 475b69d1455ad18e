"""The ``tagvisor`` command: argument parsing and dispatch to one module per command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tagvisor import __version__
from tagvisor.cli import lab, migrate, run, snapshot, testbed, tour
from tagvisor.errors import TagvisorError

DESCRIPTION = """\
tagvisor runs memory-tagged (Arm MTE) virtual machines in Python and keeps their
tags intact through everything a hypervisor does to memory.

Start with `tagvisor tour`: it tags a heap, lets MTE catch an overflow and a
use-after-free, and shows the tags as it goes."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tagvisor",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tagvisor {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    tour.register(commands)
    run.register(commands)
    snapshot.register(commands)
    migrate.register(commands)
    testbed.register(commands)
    lab.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code: int = args.run(args)
    except TagvisorError as error:
        print(f"tagvisor: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours.
        sys.stderr.close()
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
