"""The committed guest images (src/tagvisor/guests) are exactly what the sources build to,
and the Python mirror of the report ids matches the C header."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import guest_reports
from tests.support.cross import CROSS_CC, SETUP_HINT
from tests.support.guests import (
    BUILD_SCRIPT,
    GUEST_NAMES,
    GUESTS_DIR,
    IMAGE_BASE,
    ElfImage,
    prebuilt,
)

REPORTS_HEADER = GUESTS_DIR / "runtime" / "reports.h"


def build_copy(tmp: Path) -> Path:
    """Build the guests from a copy of the sources at another path; return the output."""
    if shutil.which(CROSS_CC) is None:
        pytest.fail(f"{CROSS_CC} not found: {SETUP_HINT}", pytrace=False)
    checkout = tmp / "elsewhere" / "checkout"
    shutil.copytree(
        GUESTS_DIR, checkout / "guests", ignore=shutil.ignore_patterns("build", "prebuilt")
    )
    (checkout / "scripts").mkdir()
    shutil.copy2(BUILD_SCRIPT, checkout / "scripts" / BUILD_SCRIPT.name)
    out = tmp / "out"
    done = subprocess.run(
        [str(checkout / "scripts" / BUILD_SCRIPT.name), "--out", str(out), "--no-prebuilt"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode:
        pytest.fail(f"scripts/build-guests failed:\n{done.stderr}", pytrace=False)
    assert not (checkout / "guests" / "prebuilt").exists()
    return out


def test_prebuilt_guests_are_what_the_sources_build_to(tmp_path: Path) -> None:
    """Scenario: scripts/build-guests run on a copy of guests/ in another directory.
    Every image it makes equals the committed src/tagvisor/guests one byte for byte: the
    build is reproducible and independent of where the checkout is, and nobody changed
    a guest without rebuilding (run scripts/build-guests and commit the result)."""
    out = build_copy(tmp_path)
    for name in GUEST_NAMES:
        rebuilt = (out / f"{name}.elf").read_bytes()
        assert rebuilt == prebuilt(name).read_bytes(), (
            f"src/tagvisor/guests/{name}.elf is stale: run scripts/build-guests"
        )
    assert {p.name for p in out.glob("*.elf")} == {f"{n}.elf" for n in GUEST_NAMES}


@pytest.mark.parametrize("name", GUEST_NAMES)
def test_guest_image_starts_at_the_abi_address_in_one_segment(name: str) -> None:
    """Scenario: a prebuilt guest ELF as a loader sees it. The entry point is
    0x4008_0000 and the image is one load segment starting there (text, data, the
    stage-1 table; bss, stack and arenas only in memory), inside the first 64 MiB of
    RAM."""
    image = ElfImage.read(prebuilt(name))
    assert image.entry == IMAGE_BASE
    assert len(image.segments) == 1
    base, data, memsz = image.segments[0]
    assert base == IMAGE_BASE
    assert 0 < len(data) <= memsz < 64 << 20


def test_report_ids_in_python_are_those_of_the_c_header() -> None:
    """Scenario: guests/runtime/reports.h and tests/support/guest_reports.py each name
    every report id. The two sets of names and values are the same."""
    header = {
        name: int(value, 16)
        for name, value in re.findall(
            r"^#define REPORT_(\w+) (0x[0-9a-fA-F]+)", REPORTS_HEADER.read_text(), re.M
        )
    }
    mirror = {
        name: value
        for name, value in vars(guest_reports).items()
        if name.isupper() and isinstance(value, int)
    }
    assert header == mirror
    assert len(set(header.values())) == len(header)
