"""Where the kernel, the initrd and the device tree go in guest RAM.

The rules are Linux's Documentation/arch/arm64/booting.rst:

* the Image is placed ``text_offset`` bytes from a 2 MiB aligned base, and
  ``image_size`` bytes from its start must be free for the kernel (section 4);
* the initrd must lie within a 1 GiB aligned window of up to 32 GiB that also covers
  the kernel Image (section 4);
* the device tree blob is 8-byte aligned, at most 2 MiB, and not inside a 2 MiB region
  that needs special attributes (section 2): it gets a 2 MiB block of its own.

The layout is kernel, initrd, DTB, from the start of RAM up: the kernel as close as
possible to DRAM's start (flags bit 3 = 0 asks for it; bit 3 = 1 allows it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tagvisor.vmm.linux.image import KernelImage
from tagvisor.vmm.loader import ImageError

MIB: Final = 1 << 20
KERNEL_ALIGN: Final = 2 * MIB
DTB_MAX: Final = 2 * MIB
DTB_ALIGN: Final = 2 * MIB
INITRD_ALIGN: Final = 4096
INITRD_WINDOW_ALIGN: Final = 1 << 30
INITRD_WINDOW_SIZE: Final = 32 << 30
#: arch/arm64/include/uapi/asm/setup.h: COMMAND_LINE_SIZE 2048, the NUL included.
COMMAND_LINE_SIZE: Final = 2048

#: The formats Linux's initramfs unpacker knows by their first bytes (init/initramfs.c
#: with lib/decompress.c's two-byte compressed_formats): cpio newc/crc, and the
#: compressors a kernel may be built to unpack.
INITRD_MAGICS: Final = {
    b"070701": "cpio (newc)",
    b"070702": "cpio (crc)",
    b"\x1f\x8b": "gzip",
    b"\x1f\x9e": "gzip",
    b"\x42\x5a": "bzip2",
    b"\x5d\x00": "lzma",
    b"\xfd\x37": "xz",
    b"\x89\x4c": "lzo",
    b"\x02\x21": "lz4",
    b"\x28\xb5": "zstd",
}


class LayoutError(ImageError):
    """The kernel, initrd or device tree cannot be placed; the message says why."""


@dataclass(frozen=True)
class BootLayout:
    """Guest-physical addresses of what the VMM loads before the kernel runs."""

    kernel: int  # where the Image's first byte goes; VCPU 0's PC
    kernel_end: int  # kernel + image_size: the kernel's own, not to be used
    initrd: int | None
    initrd_end: int | None
    dtb: int  # x0 at entry
    dtb_limit: int  # the most bytes the blob may take here


def _up(value: int, align: int) -> int:
    return -(-value // align) * align


def initrd_format(initrd: bytes, name: str = "initrd") -> str:
    """The initrd's format by its first bytes, or LayoutError for anything Linux would
    not unpack (an empty file, a kernel image, a disk image)."""
    if not initrd:
        raise LayoutError(f"{name} is empty")
    for magic, kind in INITRD_MAGICS.items():
        if initrd.startswith(magic):
            return kind
    raise LayoutError(
        f"{name} is not an initramfs: neither a cpio archive nor compressed by a method "
        f"Linux unpacks (first bytes {initrd[:6].hex()})"
    )


def check_bootargs(bootargs: str) -> bytes:
    """The command line as the device tree carries it, or LayoutError."""
    if "\0" in bootargs:
        raise LayoutError("the kernel command line contains a NUL byte")
    encoded = bootargs.encode()
    if len(encoded) + 1 > COMMAND_LINE_SIZE:
        raise LayoutError(
            f"the kernel command line is {len(encoded)} bytes; arm64 Linux keeps "
            f"{COMMAND_LINE_SIZE - 1} (COMMAND_LINE_SIZE) and would cut the rest"
        )
    return encoded


def plan(ram_base: int, ram_size: int, kernel: KernelImage, initrd_size: int | None) -> BootLayout:
    """Kernel at the first 2 MiB base + text_offset, the initrd after it, the DTB in
    the next 2 MiB block of its own; LayoutError when something does not fit."""
    ram_end = ram_base + ram_size
    base = _up(ram_base, KERNEL_ALIGN)
    start = base + kernel.text_offset
    kernel_end = start + kernel.image_size
    if kernel_end > ram_end:
        raise LayoutError(
            f"the kernel needs {kernel.image_size >> 20} MiB from {start:#x} (image_size), "
            f"past the end of guest RAM at {ram_end:#x}: give the guest more memory"
        )
    initrd = initrd_end = None
    cursor = kernel_end
    if initrd_size is not None:
        initrd = _up(kernel_end, INITRD_ALIGN)
        initrd_end = initrd + initrd_size
        window = start - start % INITRD_WINDOW_ALIGN
        if initrd_end > ram_end or initrd_end > window + INITRD_WINDOW_SIZE:
            raise LayoutError(
                f"the initrd ({initrd_size} bytes) does not fit in guest RAM after the "
                f"kernel ({initrd:#x} to {initrd_end:#x}, RAM ends at {ram_end:#x}): "
                "give the guest more memory or use a smaller initrd"
            )
        cursor = initrd_end
    dtb = _up(cursor, DTB_ALIGN)
    if dtb + DTB_MAX > ram_end:
        raise LayoutError(
            f"no 2 MiB block is left for the device tree after the kernel and initrd "
            f"(it would start at {dtb:#x}, RAM ends at {ram_end:#x}): give the guest more memory"
        )
    return BootLayout(start, kernel_end, initrd, initrd_end, dtb, DTB_MAX)
