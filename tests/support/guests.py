"""The guest programs of ``guests/`` and the boot configuration block they read.

The prebuilt ELF images (``src/tagvisor/guests``, shipped in the package) are what the
oracle runs: they are committed, and ``tests/guests`` checks that the sources still
build to exactly them.
:class:`BootConfig` is the block of docs/guest-abi.md plus the two fields the guests
add (program argument, IRG seed; guests/README.md); a VMM writes :meth:`to_bytes` at
:data:`BOOT_CONFIG_ADDR`, QEMU gets it as ``-device loader`` words.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tagvisor.arch import TagCheckMode

REPO: Final = Path(__file__).resolve().parents[2]
GUESTS_DIR: Final = REPO / "guests"
PREBUILT_DIR: Final = GUESTS_DIR.parent / "src" / "tagvisor" / "guests"
BUILD_SCRIPT: Final = REPO / "scripts" / "build-guests"
GUEST_NAMES: Final = (
    "bench-checked",
    "bench-int",
    "churn",
    "fill",
    "heap",
    "kvm-probe",
    "tag-owner",
    "mte-smoke",
    "mte-traps",
)

RAM_BASE: Final = 0x4000_0000
BOOT_CONFIG_ADDR: Final = 0x4000_1000
BOOT_MAGIC: Final = 0x4743_5654  # "TVCG"
BOOT_VERSION: Final = 1
DEFAULT_RAM_SIZE: Final = 128 << 20
#: RGSR_EL1.SEED the runtime uses when the block gives none (TV_DEFAULT_SEED).
DEFAULT_SEED: Final = 0xACE1
#: The address guest images are linked at and start from.
IMAGE_BASE: Final = 0x4008_0000
PT_LOAD: Final = 1
#: Exit statuses of guests/runtime/runtime.h.
EXIT_OK: Final = 0
EXIT_CHECKS_FAILED: Final = 1
EXIT_NO_MTE: Final = 3


@dataclass(frozen=True)
class ElfImage:
    """What a loader needs from a guest ELF: the entry point and the load segments."""

    entry: int
    #: (guest address, bytes in the file, bytes in memory) of each PT_LOAD segment.
    segments: tuple[tuple[int, bytes, int], ...]

    @classmethod
    def read(cls, path: Path) -> ElfImage:
        data = path.read_bytes()
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ValueError(f"{path} is not a little-endian ELF64 file")
        (entry, phoff) = struct.unpack_from("<QQ", data, 0x18)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        segments = []
        for index in range(phnum):
            p_type, _flags, offset, vaddr, _paddr, filesz, memsz = struct.unpack_from(
                "<IIQQQQQ", data, phoff + index * phentsize
            )
            if p_type == PT_LOAD:
                segments.append((vaddr, data[offset : offset + filesz], memsz))
        return cls(entry, tuple(segments))


def prebuilt(name: str) -> Path:
    """The committed ELF image of guest ``name``."""
    if name not in GUEST_NAMES:
        raise ValueError(f"no guest {name!r}; there are {', '.join(GUEST_NAMES)}")
    return PREBUILT_DIR / f"{name}.elf"


@dataclass(frozen=True)
class BootConfig:
    """The boot configuration block at 0x4000_1000 (little-endian).

    offset 0 magic, 4 version, 8 tag check mode, 12 flags (bit 0: MTE enabled for the
    VM), 16 RAM size; guest extensions: 24 program argument (u64), 32 IRG seed (u32,
    0 means the runtime's default).
    """

    mode: TagCheckMode = TagCheckMode.SYNC
    mte: bool = True
    ram_size: int = DEFAULT_RAM_SIZE
    arg: int = 0
    seed: int = 0
    version: int = BOOT_VERSION

    def to_bytes(self) -> bytes:
        return struct.pack(
            "<IIIIQQI4x",
            BOOT_MAGIC,
            self.version,
            int(self.mode),
            int(self.mte),
            self.ram_size,
            self.arg,
            self.seed,
        )

    def qemu_loader_args(self) -> list[str]:
        """``-device loader`` options that write the block before the first instruction.

        Words of 8 bytes where the field is 8 bytes wide, 4 otherwise; zero words are
        left out (QEMU's RAM starts zeroed).
        """
        data = self.to_bytes()
        widths = (4, 4, 4, 4, 8, 8, 4)
        args: list[str] = []
        offset = 0
        for width in widths:
            value = int.from_bytes(data[offset : offset + width], "little")
            if value:
                address = BOOT_CONFIG_ADDR + offset
                args += ["-device", f"loader,addr={address:#x},data={value:#x},data-len={width}"]
            offset += width
        return args
