"""Fixtures for the system-mode oracle: the guests of ``guests/prebuilt`` run under
``qemu-system-aarch64 -M virt,mte=on -cpu max`` and their transcripts shared.

When no usable qemu-system-aarch64 (>= 8.0) is installed the tests fail, as the
user-mode oracle does: a silent skip would hide that the model is no longer compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tagvisor.arch import TagCheckMode
from tests.support.guests import BootConfig, prebuilt
from tests.support.qemu_system import (
    GuestRun,
    GuestRunError,
    QemuSystemMissing,
    require_qemu_system,
    run_guest,
)
from tests.support.transcript import Transcript

#: The boot block with every field at its default (sync, MTE on, 128 MiB).
DEFAULT_CONFIG = BootConfig()


@pytest.fixture(scope="session")
def qemu_system() -> Path:
    """The qemu-system-aarch64 that scripts/fetch-qemu installed."""
    try:
        return require_qemu_system()
    except QemuSystemMissing as exc:
        problem = str(exc)
    # Outside the except block, so the report is the message and not a traceback chain.
    pytest.fail(problem, pytrace=False)


def boot(
    name: str,
    config: BootConfig | None = DEFAULT_CONFIG,
    *,
    stop_after: float | None = None,
    machine_mte: bool = True,
) -> GuestRun:
    """Run guest ``name``, failing the test (not erroring) if QEMU fails or hangs."""
    try:
        return run_guest(prebuilt(name), config, stop_after=stop_after, machine_mte=machine_mte)
    except GuestRunError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


def completed(name: str, config: BootConfig | None = DEFAULT_CONFIG) -> Transcript:
    """The transcript of a run that powered off without a panic."""
    transcript = boot(name, config).transcript
    if transcript.panic is not None:
        pytest.fail(f"{name} panicked:\n{transcript.text}", pytrace=False)
    return transcript


@pytest.fixture(scope="session")
def smoke(qemu_system: Path) -> Transcript:
    """mte-smoke with the default boot configuration (sync)."""
    return completed("mte-smoke")


@pytest.fixture(scope="session", params=list(TagCheckMode), ids=lambda mode: mode.name.lower())
def heap_run(qemu_system: Path, request: pytest.FixtureRequest) -> tuple[TagCheckMode, Transcript]:
    """The heap guest in each tag check mode the boot configuration can ask for."""
    mode = TagCheckMode(request.param)
    return mode, completed("heap", BootConfig(mode=mode))
