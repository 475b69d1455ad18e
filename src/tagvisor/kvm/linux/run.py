"""The kvm_run page: decoding an exit, and filling in MMIO read data.

Offsets are struct kvm_run's on arm64 (include/uapi/linux/kvm.h, checked against the
6.1 headers: see tagvisor.kvm.uapi). Pure functions over a buffer, so they are tested
with a synthetic page on any machine.
"""

from __future__ import annotations

import struct
from typing import Final

from tagvisor.kvm.api import MmioAccess, VcpuExit
from tagvisor.kvm.uapi import (
    KVM_RUN_EXIT_REASON_OFFSET,
    KVM_RUN_MMIO_DATA,
    KVM_RUN_MMIO_IS_WRITE,
    KVM_RUN_MMIO_LEN,
    KVM_RUN_MMIO_PHYS_ADDR,
    KVM_RUN_SYSTEM_EVENT_DATA,
    KVM_RUN_SYSTEM_EVENT_NDATA,
    KVM_RUN_SYSTEM_EVENT_TYPE,
    KVM_RUN_UNION_OFFSET,
    ExitReason,
)

#: kvm_run.system_event.data[16] (u64 each).
SYSTEM_EVENT_MAX_DATA: Final = 16
MMIO_DATA_SIZE: Final = 8

Buffer = bytes | bytearray | memoryview


def _u32(buffer: Buffer, offset: int) -> int:
    value: int = struct.unpack_from("<I", buffer, offset)[0]
    return value


def _u64(buffer: Buffer, offset: int) -> int:
    value: int = struct.unpack_from("<Q", buffer, offset)[0]
    return value


def decode_exit(buffer: Buffer) -> VcpuExit:
    """The exit KVM_RUN left in the kvm_run page ``buffer``.

    Unknown exit numbers raise ValueError (ExitReason lists every exit arm64 KVM
    produces that tagvisor handles; a new one should be added, not guessed).
    """
    reason = ExitReason(_u32(buffer, KVM_RUN_EXIT_REASON_OFFSET))
    if reason == ExitReason.MMIO:
        length = _u32(buffer, KVM_RUN_MMIO_LEN)
        is_write = bool(buffer[KVM_RUN_MMIO_IS_WRITE])
        start = KVM_RUN_MMIO_DATA
        data = bytes(buffer[start : start + min(length, MMIO_DATA_SIZE)]) if is_write else b""
        mmio = MmioAccess(_u64(buffer, KVM_RUN_MMIO_PHYS_ADDR), length, is_write, data)
        return VcpuExit(reason, mmio=mmio)
    if reason == ExitReason.SYSTEM_EVENT:
        ndata = min(_u32(buffer, KVM_RUN_SYSTEM_EVENT_NDATA), SYSTEM_EVENT_MAX_DATA)
        words = struct.unpack_from(f"<{ndata}Q", buffer, KVM_RUN_SYSTEM_EVENT_DATA)
        event = _u32(buffer, KVM_RUN_SYSTEM_EVENT_TYPE)
        return VcpuExit(reason, system_event=event, system_event_data=tuple(words))
    if reason == ExitReason.INTERNAL_ERROR:
        return VcpuExit(reason, internal_suberror=_u32(buffer, KVM_RUN_UNION_OFFSET))
    return VcpuExit(reason)


def fill_mmio_read(buffer: bytearray | memoryview, data: bytes) -> None:
    """Put ``data`` (at most 8 bytes) in kvm_run.mmio.data for the pending read.

    KVM copies ``mmio.len`` bytes of it into the guest register on the next KVM_RUN
    (kvm_handle_mmio_return).
    """
    if len(data) > MMIO_DATA_SIZE:
        raise ValueError(f"an MMIO access carries at most 8 bytes, not {len(data)}")
    padded = data.ljust(MMIO_DATA_SIZE, b"\0")
    buffer[KVM_RUN_MMIO_DATA : KVM_RUN_MMIO_DATA + MMIO_DATA_SIZE] = padded
