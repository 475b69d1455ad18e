"""userfaultfd for the real backend: a range of the VMM's memory in MISSING mode, a
thread that hands each fault to the VMM, and the calls that place pages.

Post-copy migration registers guest RAM here (tagvisor.migration.postcopy). A VCPU
whose stage-2 fault needs a missing page sleeps in the kernel (KVM's get_user_pages
reaches handle_userfault) until the page is placed. Linux places data only: there is
no UFFDIO_COPY that carries MTE tags, so the VMM places the page with
UFFDIO_COPY_MODE_DONTWAKE, writes its tags with KVM_ARM_MTE_COPY_TAGS and then wakes
the faulting thread (UFFDIO_WAKE); another VCPU touching the page in between finds it
present with its tags cleared (``places_tags`` is False: the window stays).

Numbers and structures: include/uapi/linux/userfaultfd.h, checked against the arm64
headers by tests/kvm/test_uapi_against_headers.py; the syscall is arm64's 282
(include/uapi/asm-generic/unistd.h).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import select
import struct
import threading
from typing import Final

from tagvisor.arch.constants import PAGE_SIZE
from tagvisor.kvm.api import FaultHandler
from tagvisor.kvm.linux.libc import libc

NR_USERFAULTFD: Final = 282  # arm64 (asm-generic/unistd.h __NR_userfaultfd)
#: The tests run the same code on the x86-64 machine that hosts the testbed
#: (arch/x86/entry/syscalls/syscall_64.tbl: 323).
SYSCALL_NUMBERS: Final = {"aarch64": NR_USERFAULTFD, "x86_64": 323}
UFFD_API: Final = 0xAA
UFFD_USER_MODE_ONLY: Final = 1
UFFDIO_API: Final = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api)
UFFDIO_REGISTER: Final = 0xC020AA00  # _IOWR(0xAA, 0x00, struct uffdio_register)
UFFDIO_UNREGISTER: Final = 0x8010AA01  # _IOR(0xAA, 0x01, struct uffdio_range)
UFFDIO_WAKE: Final = 0x8010AA02  # _IOR(0xAA, 0x02, struct uffdio_range)
UFFDIO_COPY: Final = 0xC028AA03  # _IOWR(0xAA, 0x03, struct uffdio_copy)
UFFDIO_REGISTER_MODE_MISSING: Final = 1
UFFDIO_COPY_MODE_DONTWAKE: Final = 1
UFFD_EVENT_PAGEFAULT: Final = 0x12
#: struct uffd_msg: event, three reserved fields, then pagefault {flags, address, ptid}.
UFFD_MSG: Final = struct.Struct("<BBHIQQQ")
UFFDIO_API_ARG: Final = struct.Struct("<QQQ")  # api, features, ioctls
UFFDIO_REGISTER_ARG: Final = struct.Struct("<QQQQ")  # start, len, mode, ioctls
UFFDIO_RANGE: Final = struct.Struct("<QQ")
UFFDIO_COPY_ARG: Final = struct.Struct("<QQQQq")  # dst, src, len, mode, copy


class UserfaultError(OSError):
    """A userfaultfd call failed; errno is the kernel's."""


def _ioctl(fd: int, request: int, arg: bytearray) -> bytearray:
    try:
        fcntl.ioctl(fd, request, arg, True)
    except OSError as error:
        raise UserfaultError(
            error.errno, f"userfaultfd ioctl {request:#x}: {error.strerror}"
        ) from None
    return arg


def open_userfaultfd() -> int:
    """userfaultfd(O_CLOEXEC | O_NONBLOCK) and the UFFDIO_API handshake."""
    number = SYSCALL_NUMBERS.get(platform.machine())
    if number is None:
        raise UserfaultError(
            errno.ENOSYS, f"userfaultfd: no syscall number for {platform.machine()}"
        )
    fd = int(libc().syscall(number, os.O_CLOEXEC | os.O_NONBLOCK))
    if fd < 0:
        err = ctypes.get_errno() or errno.EIO
        raise UserfaultError(err, f"userfaultfd: {os.strerror(err)}")
    try:
        _ioctl(fd, UFFDIO_API, bytearray(UFFDIO_API_ARG.pack(UFFD_API, 0, 0)))
    except BaseException:
        os.close(fd)
        raise
    return fd


class LinuxUserFaultRange:
    """A range of the VMM's memory registered with userfaultfd (MISSING mode)."""

    def __init__(self, start: int, length: int, handler: FaultHandler) -> None:
        self.start, self.length, self.handler = start, length, handler
        self.fd = open_userfaultfd()
        register = UFFDIO_REGISTER_ARG.pack(start, length, UFFDIO_REGISTER_MODE_MISSING, 0)
        try:
            _ioctl(self.fd, UFFDIO_REGISTER, bytearray(register))
        except BaseException:
            os.close(self.fd)
            raise
        self.placed = bytearray(length // PAGE_SIZE)
        self._stop_read, self._stop_write = os.pipe()
        self.thread = threading.Thread(target=self._serve, name="userfaultfd", daemon=True)
        self.thread.start()

    @property
    def places_tags(self) -> bool:
        """False: Linux has no UFFDIO_COPY that places tags with the data."""
        return False

    def _serve(self) -> None:
        """Read fault messages until unregistered; each fault goes to the handler."""
        while True:
            ready, _, _ = select.select([self.fd, self._stop_read], [], [])
            if self._stop_read in ready:
                return
            try:
                raw = os.read(self.fd, UFFD_MSG.size * 16)
            except BlockingIOError:
                continue
            for offset in range(0, len(raw) - UFFD_MSG.size + 1, UFFD_MSG.size):
                event, _, _, _, _flags, address, _ = UFFD_MSG.unpack_from(raw, offset)
                if event == UFFD_EVENT_PAGEFAULT:
                    self.handler(address & ~(PAGE_SIZE - 1))

    def copy(self, address: int, data: bytes, *, wake: bool = True) -> None:
        """UFFDIO_COPY of whole pages; pages placed already (EEXIST) stay as they are."""
        buffer = ctypes.create_string_buffer(bytes(data), len(data))
        mode = 0 if wake else UFFDIO_COPY_MODE_DONTWAKE
        done = 0
        while done < len(data):
            arg = bytearray(
                UFFDIO_COPY_ARG.pack(
                    address + done, ctypes.addressof(buffer) + done, len(data) - done, mode, 0
                )
            )
            try:
                _ioctl(self.fd, UFFDIO_COPY, arg)
                copied = UFFDIO_COPY_ARG.unpack(arg)[4]
            except UserfaultError as error:
                copied = UFFDIO_COPY_ARG.unpack(arg)[4]
                if error.errno == errno.EEXIST:
                    copied = PAGE_SIZE  # this page is there already: go on past it
                elif error.errno != errno.EAGAIN or copied <= 0:
                    raise
            done += max(copied, 0)
        self._mark(address, len(data))

    def wake(self, address: int, length: int) -> None:
        """UFFDIO_WAKE: threads waiting on [address, address + length) go on."""
        _ioctl(self.fd, UFFDIO_WAKE, bytearray(UFFDIO_RANGE.pack(address, length)))

    def copy_with_tags(self, address: int, data: bytes, tags: object) -> None:
        """Not in Linux: see :attr:`places_tags`."""
        raise UserfaultError(errno.ENOTTY, "Linux has no UFFDIO_COPY that places MTE tags")

    def present(self, address: int) -> bool:
        """Whether the page at ``address`` has been placed through this range."""
        return bool(self.placed[(address - self.start) // PAGE_SIZE])

    def _mark(self, address: int, length: int) -> None:
        first = (address - self.start) // PAGE_SIZE
        self.placed[first : first + length // PAGE_SIZE] = b"\1" * (length // PAGE_SIZE)

    def unregister(self) -> None:
        """UFFDIO_UNREGISTER, stop the fault thread, close the descriptor."""
        if self.fd < 0:
            return
        try:
            whole = bytearray(UFFDIO_RANGE.pack(self.start, self.length))
            _ioctl(self.fd, UFFDIO_UNREGISTER, whole)
        finally:
            os.write(self._stop_write, b"x")
            if threading.current_thread() is not self.thread:
                self.thread.join()
            os.close(self.fd)
            os.close(self._stop_read)
            os.close(self._stop_write)
            self.fd = -1
