"""The testbed's kernels by name, and how a trixie kernel package is taken apart (no QEMU,
no network: apt's answers are the ones trixie-backports gave on 2026-12-02)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tagvisor.conformance.compare import profile_for
from tagvisor.testbed import parts
from tagvisor.testbed.errors import TestbedError

TRIXIE_IMAGE = """linux-image-7.3.4+deb13-arm64
  PreDepends: linux-base
 |Depends: dracut
  Depends: <linux-initramfs-tool>
    dracut
  Depends: linux-base-7.3.4+deb13-arm64
  Depends: linux-binary-7.3.4+deb13-arm64
  Depends: linux-modules-7.3.4+deb13-arm64
  Breaks: flash-kernel
"""
TRIXIE_META = """linux-image-arm64
  Depends: linux-base-arm64
  Depends: linux-image-7.3.4+deb13-arm64
  Depends: linux-modules-arm64
"""
BOOKWORM_META = """linux-image-arm64
  Depends: linux-image-6.1.0-57-arm64
"""
BOOKWORM_IMAGE = """linux-image-6.1.0-57-arm64
  PreDepends: kmod
  Depends: initramfs-tools
"""


@pytest.mark.parametrize(
    ("name", "dist", "profile"),
    [
        ("6.1", "bookworm", "linux-6.1"),
        ("release", "bookworm", "linux-6.1"),
        ("6.12", "bookworm-backports", "linux-6.12"),
        ("backports", "bookworm-backports", "linux-6.12"),
        ("7.3", "trixie-backports", "linux-7.3"),
    ],
)
def test_kernels_are_named_by_version_and_the_old_names_still_work(
    name: str, dist: str, profile: str
) -> None:
    """Scenario: --kernel 7.3 is trixie-backports' kernel compared with linux-7.3;
    release and backports stay what they were (6.1, 6.12)."""
    assert parts.kernel_named(name).dist == dist
    assert profile_for(name) == profile


def test_an_unknown_kernel_name_says_which_exist() -> None:
    with pytest.raises(TestbedError, match=r"choose one of 6\.1, 6\.12, 7\.3"):
        parts.kernel_named("7.4")


def _apt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, answers: dict[str, str]
) -> parts.Apt:
    """An Apt for kernel ``name`` whose apt-cache answers ``answers`` (by its last argument)."""
    monkeypatch.setattr(
        parts, "_source_uris", lambda: [("http://deb.example/debian", ["bookworm"])]
    )
    monkeypatch.setattr(parts, "_codename", lambda: "bookworm")

    def run(args: list[str], what: str, **_: object) -> str:
        return answers[args[-1]]

    monkeypatch.setattr(parts, "_run", run)
    return parts.Apt(tmp_path, parts.kernel_named(name))


def test_trixie_kernel_comes_from_linux_binary_and_its_modules_apart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Scenario: trixie's linux-image-7.3.4+deb13-arm64 only depends on the packages
    that hold the Image and the modules; bookworm's holds both itself. The list names
    trixie and trixie-backports at the archive the bookworm host already uses."""
    apt = _apt(
        monkeypatch,
        tmp_path,
        "7.3",
        {
            "linux-image-arm64/trixie-backports": TRIXIE_META,
            "linux-image-7.3.4+deb13-arm64": TRIXIE_IMAGE,
        },
    )
    assert apt.kernel_packages() == (
        "linux-image-7.3.4+deb13-arm64",
        "linux-binary-7.3.4+deb13-arm64",
        "linux-modules-7.3.4+deb13-arm64",
    )
    listed = apt.source_list.read_text()
    assert "http://deb.example/debian trixie main" in listed
    assert "http://deb.example/debian trixie-backports main" in listed
    assert "bookworm" not in listed
    old = _apt(
        monkeypatch,
        tmp_path,
        "6.1",
        {"linux-image-arm64": BOOKWORM_META, "linux-image-6.1.0-57-arm64": BOOKWORM_IMAGE},
    )
    assert old.kernel_packages() == ("linux-image-6.1.0-57-arm64",) * 3


def _deb(tmp_path: Path, members: dict[str, bytes]) -> Path:
    """A .deb with ``members`` in its data archive (dpkg-deb --build of a tree)."""
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: k\nVersion: 1\nArchitecture: arm64\nMaintainer: t <t@t>\nDescription: t\n"
    )
    for name, data in members.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    deb = tmp_path / "k.deb"
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "--build", str(tree), str(deb)], check=True, capture_output=True
    )
    return deb


@pytest.mark.parametrize(
    "path", ["usr/lib/modules/7.3.4+deb13-arm64/vmlinuz", "boot/vmlinuz-6.1.0-57-arm64"]
)
def test_the_image_is_found_where_either_release_puts_it(tmp_path: Path, path: str) -> None:
    """Scenario: trixie's linux-binary keeps vmlinuz under usr/lib/modules/<version>/,
    bookworm's linux-image under boot/; a System.map beside it is not taken."""
    deb = _deb(tmp_path, {"usr/lib/modules/x/System.map": b"map", path: b"ARMd image"})
    out = parts._extract_kernel(deb, tmp_path / "Image")
    assert out.read_bytes() == b"ARMd image"


def test_a_package_without_an_image_is_refused(tmp_path: Path) -> None:
    deb = _deb(tmp_path, {"usr/lib/modules/x/vmlinuz.sig": b"sig"})
    with pytest.raises(TestbedError, match="has no boot/vmlinuz"):
        parts._extract_kernel(deb, tmp_path / "Image")
