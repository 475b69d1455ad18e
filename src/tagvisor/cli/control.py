"""`--api-socket`: serve a machine's control socket while the command waits for it.

``run`` and ``incoming`` hand their machine (or, for a destination, a controller still
waiting for one) to :func:`serve`, which runs it under a
:class:`tagvisor.api.Controller` until it powers off, fails, migrates away, or a client
stops it, and maps that end to the command's exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from tagvisor.api import ApiServer, ApiServerError, Controller
from tagvisor.api.protocol import PROTOCOL
from tagvisor.cli.errors import CliError, Exit

#: How often the waiting command wakes (seconds), so that Ctrl-C lands promptly.
WAKE: float = 0.2


def add_api_option(parser: argparse.ArgumentParser) -> None:
    """The --api-socket option (docs/api-socket.md)."""
    parser.add_argument(
        "--api-socket",
        type=Path,
        metavar="PATH",
        help="serve the control protocol on a Unix socket at PATH (mode 0600); drive the "
        "VM with `tagvisor remote --api-socket PATH ...` (docs/api-socket.md)",
    )


@contextlib.contextmanager
def served(path: Path, controller: Controller) -> Iterator[ApiServer]:
    """The started server for the ``with`` block, closed (its socket file removed) when
    the block ends however it ends; CliError (exit 69) saying why the socket cannot be
    served. Ctrl-C is held from before the socket file appears until the closing is
    sure to run: pressed just as it appeared, it left the file behind, and the next
    run at that path was refused."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        try:
            server = ApiServer(path, controller).start()
        except ApiServerError as error:
            raise CliError(str(error), Exit.UNAVAILABLE, "unavailable") from None
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a pending Ctrl-C comes here
            print(
                f"tagvisor: control socket {path} (protocol {PROTOCOL}): "
                f"tagvisor remote --api-socket {path} status|pause|resume|snapshot|migrate|stop",
                file=sys.stderr,
                flush=True,
            )
            yield server
        finally:
            server.close()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def wait_for_end(controller: Controller) -> str:
    """Wait until the machine ends; why. Ctrl-C stops the machine and propagates."""
    try:
        while (why := controller.wait(WAKE)) is None:
            pass
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):  # already ending: nothing to keep
            controller.stop()
        raise
    return why


def exit_status(controller: Controller, why: str) -> int:
    """The command's status for the machine's end: the guest's own when it powered
    off or failed, 0 when it migrated away or a client stopped it."""
    if why in ("migrated", "stopped"):
        return int(Exit.OK)
    machine = controller.machine
    status = machine.exit_status if machine is not None else None
    return 255 if status is None else status
