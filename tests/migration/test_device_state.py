"""A device registered once travels in a live migration like the built-in ones."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tagvisor.migration import migrate
from tagvisor.vmm.devices.persist import DeviceKind
from tests.migration.conftest import Destination, source_machine
from tests.support.scratch_device import (
    SCRATCH_BASE,
    ScratchRegister,
    ScratchState,
    scratch_registered,
    scratch_value,
)


@pytest.fixture
def scratch_kind() -> Iterator[DeviceKind[ScratchState]]:
    with scratch_registered() as kind:
        yield kind


def test_a_registered_device_travels_in_a_migration(
    destination: Destination, scratch_kind: DeviceKind[ScratchState]
) -> None:
    """Scenario: the same device on a churning guest, live-migrated: the destination's
    device holds the source's value, with nothing in the migration code told of it."""
    machine = source_machine()
    source_device = ScratchRegister()
    source_device.value = 0xBEEF
    machine.devices["scratch"] = source_device
    machine.config.devices = (("scratch", SCRATCH_BASE),)
    destination.start()
    migrate(machine, destination.address)
    destination.join()
    assert destination.machine is not None, destination.error
    assert scratch_value(destination.machine) == 0xBEEF
