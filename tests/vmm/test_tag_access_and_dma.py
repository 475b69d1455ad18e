"""The seed's ways for a VMM to reach guest tags, exercised by the DMA engine."""

import numpy as np
import pytest

from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GuestContext, mmio_write
from tagvisor.vmm import Machine, MachineBuilder
from tagvisor.vmm.builder import DMA_BASE, RAM_BASE
from tagvisor.vmm.devices import dma
from tagvisor.vmm.tag_access import TagAccessError
from tests.migration.churner import churner
from tests.vmm.guests import Exits

SRC = RAM_BASE + 0x10_0000
DST = RAM_BASE + 0x20_0000
LENGTH = 0x3000


def dma_guest(ctx: GuestContext) -> Exits:
    """Tag and fill a source buffer, then ask the DMA engine to copy it with tags."""
    ctx.stage2.write(SRC, bytes(range(256)) * (LENGTH // 256))
    ctx.stage2.store_tags(SRC, (np.arange(LENGTH // 16) % 15 + 1).astype(np.uint8))
    for register, value in (
        (dma.SRC, SRC),
        (dma.DST, DST),
        (dma.LEN, LENGTH),
        (dma.CMD, dma.COPY_WITH_TAGS),
    ):
        yield mmio_write(DMA_BASE + register, value)


def machine_with(way: str) -> Machine:
    return (
        MachineBuilder(ModelKvm(64 << 20))
        .memory(16 << 20, vmm_prot_mte=way != "copy-tags")
        .tag_access(way)
        .python_guest(dma_guest)
        .build()
    )


@pytest.mark.parametrize("way", ["copy-tags", "prot-mte+tco", "prot-mte+tcma"])
def test_dma_with_tags_keeps_every_tag_whichever_way_the_vmm_uses(way: str) -> None:
    """Scenario: the guest DMA-copies 12 KiB of tagged data; the copy has the same data
    and the same tags, read back through the guest's own stage-2 view."""
    machine = machine_with(way)
    machine.run()
    assert machine.dma.status == 0, machine.dma.last_error
    stage2 = machine.vm.stage2  # type: ignore[attr-defined]
    assert stage2.read(DST, LENGTH) == stage2.read(SRC, LENGTH)
    assert np.array_equal(stage2.load_tags(DST, LENGTH // 16), stage2.load_tags(SRC, LENGTH // 16))


def test_naive_prot_mte_mapping_faults_on_the_guests_tags() -> None:
    """Scenario: the VMM maps guest RAM PROT_MTE with checks on and takes no precaution
    (the seed's warning): its untagged pointer faults with SEGV_MTESERR, the DMA fails
    and reports why, and the destination is untouched."""
    machine = machine_with("prot-mte-naive")
    machine.run()
    assert machine.dma.status == 1
    assert "tag check fault" in machine.dma.last_error
    assert machine.vm.stage2.read(DST, 16) == bytes(16)  # type: ignore[attr-defined]


def test_prot_mte_ways_need_a_prot_mte_mapping() -> None:
    """Scenario: prot-mte+tco asked for but guest RAM is mapped without PROT_MTE."""
    builder = MachineBuilder(ModelKvm(64 << 20)).memory(16 << 20).tag_access("prot-mte+tco")
    with pytest.raises(TagAccessError, match="vmm_prot_mte"):
        builder.python_guest(dma_guest).build()


def test_vmm_writes_count_as_dirty_alongside_kvms_log() -> None:
    """Scenario: dirty logging on; the guest writes page 1, the VMM (a device) writes
    page 3 behind KVM's back. take_dirty() reports both and then neither."""

    def guest(ctx: GuestContext) -> Exits:
        ctx.stage2.write(RAM_BASE + 4096, b"guest")
        yield mmio_write(0x0900_0000, ord("."))

    machine = MachineBuilder(ModelKvm(64 << 20)).memory(16 << 20).python_guest(guest).build()
    memory = machine.memory
    memory.start_dirty_log()
    region = memory.regions[0]
    memory.take_dirty(region)
    machine.run()
    memory.write(RAM_BASE + 3 * 4096, b"device")
    assert np.flatnonzero(memory.take_dirty(region)).tolist() == [1, 3]
    assert not memory.take_dirty(region).any()


def test_a_clean_log_is_one_shared_read_only_mask() -> None:
    """Scenario: dirty logging on and nothing written since the last look (a paused
    guest's last pass). take_dirty() hands back the region's one clean mask, which
    nobody can write to, instead of building a fresh one; a write makes it report
    again."""
    machine = MachineBuilder(ModelKvm(64 << 20)).memory(16 << 20).python_guest(churner(1)).build()
    memory = machine.memory
    memory.start_dirty_log()
    region = memory.regions[0]
    memory.take_dirty(region)
    first, second = memory.take_dirty(region), memory.take_dirty(region)
    assert first is second is region.clean
    assert not first.any()
    with pytest.raises(ValueError, match="read-only"):
        first[0] = True
    memory.write(RAM_BASE + 5 * 4096, b"device")
    assert np.flatnonzero(memory.take_dirty(region)).tolist() == [5]
