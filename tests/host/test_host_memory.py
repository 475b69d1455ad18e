"""Host memory and MTE: page flags, PROT_MTE mappings, swap, migration, CoW and KSM."""

import errno
import threading

import numpy as np
import pytest

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.host.errors import SegmentationFault, SyscallError
from tagvisor.host.frames import FIRST_FRAME, FrameTable
from tagvisor.host.ksm import ksm_try_merge
from tagvisor.host.mapping import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    NO_FRAME,
    NO_SLOT,
    PROT_MTE,
    PROT_READ,
    PROT_WRITE,
    Backing,
    BackingKind,
)
from tagvisor.host.migrate import migrate_pages
from tagvisor.host.process import HostProcess
from tagvisor.host.swap import FIRST_SLOT, SwapDevice

RW = PROT_READ | PROT_WRITE
PRIVATE_ANON = MAP_PRIVATE | MAP_ANONYMOUS


def process(nframes: int = 4096) -> HostProcess:
    frames = FrameTable(nframes)
    return HostProcess(frames, SwapDevice(frames, 1024))


def tagged_pattern(granules: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 16, granules).astype(np.uint8)


@pytest.mark.parametrize("kind", [BackingKind.MEMFD, BackingKind.TMPFS, BackingKind.HUGETLB])
def test_prot_mte_is_allowed_on_ram_based_files(kind: BackingKind) -> None:
    """Scenario: mmap(PROT_MTE, MAP_SHARED) of a memfd, a tmpfs and a hugetlbfs file.

    arch_calc_vm_flag_bits / shmem_mmap set VM_MTE_ALLOWED for RAM-based memory.
    """
    proc = process(2048)
    size = 2 << 20
    proc.mmap(size, RW | PROT_MTE, MAP_SHARED, Backing.of_size(kind, size))


def test_prot_mte_on_a_page_cache_file_fails_with_einval() -> None:
    """Scenario: mmap(PROT_MTE) of a regular file, then mprotect(PROT_MTE) of one.

    arch_validate_flags refuses VM_MTE without VM_MTE_ALLOWED: EINVAL both times.
    """
    proc = process()
    file = Backing.of_size(BackingKind.FILE, 8192)
    with pytest.raises(SyscallError) as error:
        proc.mmap(8192, RW | PROT_MTE, MAP_SHARED, file)
    assert error.value.errno == errno.EINVAL
    address = proc.mmap(8192, RW, MAP_SHARED, file)
    with pytest.raises(SyscallError) as error:
        proc.mprotect(address, 8192, RW | PROT_MTE)
    assert error.value.errno == errno.EINVAL


def test_first_prot_mte_mapping_clears_stale_tags_of_a_reused_frame() -> None:
    """Scenario: process A tags a page and unmaps it; process B gets the same frame.

    The frame's old tags are still in memory, but B's PROT_MTE fault clears them
    (mte_sync_tags) because freeing cleared PG_mte_tagged: B reads only zeros.
    """
    frames = FrameTable(1)
    a = HostProcess(frames)
    addr = a.mmap(PAGE_SIZE, RW | PROT_MTE, PRIVATE_ANON)
    a.store_tags(addr, tagged_pattern(256))
    a.munmap(addr, PAGE_SIZE)
    assert frames.page_tags(FIRST_FRAME).any(), "tags physically remain in the freed frame"
    b = HostProcess(frames)
    addr_b = b.mmap(PAGE_SIZE, RW | PROT_MTE, PRIVATE_ANON)
    assert not b.load_tags(addr_b, 256).any()


def test_page_tables_start_as_zeros_because_no_page_gets_frame_or_slot_zero() -> None:
    """Scenario: a 4 GiB anonymous mapping on a small host; one page of it touched,
    then swapped out.

    A mapping's tables (a frame and a swap slot per page) start as zeros, which the OS
    backs only where they are written, as Linux allocates page tables on demand: 0 is
    "no frame" and "not in swap" because no page is ever given frame 0 or slot 0."""
    proc = process()
    addr = proc.mmap(4 << 30, RW, PRIVATE_ANON)
    vma = proc.find_vma(addr)
    assert vma is not None
    assert NO_FRAME == NO_SLOT == 0
    assert not vma.backing.pfns.any()
    assert not vma.backing.swap_slots.any()
    page = (1 << 30) // PAGE_SIZE
    pfn = int(proc.fault_in(addr + page * PAGE_SIZE, 1, write=True)[0])
    assert pfn >= FIRST_FRAME
    assert np.flatnonzero(vma.backing.pfns != NO_FRAME).tolist() == [page]
    assert proc.swap is not None
    assert proc.swap.swap_out(proc, addr + page * PAGE_SIZE, PAGE_SIZE) == 1
    assert int(vma.backing.swap_slots[page]) >= FIRST_SLOT
    assert np.flatnonzero(vma.backing.swap_slots != NO_SLOT).tolist() == [page]
    assert not vma.backing.pfns.any()


def test_bytes_across_scattered_frames_are_read_and_written_in_place() -> None:
    """Scenario: a 4-page buffer whose third page was touched first, so its frames come
    in three runs; a write and a read spanning all of it from an odd offset.

    The bytes land where the page tables say (each run a view of host memory, no page
    copied whole), and read back the same."""
    proc = process()
    addr = proc.mmap(4 * PAGE_SIZE, RW, PRIVATE_ANON)
    proc.write(addr + 2 * PAGE_SIZE, b"\1")
    pfns = proc.fault_in(addr, 4 * PAGE_SIZE, write=True)
    runs = proc.span_views(addr + 5, 4 * PAGE_SIZE - 9, write=False)
    assert [view.size for view in runs] == [2 * PAGE_SIZE - 5, PAGE_SIZE, PAGE_SIZE - 4]
    data = (bytes(range(251)) * 66)[: 4 * PAGE_SIZE - 9]
    proc.write(addr + 5, data)
    assert proc.read(addr + 5, len(data)) == data
    third = proc.frames.data[int(pfns[2])]
    assert third.tobytes() == data[2 * PAGE_SIZE - 5 : 3 * PAGE_SIZE - 5]


def test_untagged_mapping_does_not_initialise_tags() -> None:
    """Scenario: a plain anonymous mapping is touched; the page stays untagged."""
    proc = process()
    addr = proc.mmap(PAGE_SIZE, RW, PRIVATE_ANON)
    pfn = proc.fault_in(addr, 1, write=True)[0]
    assert not proc.frames.mte_tagged[pfn]


def test_concurrent_first_touch_initialises_each_page_exactly_once() -> None:
    """Scenario: 8 threads fault in the same 512 PROT_MTE pages at the same time.

    PG_mte_lock lets exactly one thread clear each page's tags (try_page_mte_tagging);
    the others wait for PG_mte_tagged. Every page ends tagged with one init.
    """
    frames = FrameTable(1024)
    proc = HostProcess(frames)
    addr = proc.mmap(512 * PAGE_SIZE, RW, PRIVATE_ANON)
    pfns = proc.fault_in(addr, 512 * PAGE_SIZE, write=True)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def vcpu(offset: int) -> None:
        try:
            barrier.wait()
            order = np.roll(pfns, offset * 64)
            for chunk in np.array_split(order, 16):
                frames.sanitise(chunk)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=vcpu, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert frames.mte_tagged[pfns].all()
    assert (frames.tag_inits[pfns] == 1).all()


def test_hugetlb_folio_is_initialised_whole_on_its_head_flag() -> None:
    """Scenario: touching one 4 KiB page of a 2 MiB hugetlb PROT_MTE mapping.

    sanitise_mte_tags initialises the whole folio at once; the flag is per folio.
    """
    proc = process(1024)
    size = 2 << 20
    addr = proc.mmap(size, RW | PROT_MTE, MAP_SHARED, Backing.of_size(BackingKind.HUGETLB, size))
    proc.fault_in(addr + 5 * PAGE_SIZE, 1, write=False)
    vma = proc.find_vma(addr)
    assert vma is not None
    folio = vma.backing.pfns
    assert proc.frames.mte_tagged[folio].all()
    assert (proc.frames.tag_inits[folio] == 1).all()


def test_swap_out_and_in_restores_data_and_tags() -> None:
    """Scenario: 64 tagged pages go to swap and come back on the next touch.

    mteswap.c saves 128 bytes of packed tags per page and restores them on swap-in;
    the pages come back in different frames with identical data and tags.
    """
    proc = process()
    length = 64 * PAGE_SIZE
    addr = proc.mmap(length, RW | PROT_MTE, PRIVATE_ANON)
    data = np.random.default_rng(2).integers(0, 256, length).astype(np.uint8).tobytes()
    proc.write(addr, data)
    tags = tagged_pattern(64 * 256)
    proc.store_tags(addr, tags)
    before = proc.fault_in(addr, length, write=False).copy()
    assert proc.swap is not None
    assert proc.swap.swap_out(proc, addr, length) == 64
    assert proc.swap.tag_bytes_saved == 64 * 128
    assert proc.read(addr, length) == data
    assert np.array_equal(proc.load_tags(addr, 64 * 256), tags)
    assert not np.array_equal(proc.fault_in(addr, length, write=False), before)
    assert proc.swap.tag_bytes_saved == 0


def test_untagged_page_saves_no_tags_in_swap() -> None:
    """Scenario: a plain anonymous page is swapped out: no tag storage is used."""
    proc = process()
    addr = proc.mmap(PAGE_SIZE, RW, PRIVATE_ANON)
    proc.write(addr, b"x")
    assert proc.swap is not None
    proc.swap.swap_out(proc, addr, PAGE_SIZE)
    assert proc.swap.tag_bytes_saved == 0


def test_page_migration_moves_tags_with_data() -> None:
    """Scenario: compaction migrates 16 tagged pages (copy_highpage copies tags)."""
    proc = process()
    length = 16 * PAGE_SIZE
    addr = proc.mmap(length, RW | PROT_MTE, PRIVATE_ANON)
    tags = tagged_pattern(16 * 256, seed=3)
    proc.store_tags(addr, tags)
    old = proc.fault_in(addr, length, write=False).copy()
    assert migrate_pages(proc, addr, length) == 16
    new = proc.fault_in(addr, length, write=False)
    assert not np.intersect1d(old, new).size
    assert np.array_equal(proc.load_tags(addr, 16 * 256), tags)


def test_copy_on_write_copies_tags() -> None:
    """Scenario: two private mappings share a tagged frame until one writes.

    The write breaks CoW; the new private copy carries the source's tags.
    """
    proc = process()
    addr = proc.mmap(PAGE_SIZE, RW | PROT_MTE, PRIVATE_ANON)
    tags = tagged_pattern(256, seed=4)
    proc.store_tags(addr, tags)
    pfn = int(proc.fault_in(addr, 1, write=False)[0])
    proc.frames.get(np.array([pfn]))  # a second mapper (as after fork)
    proc.write(addr + 8, b"new")
    assert int(proc.fault_in(addr, 1, write=False)[0]) != pfn
    assert np.array_equal(proc.load_tags(addr, 256), tags)


def test_ksm_refuses_to_merge_tagged_pages_but_merges_untagged_twins() -> None:
    """Scenario: two identical PROT_MTE pages, then two identical plain pages.

    memcmp_pages reports tagged pages as different; plain twins share one frame.
    """
    proc = process()
    tagged = proc.mmap(2 * PAGE_SIZE, RW | PROT_MTE, PRIVATE_ANON)
    proc.fault_in(tagged, 2 * PAGE_SIZE, write=True)
    assert not ksm_try_merge(proc, tagged, tagged + PAGE_SIZE)
    plain = proc.mmap(2 * PAGE_SIZE, RW, PRIVATE_ANON)
    proc.fault_in(plain, 2 * PAGE_SIZE, write=True)
    assert ksm_try_merge(proc, plain, plain + PAGE_SIZE)
    pfns = proc.fault_in(plain, 2 * PAGE_SIZE, write=False)
    assert pfns[0] == pfns[1]


def test_tag_access_outside_prot_mte_fails_like_ptrace() -> None:
    """Scenario: reading tags of a non-PROT_MTE mapping gives EIO; no mapping, SIGSEGV."""
    proc = process()
    addr = proc.mmap(PAGE_SIZE, RW, PRIVATE_ANON)
    with pytest.raises(SyscallError) as error:
        proc.load_tags(addr, 1)
    assert error.value.errno == errno.EIO
    with pytest.raises(SegmentationFault):
        proc.load_tags(0x1000, 1)


def test_mmu_notifier_hears_of_swap_and_migration() -> None:
    """Scenario: KVM-style notifier registered; swap-out and migration invalidate."""
    proc = process()
    heard: list[tuple[int, int]] = []
    proc.register_notifier(lambda start, end: heard.append((start, end)))
    addr = proc.mmap(2 * PAGE_SIZE, RW | PROT_MTE, PRIVATE_ANON)
    proc.fault_in(addr, 2 * PAGE_SIZE, write=True)
    migrate_pages(proc, addr, PAGE_SIZE)
    assert proc.swap is not None
    proc.swap.swap_out(proc, addr + PAGE_SIZE, PAGE_SIZE)
    assert heard == [(addr, addr + PAGE_SIZE), (addr + PAGE_SIZE, addr + 2 * PAGE_SIZE)]
