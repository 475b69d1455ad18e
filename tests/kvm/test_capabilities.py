"""The backend boundary's optional capabilities: defaults that are right on any backend,
and the real backend's own implementations of the bulk ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tagvisor.kvm.api import UserMemory
from tagvisor.kvm.linux import LinuxUserMemory
from tagvisor.kvm.model import ModelKvm
from tagvisor.kvm.model.guest import GuestProgram
from tagvisor.kvm.model.user_memory import ModelUserMemory
from tagvisor.snapshot import restore_snapshot, save_snapshot
from tagvisor.snapshot.guestpages import memory_digest
from tagvisor.vmm import MachineBuilder
from tagvisor.vmm.tag_access import TagAccessError
from tests.snapshot.resumable import resumable

PAGE = 4096


class BareUserMemory(UserMemory):
    """Only the required mapping calls of a backend, over the model's: every
    capability takes its default."""

    def __init__(self, inner: ModelUserMemory) -> None:
        self.inner = inner

    def map_anonymous(self, length: int, *, shared: bool = False, mte: bool = False) -> int:
        return self.inner.map_anonymous(length, shared=shared, mte=mte)

    def map_memfd(self, length: int, *, mte: bool = False) -> int:
        return self.inner.map_memfd(length, mte=mte)

    def map_file(self, length: int) -> int:
        return self.inner.map_file(length)

    def map_hugetlb(
        self, length: int, *, mte: bool = False, source: str = "memfd", shared: bool = True
    ) -> int:
        return self.inner.map_hugetlb(length, mte=mte, source=source, shared=shared)

    def unmap(self, address: int, length: int) -> None:
        self.inner.unmap(address, length)

    def protect(self, address: int, length: int, *, writable: bool) -> None:
        self.inner.protect(address, length, writable=writable)

    def read(self, address: int, length: int) -> bytes:
        return self.inner.read(address, length)

    def write(self, address: int, data: bytes | memoryview) -> None:
        self.inner.write(address, data)


class BareKvm(ModelKvm):
    """The model KVM whose VMM process offers no capability beyond the mapping calls."""

    def __init__(self, host_memory: int) -> None:
        super().__init__(host_memory)
        self._bare = BareUserMemory(super().user_memory)

    @property
    def user_memory(self) -> BareUserMemory:  # type: ignore[override]
        return self._bare


def test_a_backend_with_only_the_mapping_calls_snapshots_and_restores_every_tag(
    tmp_path: Path,
) -> None:
    """Scenario: a VMM process that can only map, read and write (no views, no
    residency, no vectorised page copies). A guest tags a heap; the snapshot taken
    through the defaults has the same memory and tag digest as the guest, and a model
    host restores it with the same digest."""
    program: GuestProgram = resumable(4)  # type: ignore[assignment]
    machine = MachineBuilder(BareKvm(96 << 20)).memory(16 << 20).python_guest(program).build()
    machine.run(max_exits=2)
    before = memory_digest(machine)
    report = save_snapshot(machine, tmp_path / "bare.snap")
    assert report.digest == before
    assert memory_digest(restore_snapshot(tmp_path / "bare.snap", ModelKvm(96 << 20))) == before


def test_the_prot_mte_ways_say_the_backend_lacks_the_vmms_tag_instructions() -> None:
    """Scenario: a machine asks for the prot-mte+tco way on a backend whose VMM has no
    LDG/STG (tagged_mapping() is None, as on a real host): the builder refuses, naming
    copy-tags as what works."""
    builder = MachineBuilder(BareKvm(96 << 20)).memory(16 << 20, vmm_prot_mte=True)
    program: GuestProgram = resumable(1)  # type: ignore[assignment]
    with pytest.raises(TagAccessError, match="use copy-tags"):
        builder.tag_access("prot-mte+tco").python_guest(program).build()


def test_defaults_gather_scatter_and_discard_whole_pages_through_read_and_write() -> None:
    """Scenario: pages 1, 2 and 5 of a bare mapping are written as rows, read back as
    rows, and page 2 is discarded: it reads as zeros, the others keep their bytes."""
    memory = BareUserMemory(ModelKvm(16 << 20).user_memory)
    base = memory.map_anonymous(8 * PAGE)
    pages = np.array([1, 2, 5])
    rows = np.arange(3 * PAGE, dtype=np.uint32).astype(np.uint8).reshape(3, PAGE)
    memory.scatter_pages(base, pages, rows)
    out = np.zeros_like(rows)
    memory.gather_pages(base, pages, out)
    assert (out == rows).all()
    memory.discard(base, np.array([2]))
    assert memory.read(base + 2 * PAGE, PAGE) == bytes(PAGE)
    assert memory.read(base + 5 * PAGE, 4) == rows[2, :4].tobytes()
    assert memory.populated(base, 8).all()  # a backend that cannot tell says all may


@pytest.fixture
def linux_memory() -> LinuxUserMemory:
    return LinuxUserMemory()


def test_real_backend_knows_which_anonymous_pages_were_ever_touched(
    linux_memory: LinuxUserMemory,
) -> None:
    """Scenario: a fresh private anonymous mapping of this very process has no page
    behind it; after writes to pages 3 and 7, /proc/self/pagemap reports exactly those."""
    base = linux_memory.map_anonymous(16 * PAGE)
    assert not linux_memory.populated(base, 16).any()
    linux_memory.write(base + 3 * PAGE, b"x")
    linux_memory.write(base + 7 * PAGE + 100, b"y")
    assert np.flatnonzero(linux_memory.populated(base, 16)).tolist() == [3, 7]


def test_real_backend_views_are_the_mapping_itself(linux_memory: LinuxUserMemory) -> None:
    """Scenario: a write through the writable view is read back by read(), and the
    read-only view shows a later write() without a copy."""
    base = linux_memory.map_anonymous(4 * PAGE)
    view = linux_memory.writable_view(base + PAGE, PAGE)
    assert view is not None
    view[:3] = [1, 2, 3]
    assert linux_memory.read(base + PAGE, 3) == b"\x01\x02\x03"
    shown = linux_memory.view(base, 4 * PAGE)
    linux_memory.write(base + 2 * PAGE, b"\x09")
    assert shown[2 * PAGE] == 9


def test_real_backend_discards_anonymous_pages_with_madvise(
    linux_memory: LinuxUserMemory,
) -> None:
    """Scenario: two written pages of an anonymous mapping, one discarded: it reads as
    zeros and has no memory behind it any more; the other keeps its data."""
    base = linux_memory.map_anonymous(4 * PAGE)
    linux_memory.write(base, b"a" * (2 * PAGE))
    linux_memory.discard(base, np.array([1]))
    assert np.flatnonzero(linux_memory.populated(base, 4)).tolist() == [0]
    assert linux_memory.read(base + PAGE, 2) == b"\0\0"
    assert linux_memory.read(base, 2) == b"aa"


def test_real_backend_has_userfaultfd_that_cannot_place_tags_and_no_tagged_mapping(
    linux_memory: LinuxUserMemory,
) -> None:
    """Scenario: what a real host can do is said by the capabilities, not found out by
    probing: no tagged mapping (the model's PROT_MTE VMM mapping), but a userfaultfd
    range (tagvisor.kvm.linux.userfault) that says it cannot place tags with the data,
    since Linux has no such UFFDIO_COPY."""
    base = linux_memory.map_anonymous(PAGE)
    assert linux_memory.tagged_mapping() is None
    uffd = linux_memory.userfaultfd(base, PAGE, lambda page: None)
    assert uffd is not None
    try:
        assert uffd.places_tags is False
    finally:
        uffd.unregister()


def test_reading_every_register_at_once_gives_what_one_reg_calls_give() -> None:
    """Scenario: a model VCPU's whole register list read with get_registers (what a
    snapshot and a migration's pause use) equals one GET_ONE_REG per id, and an id the
    VCPU does not list fails with the same errno as its own GET_ONE_REG."""
    from tagvisor.kvm.errors import KvmError

    program: GuestProgram = resumable(2)  # type: ignore[assignment]
    machine = MachineBuilder(ModelKvm(64 << 20)).memory(16 << 20).python_guest(program).build()
    vcpu = machine.vcpus[0]
    ids = vcpu.get_reg_list()
    assert vcpu.get_registers(ids) == [vcpu.get_one_reg(reg) for reg in ids]
    unlisted = 0x6030_0000_0013_FFFF
    with pytest.raises(KvmError) as one:
        vcpu.get_one_reg(unlisted)
    with pytest.raises(KvmError) as many:
        vcpu.get_registers([*ids[:3], unlisted])
    assert many.value.errno == one.value.errno
