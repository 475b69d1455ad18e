"""The arm64 Image header (booting.rst, section 4) is checked before anything is placed."""

from __future__ import annotations

import gzip

import pytest

from tagvisor.vmm.linux.image import LEGACY_TEXT_OFFSET, parse_image
from tagvisor.vmm.loader import ImageError
from tests.vmm.linux.images import image


def test_a_modern_header_gives_its_offset_size_and_flags() -> None:
    """Scenario: text_offset 0, image_size 32 MiB, flags LE + 4K + anywhere (Debian's)."""
    kernel = parse_image(image(image_size=32 << 20))
    assert (kernel.text_offset, kernel.image_size) == (0, 32 << 20)
    assert kernel.page_size == 4096
    assert kernel.place_anywhere


def test_a_pre_3_17_header_gets_the_assumed_text_offset() -> None:
    """Scenario: image_size 0 (before v3.17): text_offset 0x80000 is assumed and the
    kernel is given its file plus room for .bss."""
    blob = image(image_size=0, text_offset=0x1234)
    kernel = parse_image(blob)
    assert kernel.text_offset == LEGACY_TEXT_OFFSET
    assert kernel.image_size > len(blob)


@pytest.mark.parametrize(
    ("blob", "words"),
    [
        (b"ARM\x64", "too short"),
        (image(magic=0x12345678), 'no "ARM\\\\x64" magic'),
        (gzip.compress(image()), "gzip file; decompress"),
        (b"\x7fELF" + bytes(124), "an ELF file"),
        (bytes(0x202) + b"HdrS" + bytes(64), "an x86 bzImage, not an arm64 kernel"),
        (bytes(0x24) + bytes.fromhex("18286f01") + bytes(64), "a 32-bit Arm zImage"),
        (image(flags=0b1011), "big-endian"),
        (image(flags=1 << 4), "reserved flag bits"),
        (image(text_offset=0x100), "text_offset 0x100"),
        (image(text_offset=4 << 20), "text_offset 0x400000"),
        (image(size=8 << 20, image_size=4 << 20), "smaller than the file"),
    ],
)
def test_what_is_not_an_arm64_image_is_refused_by_name(blob: bytes, words: str) -> None:
    """Scenario: headers that are short, foreign (gzip, ELF, x86, 32-bit Arm),
    big-endian, reserved-flagged, badly offset or smaller than their file; each
    refusal names what is wrong."""
    with pytest.raises(ImageError, match=words):
        parse_image(blob, "vmlinuz")
