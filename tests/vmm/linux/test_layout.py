"""Kernel, initrd and device tree placement in guest RAM (booting.rst's rules)."""

from __future__ import annotations

import pytest

from tagvisor.testbed.parts import fetch
from tagvisor.vmm.linux.image import parse_image
from tagvisor.vmm.linux.layout import (
    COMMAND_LINE_SIZE,
    DTB_MAX,
    LayoutError,
    check_bootargs,
    initrd_format,
    plan,
)
from tests.vmm.linux.images import cpio_initrd, image

RAM = 0x4000_0000
MIB = 1 << 20


def test_kernel_initrd_and_dtb_follow_each_other_aligned() -> None:
    """Scenario: a 4 MiB kernel with text_offset 0x80000 and a 1 MiB initrd in 64 MiB:
    the kernel sits text_offset above the first 2 MiB base, the initrd after it on a
    page, the DTB on the next 2 MiB boundary with 2 MiB to itself."""
    kernel = parse_image(image(text_offset=0x80000, image_size=4 * MIB))
    layout = plan(RAM, 64 * MIB, kernel, 1 * MIB)
    assert layout.kernel == RAM + 0x80000
    assert layout.kernel_end == layout.kernel + 4 * MIB
    assert layout.initrd == layout.kernel_end
    assert layout.initrd_end == layout.kernel_end + MIB
    assert layout.dtb % (2 * MIB) == 0
    assert layout.dtb >= layout.initrd_end
    assert layout.dtb + DTB_MAX <= RAM + 64 * MIB


def test_without_an_initrd_the_dtb_follows_the_kernel() -> None:
    """Scenario: no initrd; the DTB takes the 2 MiB block after the kernel."""
    layout = plan(RAM, 16 * MIB, parse_image(image(image_size=3 * MIB)), None)
    assert layout.initrd is None
    assert layout.dtb == RAM + 4 * MIB


def test_a_kernel_bigger_than_ram_is_refused() -> None:
    """Scenario: image_size 40 MiB in 32 MiB of RAM."""
    with pytest.raises(LayoutError, match="past the end of guest RAM"):
        plan(RAM, 32 * MIB, parse_image(image(image_size=40 * MIB)), None)


def test_an_initrd_that_does_not_fit_is_refused() -> None:
    """Scenario: a 30 MiB initrd after a 4 MiB kernel in 32 MiB of RAM."""
    with pytest.raises(LayoutError, match=r"initrd .* does not fit"):
        plan(RAM, 32 * MIB, parse_image(image()), 30 * MIB)


def test_no_room_left_for_the_device_tree_is_refused() -> None:
    """Scenario: kernel and initrd fill RAM to its last 2 MiB block's start."""
    with pytest.raises(LayoutError, match="device tree"):
        plan(RAM, 8 * MIB, parse_image(image(image_size=4 * MIB)), 3 * MIB)


def test_bootargs_longer_than_command_line_size_are_refused() -> None:
    """Scenario: 2047 bytes fit (the NUL makes 2048); 2048 do not; a NUL never does."""
    assert len(check_bootargs("x" * (COMMAND_LINE_SIZE - 1))) == COMMAND_LINE_SIZE - 1
    with pytest.raises(LayoutError, match="COMMAND_LINE_SIZE"):
        check_bootargs("x" * COMMAND_LINE_SIZE)
    with pytest.raises(LayoutError, match="NUL"):
        check_bootargs("console=ttyAMA0\0rdinit=/bin/sh")


def test_initrds_are_known_by_their_first_bytes() -> None:
    """Scenario: cpio and gzip are taken; empty files, ELF files and an Image are not."""
    assert initrd_format(cpio_initrd()) == "cpio (newc)"
    assert initrd_format(b"\x1f\x8b\x08\x00") == "gzip"
    for bad, words in ((b"", "empty"), (b"\x7fELF....", "not an initramfs"), (image(), "not an")):
        with pytest.raises(LayoutError, match=words):
            initrd_format(bad)


@pytest.mark.oracle
def test_debians_arm64_kernel_parses_and_fits_in_128_mib() -> None:
    """Scenario: the testbed's Debian 6.1 vmlinuz (tagvisor.testbed.parts): a plain
    little-endian Image with 4K pages; it and a 2 MiB initrd fit in 128 MiB."""
    kernel = parse_image(fetch("release", say=lambda _: None).kernel.read_bytes(), "vmlinuz")
    assert kernel.page_size == 4096
    assert kernel.image_size >= len(kernel.data)
    layout = plan(RAM, 128 * MIB, kernel, 2 * MIB)
    assert layout.kernel == RAM + kernel.text_offset
