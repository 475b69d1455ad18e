"""Synthetic arm64 Images and initrds for the Linux boot tests."""

from __future__ import annotations

from tagvisor.vmm.linux.image import HEADER, MAGIC

#: flags: little endian, 4K pages, placed anywhere (Debian's 6.1 kernel has these).
DEBIAN_FLAGS = 0b1010


def image_header(
    *,
    text_offset: int = 0,
    image_size: int = 4 << 20,
    flags: int = DEBIAN_FLAGS,
    magic: int = MAGIC,
) -> bytes:
    """The 64 bytes of booting.rst's header (code0 is a branch the tests never run)."""
    return HEADER.pack(0x91005A4D, 0x14000000, text_offset, image_size, flags, 0, 0, 0, magic, 0)


def image(size: int = 64 << 10, **fields: int) -> bytes:
    """A header padded to ``size`` bytes; image_size defaults to 4 MiB."""
    header = image_header(**fields)
    return header + bytes(max(0, size - len(header)))


def cpio_initrd() -> bytes:
    """An uncompressed newc archive holding only its trailer."""
    name = b"TRAILER!!!\0"
    fields = [0] * 13
    fields[4], fields[11] = 1, len(name)
    header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    return header + name + bytes(-(len(header) + len(name)) % 4)
