"""Hostile kernels and initrds: whatever the bytes, the readers refuse by name or plan
a layout inside guest RAM; nothing else escapes."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from tagvisor.vmm.linux.image import HEADER, MAGIC, parse_image
from tagvisor.vmm.linux.layout import LayoutError, initrd_format, plan
from tagvisor.vmm.loader import ImageError

RAM = 0x4000_0000
U64 = st.integers(0, 2**64 - 1)


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=200))
def test_random_bytes_are_refused_as_an_image_error(blob: bytes) -> None:
    """Scenario: arbitrary bytes as a kernel: parsed or refused with ImageError."""
    with contextlib.suppress(ImageError):
        parse_image(blob)


@settings(max_examples=300, deadline=None)
@given(
    text_offset=U64,
    image_size=U64,
    flags=U64,
    ram_size=st.integers(1, 64).map(lambda n: n << 21),
    initrd=st.none() | st.integers(1, 1 << 28),
)
def test_any_header_that_parses_is_placed_inside_ram_or_refused(
    text_offset: int, image_size: int, flags: int, ram_size: int, initrd: int | None
) -> None:
    """Scenario: headers with any offset, size and flags, RAM of 2 to 128 MiB, an
    initrd of any size: either ImageError/LayoutError, or every piece lies in RAM,
    the kernel text_offset above a 2 MiB base, nothing overlapping."""
    header = HEADER.pack(0, 0, text_offset, image_size, flags, 0, 0, 0, MAGIC, 0)
    try:
        kernel = parse_image(header)
        layout = plan(RAM, ram_size, kernel, initrd)
    except ImageError:  # LayoutError is one
        return
    end = RAM + ram_size
    assert (layout.kernel - kernel.text_offset) % (2 << 20) == 0
    assert RAM <= layout.kernel < layout.kernel_end <= end
    if initrd is not None:
        assert layout.initrd is not None
        assert layout.initrd_end is not None
        assert layout.kernel_end <= layout.initrd < layout.initrd_end <= layout.dtb
    assert layout.kernel_end <= layout.dtb
    assert layout.dtb + layout.dtb_limit <= end
    assert layout.dtb % 8 == 0


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=64))
def test_random_initrds_are_named_or_refused(blob: bytes) -> None:
    """Scenario: arbitrary bytes as an initrd: a known format's name or LayoutError."""
    with contextlib.suppress(LayoutError):
        assert initrd_format(blob)
