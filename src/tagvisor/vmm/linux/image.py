"""The arm64 kernel ``Image`` and its 64-byte header.

Facts from Linux's Documentation/arch/arm64/booting.rst, section 4 ("Call the kernel
image"): the header is ``code0, code1 (u32); text_offset, image_size, flags, res2,
res3, res4 (u64); magic (u32) = 0x644d5241 "ARM\\x64" at offset 0x38; res5 (u32)``,
all little endian since v3.17. ``image_size`` 0 means a pre-3.17 kernel whose
text_offset is assumed to be 0x80000. The file is hostile: every field is checked
before anything is placed in guest memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from tagvisor.vmm.loader import ImageError

HEADER: Final = struct.Struct("<IIQQQQQQII")
MAGIC: Final = 0x644D5241  # "ARM\x64", little endian
MAGIC_OFFSET: Final = 0x38
#: booting.rst: "Where image_size is zero, text_offset can be assumed to be 0x80000".
LEGACY_TEXT_OFFSET: Final = 0x80000
#: Bits 1-2 of flags: the kernel's page size (0: unspecified).
PAGE_SIZES: Final = {0: None, 1: 4 << 10, 2: 16 << 10, 3: 64 << 10}
FLAG_BIG_ENDIAN: Final = 1 << 0
FLAG_PLACE_ANYWHERE: Final = 1 << 3
#: Bits 4-63 are reserved; a kernel that sets them asks for something unknown here.
RESERVED_FLAGS: Final = ~0xF & (2**64 - 1)
#: What a legacy kernel (image_size 0) is given beyond its file: booting.rst asks to
#: keep "as much memory as possible free" after it; its .bss needs some at least.
LEGACY_SLACK: Final = 8 << 20

GZIP_MAGIC: Final = b"\x1f\x8b"
ELF_MAGIC: Final = b"\x7fELF"
#: x86's bzImage: "HdrS" at 0x202 (Documentation/arch/x86/boot.rst).
X86_MAGIC: Final = (0x202, b"HdrS")
#: 32-bit Arm's zImage: 0x016F2818 at 0x24 (arch/arm/boot/compressed/head.S).
ARM32_MAGIC: Final = (0x24, (0x016F2818).to_bytes(4, "little"))


@dataclass(frozen=True)
class KernelImage:
    """A validated arm64 Image: its bytes and what its header asks for."""

    data: bytes
    text_offset: int
    #: Bytes from the image's start the kernel needs free (file plus .bss and more).
    image_size: int
    page_size: int | None
    #: booting.rst bit 3: 0 - the 2 MiB base should be as close as possible to DRAM's
    #: start; 1 - anywhere within the 48-bit physical range.
    place_anywhere: bool


def _not_an_image(blob: bytes, name: str) -> str:
    """Why ``blob`` is no arm64 Image, in words the user can act on."""
    if blob[:2] == GZIP_MAGIC:
        return f"{name}: a gzip file; decompress it first (booting.rst: the decompressed Image)"
    if blob[:4] == ELF_MAGIC:
        return f"{name}: an ELF file (vmlinux?); give the arm64 Image (arch/arm64/boot/Image)"
    for (offset, magic), arch in (
        (X86_MAGIC, "an x86 bzImage"),
        (ARM32_MAGIC, "a 32-bit Arm zImage"),
    ):
        if blob[offset : offset + len(magic)] == magic:
            return f"{name}: {arch}, not an arm64 kernel; tagvisor boots arm64 Images"
    return f'{name}: not an arm64 Image (no "ARM\\x64" magic at offset 0x38)'


def parse_image(blob: bytes, name: str = "kernel") -> KernelImage:
    """Check an arm64 Image header (booting.rst) and return what placing it needs."""
    if len(blob) < HEADER.size:
        raise ImageError(f"{name}: {len(blob)} bytes is too short for the 64-byte Image header")
    fields = HEADER.unpack_from(blob)
    text_offset, image_size, flags, magic = fields[2], fields[3], fields[4], fields[8]
    if magic != MAGIC:
        raise ImageError(_not_an_image(blob, name))
    if image_size == 0:  # pre-3.17: flags and text_offset's endianness are unknown
        return KernelImage(blob, LEGACY_TEXT_OFFSET, len(blob) + LEGACY_SLACK, None, False)
    if flags & FLAG_BIG_ENDIAN:
        raise ImageError(f"{name}: a big-endian kernel; tagvisor boots little-endian guests")
    if flags & RESERVED_FLAGS:
        raise ImageError(f"{name}: reserved flag bits set ({flags:#x}); booting.rst defines 0-3")
    if text_offset % 4096 or text_offset >= 2 << 20:
        raise ImageError(f"{name}: text_offset {text_offset:#x} is not a page inside 2 MiB")
    if image_size < len(blob):
        raise ImageError(
            f"{name}: image_size {image_size:#x} is smaller than the file ({len(blob):#x} bytes)"
        )
    page_size = PAGE_SIZES[(flags >> 1) & 3]
    return KernelImage(blob, text_offset, image_size, page_size, bool(flags & FLAG_PLACE_ANYWHERE))
