"""The CLI's errors and exit statuses: one line saying what was wrong and what to do.

docs/cli.md lists the statuses. Commands that run a guest exit with the guest's own
status once it ran (0 success, 1 a check failed, 3 no MTE, 255 stopped on an error);
every status below is the command's own, for what went wrong before or around it.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
from typing import NoReturn

from tagvisor.errors import TagvisorError


class Exit(enum.IntEnum):
    """The command's own exit statuses (sysexits.h numbers where one fits)."""

    OK = 0
    #: The operation was tried and failed: a refused migration, a damaged snapshot.
    FAILED = 1
    #: The command line was wrong: an option's value, a missing argument.
    USAGE = 2
    #: An input file is missing, unreadable, or a directory.
    NO_INPUT = 66
    #: Something the command needs is not there: a backend, a peer, a socket.
    UNAVAILABLE = 69
    #: An output file cannot be created.
    CANNOT_CREATE = 73
    #: Reading or writing failed part-way.
    IO_ERROR = 74
    #: Ctrl-C (128 + SIGINT, as shells report it).
    INTERRUPTED = 130


class CliError(TagvisorError):
    """An error the CLI reports as one line, with its exit status and a kind for JSON."""

    def __init__(self, message: str, status: Exit = Exit.FAILED, kind: str = "failed") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind


class UsageError(CliError):
    """The command line was wrong (argparse's errors, and our own checks of values)."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message, Exit.USAGE, "usage")
        self.usage = usage


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised, so that main() reports them (as
    JSON with --json) instead of argparse exiting on its own."""

    def error(self, message: str) -> NoReturn:
        """Raise the usage error instead of printing it and exiting."""
        raise UsageError(
            f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)",
            self.format_usage(),
        )


def report(error: CliError, *, as_json: bool) -> int:
    """Print ``error`` for a person (stderr) or a script (JSON on stdout); its status."""
    if as_json:
        value = {"kind": error.kind, "message": error.message, "exit_status": int(error.status)}
        print(json.dumps({"error": value}, indent=2, sort_keys=True))
    else:
        message = error.message  # one line: the usage block is what --help is for
        if not message.startswith("tagvisor"):
            message = f"tagvisor: error: {message}"
        print(message, file=sys.stderr)
    return int(error.status)


def describe_os_error(error: OSError) -> str:
    """An OSError as a person reads it: what failed, on which file."""
    what = error.strerror or str(error)
    return f"{what}: {error.filename}" if error.filename else what
