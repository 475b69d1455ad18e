"""The real backend's userfaultfd (tagvisor.kvm.linux.userfault), on this machine's own
kernel: a thread touching a missing page sleeps until the VMM places it.

No KVM is involved: the range is a plain anonymous mapping of this process, and the
"guest" is a Python thread reading it through ctypes, which takes the same
handle_userfault path a VCPU's stage-2 fault does through get_user_pages.
"""

from __future__ import annotations

import ctypes
import threading

import pytest

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.kvm.linux.libc import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, mmap, munmap
from tagvisor.kvm.linux.userfault import LinuxUserFaultRange, UserfaultError, open_userfaultfd


def _userfaultfd_allowed() -> bool:
    try:
        import os

        os.close(open_userfaultfd())
    except UserfaultError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _userfaultfd_allowed(), reason="this kernel refuses userfaultfd to this process"
)


def test_a_reader_of_a_missing_page_waits_until_the_vmm_places_it() -> None:
    """Scenario: 4 pages registered in MISSING mode; a thread reads page 2 (without the
    GIL, as a VCPU in KVM_RUN). The fault
    reaches the handler with page 2's address; the handler places it with DONTWAKE
    (the thread keeps sleeping), then wakes it: the thread reads the placed bytes.
    Placing page 2 again is ignored (EEXIST), and present() says what was placed."""
    base = mmap(4 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    faults: list[int] = []
    placed = threading.Event()
    holder: dict[str, LinuxUserFaultRange] = {}

    def handler(address: int) -> None:
        faults.append(address)
        uffd = holder["range"]
        uffd.copy(address, b"\x5a" * PAGE_SIZE, wake=False)
        placed.set()
        uffd.wake(address, PAGE_SIZE)

    holder["range"] = uffd = LinuxUserFaultRange(base, 4 * PAGE_SIZE, handler)
    seen = ctypes.create_string_buffer(8)
    # ctypes.memmove releases the GIL, as KVM_RUN does: a read that holds it would stop
    # the handler's thread too, and nothing would ever place the page.
    reader = threading.Thread(target=ctypes.memmove, args=(seen, base + 2 * PAGE_SIZE, 8))
    try:
        reader.start()
        reader.join(10)
        assert not reader.is_alive()
        assert placed.is_set()
        assert faults == [base + 2 * PAGE_SIZE]
        assert seen.raw == b"\x5a" * 8
        uffd.copy(base + 2 * PAGE_SIZE, b"\x11" * PAGE_SIZE)  # there already: EEXIST
        assert ctypes.c_uint8.from_address(base + 2 * PAGE_SIZE).value == 0x5A
        assert [uffd.present(base + n * PAGE_SIZE) for n in range(4)] == [False, False, True, False]
    finally:
        uffd.unregister()
        munmap(base, 4 * PAGE_SIZE)


def test_a_range_that_is_not_mapped_is_refused_with_the_kernels_errno() -> None:
    """Scenario: registering an address range with nothing mapped: UFFDIO_REGISTER
    fails with EINVAL (fs/userfaultfd.c finds no VMA), as a UserfaultError."""
    base = mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    munmap(base, PAGE_SIZE)
    with pytest.raises(UserfaultError) as caught:
        LinuxUserFaultRange(base, PAGE_SIZE, lambda address: None)
    assert caught.value.errno in (22, 12)  # EINVAL, or ENOMEM on older kernels
