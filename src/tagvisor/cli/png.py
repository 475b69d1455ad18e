"""A minimal PNG writer (8-bit RGB, no filtering), so a tag map needs no imaging
library: the format is a signature and three zlib-compressed, CRC-checked chunks."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(rgb: NDArray[np.uint8]) -> bytes:
    """An (height, width, 3) array of 8-bit RGB as PNG bytes."""
    height, width, channels = rgb.shape
    if channels != 3:
        raise ValueError("encode_png takes RGB pixels: an array of shape (h, w, 3)")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit truecolour
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1)
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + _chunk(b"IEND", b"")
    )


def write_png(path: Path, rgb: NDArray[np.uint8]) -> None:
    """Write ``rgb`` to ``path`` as a PNG file."""
    path.write_bytes(encode_png(rgb))
