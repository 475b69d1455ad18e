"""The ``tagvisor`` command: argument parsing and dispatch to one module per command.

Ordinary mistakes end in one line on stderr (or a JSON error on stdout with --json)
and an exit status from :class:`tagvisor.cli.errors.Exit`, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tagvisor import __version__
from tagvisor.cli import inspect, lab, migrate, remote, run, snapshot, testbed, tour
from tagvisor.cli.errors import CliError, Exit, Parser, describe_os_error, report
from tagvisor.errors import TagvisorError

DESCRIPTION = """\
tagvisor runs memory-tagged (Arm MTE) virtual machines in Python and keeps their
tags intact through everything a hypervisor does to memory.

Start with `tagvisor tour`: it tags a heap, lets MTE catch an overflow and a
use-after-free, and shows the tags as it goes.

Exit statuses: a command that runs a guest exits with the guest's status; otherwise
0 success, 1 the operation failed, 2 a usage error, 66 a missing input file, 69 a
backend, peer or socket that is not there, 73 an output that cannot be created,
74 an I/O error, 130 Ctrl-C (docs/cli.md)."""


def build_parser() -> Parser:
    """The whole command line: every command and its options."""
    parser = Parser(
        prog="tagvisor",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tagvisor {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    tour.register(commands)
    run.register(commands)
    snapshot.register(commands)
    migrate.register(commands)
    remote.register(commands)
    inspect.register(commands)
    testbed.register(commands)
    lab.register(commands)
    return parser


def _dispatch(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return int(Exit.USAGE)
    code: int = args.run(args)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: the process's); the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in arguments
    try:
        return _dispatch(arguments)
    except CliError as error:
        return report(error, as_json=as_json)
    except KeyboardInterrupt:
        interrupted = CliError("interrupted (Ctrl-C)", Exit.INTERRUPTED, "interrupted")
        return report(interrupted, as_json=as_json)
    except TagvisorError as error:
        return report(CliError(str(error)), as_json=as_json)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours.
        sys.stderr.close()
        return int(Exit.OK)
    except OSError as error:
        return report(CliError(describe_os_error(error), Exit.IO_ERROR, "io"), as_json=as_json)


if __name__ == "__main__":
    sys.exit(main())
