"""The real ``/dev/kvm`` backend: :mod:`tagvisor.kvm.api` over fcntl.ioctl, ctypes and mmap.

Standard library only, so it runs in a minimal arm64 image (the testbed's). Its errors
are the kernel's own errnos, in the same :class:`~tagvisor.kvm.errors.KvmError` the
model raises.
"""

from tagvisor.kvm.linux.memory import LinuxUserMemory, UserMemoryError
from tagvisor.kvm.linux.run import decode_exit, fill_mmio_read
from tagvisor.kvm.linux.system import LinuxDevice, LinuxKvm, LinuxVcpu, LinuxVm

__all__ = [
    "LinuxDevice",
    "LinuxKvm",
    "LinuxUserMemory",
    "LinuxVcpu",
    "LinuxVm",
    "UserMemoryError",
    "decode_exit",
    "fill_mmio_read",
]
