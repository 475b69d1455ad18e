"""Loading ELF images: valid ones land in RAM; hostile ones are refused untouched."""

import struct

import pytest

from tagvisor.kvm.model import ModelKvm
from tagvisor.vmm.builder import RAM_BASE
from tagvisor.vmm.loader import EM_AARCH64, ImageError, load, parse_elf
from tagvisor.vmm.memory import GuestMemory


def elf(entry: int, segments: list[tuple[int, bytes, int]], machine: int = EM_AARCH64) -> bytes:
    """A minimal ELF64 executable with PT_LOAD segments (paddr, data, memsz)."""
    header_size, ph_size = 64, 56
    offset = header_size + ph_size * len(segments)
    phdrs, blobs = b"", b""
    for paddr, data, memsz in segments:
        phdrs += struct.pack(
            "<IIQQQQQQ", 1, 5, offset + len(blobs), paddr, paddr, len(data), memsz, 16
        )
        blobs += data
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = struct.pack(
        "<16sHHIQQQIHHHHHH",
        ident,
        2,
        machine,
        1,
        entry,
        header_size,
        0,
        0,
        header_size,
        ph_size,
        len(segments),
        64,
        0,
        0,
    )
    return header + phdrs + blobs


def memory() -> GuestMemory:
    kvm = ModelKvm(32 << 20)
    vm = kvm.create_vm()
    mem = GuestMemory(vm, kvm.user_memory)
    mem.add_region(RAM_BASE, 4 << 20, kvm.user_memory.map_anonymous(4 << 20))
    return mem


def test_elf_segments_are_loaded_and_bss_zeroed() -> None:
    """Scenario: text at 0x40080000 and a segment with 8 bytes of bss."""
    image = parse_elf(
        elf(0x4008_0000, [(0x4008_0000, b"\x1f\x20\x03\xd5", 4), (0x4009_0000, b"data", 12)])
    )
    mem = memory()
    mem.write(0x4009_0004, b"\xff" * 8)
    assert load(image, mem) == 0x4008_0000
    assert mem.read(0x4008_0000, 4) == b"\x1f\x20\x03\xd5"
    assert mem.read(0x4009_0000, 12) == b"data" + bytes(8)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x7fELF", "too short"),
        (b"MZ" + bytes(100), "not an ELF"),
        (elf(0x4008_0000, [(0x4008_0000, b"x", 1)], machine=62), "not AArch64"),
        (elf(0x4008_0000, [(0x4008_0000, b"x", 1)])[:100], "past the end"),
        (elf(0x4008_0000, [(0x4008_0000, b"x", 1)])[:120], "does not have"),
    ],
    ids=["truncated", "not elf", "x86-64", "cut headers", "cut data"],
)
def test_malformed_images_are_refused_with_the_reason(blob: bytes, message: str) -> None:
    """Scenario: hostile or wrong files given as guests."""
    with pytest.raises(ImageError, match=message):
        parse_elf(blob)


def test_segment_outside_ram_changes_nothing() -> None:
    """Scenario: one good segment and one past the end of RAM: nothing is written."""
    image = parse_elf(
        elf(0x4008_0000, [(0x4008_0000, b"good", 4), (RAM_BASE + (4 << 20) - 2, b"spill", 5)])
    )
    mem = memory()
    with pytest.raises(ImageError, match="outside guest RAM"):
        load(image, mem)
    assert mem.read(0x4008_0000, 4) == bytes(4)


def test_entry_outside_the_image_is_refused() -> None:
    """Scenario: the entry point lies in no loaded segment."""
    image = parse_elf(elf(0x4100_0000, [(0x4008_0000, b"x", 4)]))
    with pytest.raises(ImageError, match="entry point"):
        load(image, memory())
