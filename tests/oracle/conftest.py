"""Fixtures for the QEMU oracle: the probe, built once per session, and its arena.

When qemu-aarch64 or the cross compiler is missing the oracle tests fail (they do not
skip): CI installs both through scripts/setup, and a silent skip would hide that the
model is no longer being compared with QEMU.
"""

from __future__ import annotations

import pytest

from tests.oracle.qemu_probe import CFLAGS, PROBE_SOURCE, Arena, ProbeError, QemuProbe
from tests.support.cross import ToolchainMissing, build


@pytest.fixture(scope="session")
def qemu() -> QemuProbe:
    """The MTE probe, built for this session and ready to run under qemu-aarch64."""
    try:
        probe = QemuProbe(build(PROBE_SOURCE, CFLAGS))
        probe.check_mte()
    except (ToolchainMissing, ProbeError, RuntimeError) as exc:
        problem = str(exc)
    else:
        return probe
    # Outside the except block, so the report is the message and not a traceback chain.
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def arena(qemu: QemuProbe) -> Arena:
    """Where the probe's memory is (the same in every run)."""
    return qemu.arena


@pytest.fixture(scope="session")
def dczid_bs(qemu: QemuProbe) -> int:
    """DCZID_EL0.BS of QEMU's -cpu max (7 in linux-user: 512-byte blocks)."""
    return qemu.dczid & 0xF
