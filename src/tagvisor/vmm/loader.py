"""Loading guest images: ELF64 executables for AArch64, and raw binaries.

The file is hostile: every header field is bounds-checked before use, segments must
fit inside the file and inside guest RAM, and nothing is written to guest memory until
the whole image has been validated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from tagvisor.errors import TagvisorError
from tagvisor.vmm.memory import GuestMemory, GuestMemoryError

EM_AARCH64: Final = 183
PT_LOAD: Final = 1
ET_EXEC: Final = 2
ELF_HEADER: Final = struct.Struct("<16sHHIQQQIHHHHHH")
PROGRAM_HEADER: Final = struct.Struct("<IIQQQQQQ")
MAX_SEGMENTS: Final = 64


class ImageError(TagvisorError):
    """A guest image is not something tagvisor can load; the message says why."""


@dataclass(frozen=True)
class Segment:
    """A load segment: ``data`` at ``gpa``, zero-filled up to ``memsz`` bytes."""

    gpa: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class GuestImage:
    """A validated guest image: its entry point and what to load where."""

    entry: int
    segments: tuple[Segment, ...]


def parse_elf(blob: bytes, name: str = "image") -> GuestImage:
    """Validate an AArch64 ELF64 executable and return what to load where."""
    if len(blob) < ELF_HEADER.size:
        raise ImageError(f"{name}: {len(blob)} bytes is too short for an ELF header")
    (
        ident,
        e_type,
        machine,
        _version,
        entry,
        phoff,
        _shoff,
        _flags,
        ehsize,
        phentsize,
        phnum,
        *_rest,
    ) = ELF_HEADER.unpack_from(blob)
    if ident[:4] != b"\x7fELF":
        raise ImageError(f"{name}: not an ELF file (no \\x7fELF magic)")
    if ident[4] != 2 or ident[5] != 1:
        raise ImageError(f"{name}: not a little-endian 64-bit ELF")
    if machine != EM_AARCH64:
        raise ImageError(f"{name}: built for machine {machine}, not AArch64 ({EM_AARCH64})")
    if e_type != ET_EXEC:
        raise ImageError(f"{name}: ELF type {e_type} is not an executable (link it statically)")
    if phentsize != PROGRAM_HEADER.size or not 0 < phnum <= MAX_SEGMENTS:
        raise ImageError(f"{name}: bad program headers ({phnum} of {phentsize} bytes)")
    if phoff + phnum * phentsize > len(blob) or ehsize > len(blob):
        raise ImageError(f"{name}: program headers run past the end of the file")
    segments = []
    for index in range(phnum):
        (p_type, _pflags, offset, vaddr, paddr, filesz, memsz, _align) = PROGRAM_HEADER.unpack_from(
            blob, phoff + index * phentsize
        )
        del vaddr
        if p_type != PT_LOAD or memsz == 0:
            continue
        if filesz > memsz or offset + filesz > len(blob):
            raise ImageError(f"{name}: segment {index} claims bytes the file does not have")
        segments.append(Segment(paddr, blob[offset : offset + filesz], memsz))
    if not segments:
        raise ImageError(f"{name}: no loadable segment")
    return GuestImage(entry, tuple(segments))


def raw_image(blob: bytes, gpa: int) -> GuestImage:
    """A raw binary to place at ``gpa`` and enter at its first byte."""
    if not blob:
        raise ImageError("the raw image is empty")
    return GuestImage(gpa, (Segment(gpa, blob, len(blob)),))


def load(image: GuestImage, memory: GuestMemory) -> int:
    """Copy the image into guest RAM (all of it checked first); return the entry point."""
    for segment in image.segments:
        try:
            memory.region_of(segment.gpa, segment.memsz)
        except GuestMemoryError as error:
            raise ImageError(
                f"segment at {segment.gpa:#x} (+{segment.memsz:#x}) lies outside guest RAM"
            ) from error
    if not any(s.gpa <= image.entry < s.gpa + s.memsz for s in image.segments):
        raise ImageError(f"entry point {image.entry:#x} is not inside a loaded segment")
    for segment in image.segments:
        memory.write(segment.gpa, segment.data + bytes(segment.memsz - len(segment.data)))
    return image.entry
