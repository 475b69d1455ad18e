"""Running the testbed from a fixture: a testbed that cannot run fails the test with
its reason (no traceback), whatever the run is."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

from tagvisor.testbed.errors import TestbedError

T = TypeVar("T")


def run_or_fail(run: Callable[[], T]) -> T:
    """``run()``'s result; a TestbedError (QEMU or a kernel missing, the image did not
    boot) fails the calling test with its message."""
    try:
        return run()
    except TestbedError as exc:
        problem = str(exc)
    pytest.fail(f"the testbed could not run: {problem}", pytrace=False)
