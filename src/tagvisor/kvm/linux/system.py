"""The real ``/dev/kvm``: one thin method per ioctl, with fcntl.ioctl and ctypes.

Each method builds the ioctl's argument, makes the call and returns what it returned;
a failure raises :class:`~tagvisor.kvm.errors.KvmError` with the kernel's errno and the
ioctl's name (no ``detail``: the kernel does not say which check refused). ctypes
objects passed to the kernel, and buffers they point at, are held in local variables
until the call returns: a temporary freed early would make the kernel read garbage.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import mmap
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

from tagvisor.kvm.api import Device, Kvm, Vcpu, VcpuExit
from tagvisor.kvm.errors import KvmError
from tagvisor.kvm.linux.memory import LinuxUserMemory
from tagvisor.kvm.linux.run import decode_exit, fill_mmio_read
from tagvisor.kvm.uapi import (
    ID_AA64PFR1_EL1,
    IOCTL_NAMES,
    KVM_ARM_FEATURE_ID_RANGE_SIZE,
    KVM_ARM_GET_REG_WRITABLE_MASKS,
    KVM_ARM_MTE_COPY_TAGS,
    KVM_ARM_PREFERRED_TARGET,
    KVM_ARM_VCPU_INIT,
    KVM_CHECK_EXTENSION,
    KVM_CLEAR_DIRTY_LOG,
    KVM_CREATE_DEVICE,
    KVM_CREATE_DEVICE_TEST,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_ENABLE_CAP,
    KVM_GET_API_VERSION,
    KVM_GET_DEVICE_ATTR,
    KVM_GET_DIRTY_LOG,
    KVM_GET_MP_STATE,
    KVM_GET_ONE_REG,
    KVM_GET_REG_LIST,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_IRQ_LINE,
    KVM_RUN,
    KVM_RUN_IMMEDIATE_EXIT_OFFSET,
    KVM_SET_DEVICE_ATTR,
    KVM_SET_MP_STATE,
    KVM_SET_ONE_REG,
    KVM_SET_USER_MEMORY_REGION,
    Cap,
    ExitReason,
    kvm_arm_copy_mte_tags,
    kvm_clear_dirty_log,
    kvm_create_device,
    kvm_device_attr,
    kvm_dirty_log,
    kvm_enable_cap,
    kvm_irq_level,
    kvm_mp_state,
    kvm_one_reg,
    kvm_userspace_memory_region,
    kvm_vcpu_init,
    reg_mask_range,
    reg_size,
)

DEFAULT_DEVICE = "/dev/kvm"

#: The widest register a ONE_REG id names: an SVE Z register, 2048 bits
#: (Documentation/virt/kvm/api.rst, "KVM_REG_SIZE_U2048").
MAX_REG_SIZE: Final = 256

#: The signal that knocks a thread out of KVM_RUN (QEMU's SIG_IPI is SIGUSR1 too).
KICK_SIGNAL: Final = signal.SIGUSR1


def _kicked(signum: int, frame: object) -> None:
    """The kick's handler: nothing to do, the point is KVM_RUN's EINTR."""


def install_kick_handler() -> bool:
    """Make :data:`KICK_SIGNAL` interrupt KVM_RUN instead of killing the process.

    A signal must have a handler to interrupt a system call (an ignored one is
    dropped). Python sets handlers only from the main thread, so LinuxKvm calls this
    when it is created there; returns whether a handler is in place.
    """
    current = signal.getsignal(KICK_SIGNAL)
    if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(KICK_SIGNAL, _kicked)
    return True


def ioctl(fd: int, request: int, arg: Any = 0) -> int:
    """fcntl.ioctl, with OSError turned into KvmError named after the ioctl.

    ``arg`` is an int, or a ctypes object the kernel reads and (for _IOR / _IOWR)
    writes back in place.
    """
    try:
        if isinstance(arg, int):
            result: int = fcntl.ioctl(fd, request, arg)
        else:
            result = fcntl.ioctl(fd, request, arg, True)
    except OSError as exc:
        name = IOCTL_NAMES.get(request, f"ioctl {request:#x}")
        raise KvmError(exc.errno or errno.EIO, name) from None
    return result


class _Fd:
    """An owned file descriptor, closed once."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        fd = getattr(self, "fd", -1)  # __init__ may have failed before setting it
        if fd >= 0:
            self.fd = -1
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()


class LinuxVcpu(_Fd, Vcpu):
    """A VCPU file descriptor and its mmapped kvm_run page."""

    def __init__(self, fd: int, mmap_size: int) -> None:
        super().__init__(fd)
        self.kvm_run = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._thread: int | None = None  # the thread inside KVM_RUN, for kick()

    def close(self) -> None:
        """Unmap the VCPU's kvm_run and close its file descriptor."""
        kvm_run = getattr(self, "kvm_run", None)
        if kvm_run is not None and not kvm_run.closed:
            kvm_run.close()
        super().close()

    def arm_vcpu_init(self, init: kvm_vcpu_init) -> None:
        """KVM_ARM_VCPU_INIT with ``init``'s target and features."""
        ioctl(self.fd, KVM_ARM_VCPU_INIT, init)

    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG: the register's value, of the size its id encodes."""
        value = ctypes.create_string_buffer(reg_size(reg_id))
        reg = kvm_one_reg(id=reg_id, addr=ctypes.addressof(value))
        ioctl(self.fd, KVM_GET_ONE_REG, reg)
        return int.from_bytes(value.raw, "little")

    def get_registers(self, reg_ids: Sequence[int]) -> list[int]:
        """KVM_GET_ONE_REG of each id, through one argument and one buffer reused.

        A paused guest's some 250 registers are read in a migration's downtime; making
        the two ctypes objects once instead of per register is most of that cost.
        """
        buffer = ctypes.create_string_buffer(MAX_REG_SIZE)
        view = memoryview(buffer).cast("B")
        reg = kvm_one_reg(id=0, addr=ctypes.addressof(buffer))
        values = []
        for reg_id in reg_ids:
            size = reg_size(reg_id)
            if size > MAX_REG_SIZE:  # no register is, but the buffer must never be short
                values.append(self.get_one_reg(reg_id))
                continue
            reg.id = reg_id
            ioctl(self.fd, KVM_GET_ONE_REG, reg)
            values.append(int.from_bytes(view[:size], "little"))
        return values

    def set_one_reg(self, reg_id: int, value: int) -> None:
        """KVM_SET_ONE_REG: write ``value`` in the size the id encodes."""
        size = reg_size(reg_id)
        if not 0 <= value < 1 << (8 * size):
            detail = f"{value:#x} needs more than {size} bytes"
            raise KvmError(errno.EINVAL, "KVM_SET_ONE_REG", detail)
        buffer = ctypes.create_string_buffer(value.to_bytes(size, "little"), size)
        reg = kvm_one_reg(id=reg_id, addr=ctypes.addressof(buffer))
        ioctl(self.fd, KVM_SET_ONE_REG, reg)

    def get_reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST: asks for the count first (E2BIG), then the ids."""
        probe = (ctypes.c_uint64 * 1)(0)
        try:
            ioctl(self.fd, KVM_GET_REG_LIST, probe)
        except KvmError as exc:
            if exc.errno != errno.E2BIG:
                raise
        count = int(probe[0])
        regs = (ctypes.c_uint64 * (1 + count))(count)
        ioctl(self.fd, KVM_GET_REG_LIST, regs)
        return [int(reg) for reg in regs[1 : 1 + int(regs[0])]]

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE: KVM_MP_STATE_RUNNABLE, STOPPED, ... ."""
        state = kvm_mp_state()
        ioctl(self.fd, KVM_GET_MP_STATE, state)
        return int(state.mp_state)

    def set_mp_state(self, state: int) -> None:
        """KVM_SET_MP_STATE."""
        request = kvm_mp_state(mp_state=state)
        ioctl(self.fd, KVM_SET_MP_STATE, request)

    def run(self) -> VcpuExit:
        """KVM_RUN; a signal or a kick that interrupted it is KVM_EXIT_INTR."""
        self._thread = threading.get_ident()
        try:
            ioctl(self.fd, KVM_RUN)
        except KvmError as exc:
            if exc.errno == errno.EINTR:
                self.kvm_run[KVM_RUN_IMMEDIATE_EXIT_OFFSET] = 0  # the kick is consumed
                return VcpuExit(ExitReason.INTR)
            raise
        finally:
            self._thread = None
        return decode_exit(memoryview(self.kvm_run))

    def kick(self) -> None:
        """Make the current or next KVM_RUN return KVM_EXIT_INTR (any thread may call).

        immediate_exit covers a kick that lands just before the VCPU thread enters
        KVM_RUN; the signal interrupts one already inside (api.rst, "immediate_exit").
        """
        self.kvm_run[KVM_RUN_IMMEDIATE_EXIT_OFFSET] = 1
        thread = self._thread
        if thread is not None and install_kick_handler():
            with contextlib.suppress(ProcessLookupError):  # it has just left KVM_RUN
                signal.pthread_kill(thread, KICK_SIGNAL)

    def set_mmio_read_data(self, data: bytes) -> None:
        """Fill kvm_run.mmio.data for the MMIO read KVM_RUN stopped at."""
        view = memoryview(self.kvm_run)
        try:
            fill_mmio_read(view, data)
        finally:
            view.release()


class LinuxDevice(_Fd, Device):
    """A device file descriptor (KVM_CREATE_DEVICE's); its value buffers are held in
    locals until the ioctl returns, as the module's rule says."""

    def set_device_attr(self, group: int, attr: int, value: bytes = b"") -> None:
        """KVM_SET_DEVICE_ATTR: ``value`` as the attribute's data (none: addr 0)."""
        buffer = ctypes.create_string_buffer(value, max(1, len(value)))
        addr = ctypes.addressof(buffer) if value else 0
        request = kvm_device_attr(group=group, attr=attr, addr=addr)
        ioctl(self.fd, KVM_SET_DEVICE_ATTR, request)

    def get_device_attr(self, group: int, attr: int, size: int = 8) -> bytes:
        """KVM_GET_DEVICE_ATTR: ``size`` bytes of the attribute."""
        buffer = ctypes.create_string_buffer(size)
        request = kvm_device_attr(group=group, attr=attr, addr=ctypes.addressof(buffer))
        ioctl(self.fd, KVM_GET_DEVICE_ATTR, request)
        return buffer.raw

    def get_device_attrs(self, attrs: Sequence[tuple[int, int, int]]) -> list[bytes]:
        """KVM_GET_DEVICE_ATTR of each (group, attr, size) through one argument and one
        buffer (a GIC's some 300 registers are read in a migration's downtime)."""
        width = max((size for _, _, size in attrs), default=1)
        buffer = ctypes.create_string_buffer(width)
        request = kvm_device_attr(addr=ctypes.addressof(buffer))
        values = []
        for group, attr, size in attrs:
            request.group, request.attr = group, attr
            ioctl(self.fd, KVM_GET_DEVICE_ATTR, request)
            values.append(buffer.raw[:size])
        return values


class LinuxVm(_Fd):
    """A VM file descriptor."""

    def __init__(self, fd: int, kvm: LinuxKvm) -> None:
        super().__init__(fd)
        self.kvm = kvm
        #: memory_size of each slot set here (GET_DIRTY_LOG's bitmap is sized by it).
        self.slot_sizes: dict[int, int] = {}

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM: 0 if the capability is absent, else its value."""
        return ioctl(self.fd, KVM_CHECK_EXTENSION, cap)

    def enable_cap(self, cap: int, flags: int = 0, args: Sequence[int] = ()) -> None:
        """KVM_ENABLE_CAP (e.g. KVM_CAP_ARM_MTE, before any VCPU exists)."""
        request = kvm_enable_cap(cap=cap, flags=flags)
        for i, value in enumerate(args):
            request.args[i] = value
        ioctl(self.fd, KVM_ENABLE_CAP, request)

    def set_user_memory_region(self, region: kvm_userspace_memory_region) -> None:
        """KVM_SET_USER_MEMORY_REGION: add, move or delete a memslot."""
        ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, region)
        if region.memory_size:
            self.slot_sizes[region.slot] = region.memory_size
        else:
            self.slot_sizes.pop(region.slot, None)

    def create_vcpu(self, vcpu_id: int) -> LinuxVcpu:
        """KVM_CREATE_VCPU, with its kvm_run mapped."""
        fd = ioctl(self.fd, KVM_CREATE_VCPU, vcpu_id)
        try:
            return LinuxVcpu(fd, self.kvm.get_vcpu_mmap_size())
        except BaseException:
            os.close(fd)
            raise

    def arm_preferred_target(self) -> kvm_vcpu_init:
        """KVM_ARM_PREFERRED_TARGET: the target VCPUs of this host should be."""
        init = kvm_vcpu_init()
        ioctl(self.fd, KVM_ARM_PREFERRED_TARGET, init)
        return init

    def _bitmap_bytes(self, slot: int) -> int:
        pages = self.slot_sizes.get(slot, 0) // mmap.PAGESIZE
        return max(8, -(-pages // 64) * 8)

    def get_dirty_log(self, slot: int) -> bytes:
        """KVM_GET_DIRTY_LOG: the slot's dirty bitmap."""
        bitmap = ctypes.create_string_buffer(self._bitmap_bytes(slot))
        log = kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(bitmap))
        ioctl(self.fd, KVM_GET_DIRTY_LOG, log)
        return bitmap.raw

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, bitmap: bytes) -> None:
        """KVM_CLEAR_DIRTY_LOG: re-protect the pages of ``bitmap`` from ``first_page``."""
        buffer = ctypes.create_string_buffer(bytes(bitmap), max(8, len(bitmap)))
        clear = kvm_clear_dirty_log(
            slot=slot,
            num_pages=num_pages,
            first_page=first_page,
            dirty_bitmap=ctypes.addressof(buffer),
        )
        ioctl(self.fd, KVM_CLEAR_DIRTY_LOG, clear)

    def arm_mte_copy_tags(self, copy: kvm_arm_copy_mte_tags) -> int:
        """KVM_ARM_MTE_COPY_TAGS; returns the bytes of guest memory covered."""
        return ioctl(self.fd, KVM_ARM_MTE_COPY_TAGS, copy)

    def create_device(self, device_type: int, *, test: bool = False) -> LinuxDevice | None:
        """KVM_CREATE_DEVICE; with ``test`` only ask whether the type exists."""
        request = kvm_create_device(type=device_type, flags=KVM_CREATE_DEVICE_TEST * test)
        ioctl(self.fd, KVM_CREATE_DEVICE, request)
        return None if test else LinuxDevice(request.fd)

    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: raise (1) or lower (0) the interrupt line ``irq``."""
        request = kvm_irq_level(irq=irq, level=level)
        ioctl(self.fd, KVM_IRQ_LINE, request)

    def arm_get_reg_writable_masks(
        self, range_: int = 0, reserved: tuple[int, ...] = (0,) * 13
    ) -> list[int]:
        """KVM_ARM_GET_REG_WRITABLE_MASKS (6.7+): the ID register bits userspace may
        write."""
        masks = (ctypes.c_uint64 * KVM_ARM_FEATURE_ID_RANGE_SIZE)()
        request = reg_mask_range(addr=ctypes.addressof(masks), range=range_)
        request.reserved[: len(reserved)] = reserved
        ioctl(self.fd, KVM_ARM_GET_REG_WRITABLE_MASKS, request)
        return [int(mask) for mask in masks]


class LinuxKvm(_Fd, Kvm):
    """``/dev/kvm`` and this process's memory (:class:`LinuxUserMemory`)."""

    def __init__(self, device: str = DEFAULT_DEVICE, *, file_dir: str | None = None) -> None:
        try:
            fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise KvmError(exc.errno or errno.ENODEV, f"open {device}") from None
        super().__init__(fd)
        self._user_memory = LinuxUserMemory(file_dir)
        install_kick_handler()

    @property
    def user_memory(self) -> LinuxUserMemory:
        """This process's memory, where guest RAM and buffers are mapped."""
        return self._user_memory

    def get_api_version(self) -> int:
        """KVM_GET_API_VERSION (12)."""
        return ioctl(self.fd, KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm."""
        return ioctl(self.fd, KVM_CHECK_EXTENSION, cap)

    def create_vm(self, machine_type: int = 0) -> LinuxVm:
        """KVM_CREATE_VM."""
        return LinuxVm(ioctl(self.fd, KVM_CREATE_VM, machine_type), self)

    def get_vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: the size of a VCPU's kvm_run mapping."""
        return ioctl(self.fd, KVM_GET_VCPU_MMAP_SIZE)

    def mte_feature_level(self) -> int:
        """ID_AA64PFR1_EL1.MTE of a scratch VCPU (see :attr:`host_mte_level`)."""
        return self.host_mte_level

    def in_child_process(self, run: Callable[[Kvm], dict[str, Any]]) -> dict[str, Any]:
        """``run`` in a forked child with its own ``/dev/kvm`` (the parent's mappings
        are left alone: the child makes its own); its result comes back as JSON over a
        pipe, and the child exits with os._exit (no Python clean-up of the parent's
        state)."""
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(reader)
            try:
                payload = json.dumps(run(LinuxKvm(file_dir=str(self.user_memory.file_dir))))
            except BaseException as exc:
                payload = json.dumps({"exception": f"{type(exc).__name__}: {exc}"})
            with os.fdopen(writer, "w") as pipe:
                pipe.write(payload)
            os._exit(0)
        os.close(writer)
        with os.fdopen(reader) as pipe:
            data = pipe.read()
        os.waitpid(pid, 0)
        if not data:
            return {"exception": "the child process died before it answered"}
        result: dict[str, Any] = json.loads(data)
        return result

    @functools.cached_property
    def host_mte_level(self) -> int:
        """ID_AA64PFR1_EL1.MTE as an MTE guest here sees it (0 without KVM's MTE).

        Asked of a scratch VM's VCPU, since KVM decides what guests see (a host with
        MTE3 shows 3): migration compares it with the level the guest booted with.
        """
        if not self.check_extension(Cap.ARM_MTE):
            return 0
        vm = self.create_vm()
        try:
            vm.enable_cap(Cap.ARM_MTE)
            vcpu = vm.create_vcpu(0)
            try:
                vcpu.arm_vcpu_init(vm.arm_preferred_target())
                return vcpu.get_one_reg(ID_AA64PFR1_EL1) >> 8 & 0xF
            finally:
                vcpu.close()
        finally:
            vm.close()
