"""The testbed's parts, downloaded once and cached under ``.cache/testbed``.

Everything comes from Debian's archive and PyPI through their ordinary clients:

* Debian's arm64 kernel: the versioned package the metapackage ``linux-image-arm64``
  depends on (security updates replace it, so the name is resolved each time the
  package lists are refreshed), of which only ``boot/vmlinuz-*`` is kept. It is a plain
  arm64 ``Image`` with ``CONFIG_KVM=y`` and ``CONFIG_ARM64_MTE=y`` built in.
* The arm64 userland for the initramfs (:data:`USERLAND`), unpacked with ``dpkg -x``.
* NumPy and crc32c for aarch64 as manylinux wheels (``pip download --platform ...``).
* ``qemu-system-aarch64`` >= 8 from ``scripts/fetch-qemu`` (Debian 12's 7.2 has QEMU
  issue #1416: tags of a page's granules alias).

apt runs with a private configuration (its own source list, lists and cache
directories, ``APT::Architectures=arm64``), like scripts/fetch-qemu: the machine's apt
setup is neither read for packages nor changed, and no root is needed for this part.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tagvisor.testbed.errors import TestbedError

REPO: Final = Path(__file__).resolve().parents[3]

#: arm64 packages the initramfs is made of (busybox for /init, Python, NumPy's runtime).
USERLAND: Final = (
    "busybox-static",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    # NumPy's manylinux wheel links these two system libraries (the policy's allow-list).
    "libgcc-s1",
    "libstdc++6",
)

#: Kernel suites the testbed knows: the release itself (bookworm: 6.1) and its
#: backports (6.12).
KERNEL_SUITES: Final = ("release", "backports")

#: Wheels for aarch64 (manylinux2014, CPython 3.11): NumPy for the VMM, crc32c for
#: snapshots and migration streams, fdt (pure Python) for Linux guests' device trees.
WHEELS: Final = ("numpy>=1.26,<2.3", "crc32c>=2.4,<3", "fdt>=0.3.3,<0.4")


def cache_root() -> Path:
    """Where the testbed caches what it downloads and builds: ``$TAGVISOR_TESTBED_CACHE``, else
    ``.cache/testbed`` in the repository."""
    override = os.environ.get("TAGVISOR_TESTBED_CACHE")
    return Path(override) if override else REPO / ".cache" / "testbed"


def _run(args: list[str], what: str, *, cwd: Path | None = None, log: Path | None = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise TestbedError(f"{what}: {args[0]} not found ({exc})") from None
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise TestbedError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def _codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        text = ""
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.MULTILINE)
    return match.group(1) if match else "bookworm"


def _source_uris() -> list[tuple[str, list[str]]]:
    """(URI, suites) pairs from the machine's apt sources (deb822 and one-line)."""
    pairs: list[tuple[str, list[str]]] = []
    sources = Path("/etc/apt/sources.list.d")
    for file in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", file.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.lstrip().startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("uris"):
                pairs.append((fields["uris"].split()[0], fields.get("suites", "").split()))
    lists = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]
    for file in lists:
        if not file.is_file():
            continue
        for raw in file.read_text().splitlines():
            line = re.sub(r"\[[^]]*\]", "", raw.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                pairs.append((line[1], [line[2]]))
    return pairs


@dataclass(frozen=True)
class Mirrors:
    """The Debian archive and security URIs to fetch arm64 packages from, for the host's release
    ``codename``."""

    codename: str
    archive: str
    security: str | None


def mirrors() -> Mirrors:
    """The Debian archive URIs the machine already uses (or TAGVISOR_DEBIAN_MIRROR)."""
    codename = _codename()
    pairs = _source_uris()
    archive = os.environ.get("TAGVISOR_DEBIAN_MIRROR") or next(
        (uri for uri, suites in pairs if codename in suites), None
    )
    if not archive:
        raise TestbedError(
            f"no Debian archive URI for {codename!r} in /etc/apt/sources.list(.d); "
            "set TAGVISOR_DEBIAN_MIRROR (e.g. http://deb.debian.org/debian)"
        )
    security = os.environ.get("TAGVISOR_DEBIAN_SECURITY_MIRROR") or next(
        (uri for uri, suites in pairs if f"{codename}-security" in suites), None
    )
    return Mirrors(codename, archive, security)


class Apt:
    """apt-get / apt-cache for arm64 with a private configuration under ``root``."""

    def __init__(self, root: Path, suite: str) -> None:
        self.root = root
        self.suite = suite
        self.mirrors = mirrors()
        codename = self.mirrors.codename
        self.dist = codename if suite == "release" else f"{codename}-{suite}"
        keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
        signed = f"[arch=arm64 signed-by={keyring}] " if keyring.is_file() else "[arch=arm64] "
        lines = [f"deb {signed}{self.mirrors.archive} {codename} main"]
        lines.append(f"deb {signed}{self.mirrors.archive} {codename}-updates main")
        if self.mirrors.security:
            lines.append(f"deb {signed}{self.mirrors.security} {codename}-security main")
        if suite != "release":
            lines.append(f"deb {signed}{self.mirrors.archive} {self.dist} main")
        for sub in ("lists/partial", "cache/archives/partial", "empty", "debs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.source_list = root / "sources.list"
        self.source_list.write_text("\n".join(lines) + "\n")
        self.options = [
            "-o", f"Dir::Etc::SourceList={self.source_list}",
            "-o", f"Dir::Etc::SourceParts={root / 'empty'}",
            "-o", f"Dir::State::Lists={root / 'lists'}",
            "-o", f"Dir::State::status={root / 'empty' / 'status'}",
            "-o", f"Dir::Cache={root / 'cache'}",
            "-o", f"Dir::Cache::archives={root / 'cache' / 'archives'}",
            "-o", "APT::Architecture=arm64",
            "-o", "APT::Architectures::=arm64",
            "-o", "APT::Sandbox::User=root",
            "-o", "Acquire::Languages=none",
            "-o", "APT::Get::List-Cleanup=false",
            "-q",
        ]  # fmt: skip
        (root / "empty" / "status").touch()

    def update(self) -> None:
        """Fetch the arm64 package lists for the suite (apt-get update; its output goes to
        ``update.log``)."""
        what = f"apt-get update for arm64 ({self.dist} at {self.mirrors.archive})"
        _run(["apt-get", *self.options, "update"], what, log=self.root / "update.log")

    def candidate(self, package: str) -> str:
        """The version apt would install of the arm64 ``package`` (TestbedError if the suite has
        none)."""
        out = _run(["apt-cache", *self.options, "policy", package], f"apt-cache policy {package}")
        match = re.search(r"Candidate:\s*(\S+)", out)
        if not match or match.group(1) == "(none)":
            raise TestbedError(f"{package} (arm64) is not in {self.dist}")
        return match.group(1)

    def kernel_package(self) -> str:
        """The versioned package linux-image-arm64 depends on (in the chosen suite)."""
        meta = "linux-image-arm64"
        if self.suite != "release":
            meta = f"{meta}/{self.dist}"
        out = _run(["apt-cache", *self.options, "depends", meta], f"apt-cache depends {meta}")
        for line in out.splitlines():
            match = re.match(r"\s*Depends:\s*(linux-image-[0-9][^\s:]*)", line)
            if match:
                return match.group(1)
        raise TestbedError(f"{meta} names no linux-image-<version> package:\n{out}")

    def download(self, package: str, version: str | None = None) -> Path:
        """The .deb of ``package`` (cached by name and version)."""
        version = version or self.candidate(package)
        debs = self.root / "debs"
        stem = f"{package}_{version.replace(':', '%3a')}_"
        for deb in debs.glob(f"{stem}*.deb"):
            return deb
        _run(
            ["apt-get", *self.options, "download", f"{package}:arm64={version}"],
            f"apt-get download {package}:arm64={version}",
            cwd=debs,
        )
        found = sorted(debs.glob(f"{stem}*.deb"))
        if not found:
            raise TestbedError(f"apt-get download left no {stem}*.deb in {debs}")
        return found[0]


@dataclass(frozen=True)
class Parts:
    """What a testbed boot needs, all local files."""

    qemu: Path
    kernel: Path
    kernel_package: str
    userland: Path  # unpacked tree (dpkg -x of USERLAND, NumPy in /opt/site)
    userland_id: str  # package versions: the base image is rebuilt when they change


def qemu_binary() -> Path:
    """qemu-system-aarch64 >= 8: TAGVISOR_QEMU_SYSTEM, or scripts/fetch-qemu's."""
    override = os.environ.get("TAGVISOR_QEMU_SYSTEM")
    if override:
        return Path(override)
    cached = REPO / ".cache" / "qemu" / "bin" / "qemu-system-aarch64"
    if cached.is_file():
        return cached
    script = REPO / "scripts" / "fetch-qemu"
    if not script.is_file():
        raise TestbedError(
            f"no qemu-system-aarch64 at {cached} and no {script}: set TAGVISOR_QEMU_SYSTEM "
            "to a QEMU >= 8 (Debian 12's 7.2 mis-emulates MTE, QEMU issue #1416)"
        )
    out = _run([str(script)], "scripts/fetch-qemu (QEMU >= 8 from bookworm-backports)")
    return Path(out.strip().splitlines()[-1])


def _extract_kernel(deb: Path, dest: Path) -> Path:
    """Only boot/vmlinuz-* of the kernel package (its modules are not needed)."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if name.startswith("boot/vmlinuz-") and member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    tmp = dest.with_suffix(".tmp")
                    with tmp.open("wb") as out:
                        shutil.copyfileobj(source, out)
                    tmp.replace(dest)
                    p.stdout.close()
                    p.kill()
                    return dest
    raise TestbedError(f"{deb.name} has no boot/vmlinuz-*")


def _wheel(requirement: str, dest: Path) -> Path:
    """The cached aarch64 wheel of ``requirement`` (downloaded with pip if missing)."""
    dest.mkdir(parents=True, exist_ok=True)
    project = re.split(r"[<>=!~ ]", requirement, maxsplit=1)[0]
    found = sorted(dest.glob(f"{project}-*.whl"))
    if found:
        return found[-1]
    _run(
        [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "--platform", "manylinux2014_aarch64",
            "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
            "--dest", str(dest), requirement,
        ],
        f"pip download of {project} for aarch64 (manylinux2014_aarch64, cp311)",
    )  # fmt: skip
    found = sorted(dest.glob(f"{project}-*.whl"))
    if not found:
        raise TestbedError(f"pip download left no {project} wheel in {dest}")
    return found[-1]


def _unpack_userland(debs: list[Path], wheels: list[Path], tree: Path) -> None:
    tmp = tree.with_name(tree.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"dpkg-deb -x {deb.name}")
    for junk in ("usr/share/doc", "usr/share/man", "usr/share/lintian", "usr/share/locale"):
        shutil.rmtree(tmp / junk, ignore_errors=True)
    site = tmp / "opt" / "site"
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    for tests in site.glob("numpy/**/tests"):
        shutil.rmtree(tests, ignore_errors=True)
    # Debian ships no .pyc (its postinst compiles them); under TCG compiling the
    # standard library at every boot would cost seconds. Bytecode is the same on every
    # CPU for one Python minor version, so the host's 3.11 compiles it, with hashes
    # instead of timestamps (the archive's mtimes do not matter then).
    if sys.version_info[:2] == (3, 11):
        for path in (tmp / "usr" / "lib" / "python3.11", site):
            subprocess.run(
                [
                    sys.executable, "-m", "compileall", "-q", "-j", "0",
                    "--invalidation-mode", "unchecked-hash",
                    "-s", str(tmp), "-p", "/", str(path),
                ],
                capture_output=True, check=False,
            )  # fmt: skip
    shutil.rmtree(tree, ignore_errors=True)
    tmp.replace(tree)


def fetch(suite: str = "release", *, refresh: bool = False, say: object = print) -> Parts:
    """Every part, downloading what the cache lacks. ``refresh`` re-reads apt's lists."""
    if suite not in KERNEL_SUITES:
        raise TestbedError(f"kernel suite {suite!r}: choose one of {', '.join(KERNEL_SUITES)}")
    log = say if callable(say) else print
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    stamp_file = root / f"parts-{suite}.json"
    if stamp_file.is_file() and not refresh:
        stamp = json.loads(stamp_file.read_text())
        parts = Parts(
            qemu=qemu_binary(),
            kernel=Path(stamp["kernel"]),
            kernel_package=stamp["kernel_package"],
            userland=Path(stamp["userland"]),
            userland_id=stamp["userland_id"],
        )
        same_set = stamp.get("packages") == list(USERLAND) and stamp.get("wheels") == list(WHEELS)
        if same_set and parts.kernel.is_file() and parts.userland.is_dir():
            return parts
    apt = Apt(root / "apt", suite)
    log(f"testbed: reading arm64 package lists ({apt.dist}) from {apt.mirrors.archive}")
    apt.update()
    kernel_package = apt.kernel_package()
    kernel = root / f"{kernel_package}.Image"
    if not kernel.is_file():
        log(f"testbed: downloading {kernel_package} (arm64)")
        _extract_kernel(apt.download(kernel_package), kernel)
    versions = {name: apt.candidate(name) for name in USERLAND}
    debs = []
    for name, version in versions.items():
        debs.append(apt.download(name, version))
    wheels = [_wheel(requirement, root / "wheels") for requirement in WHEELS]
    userland_id = ",".join([*(f"{n}={v}" for n, v in versions.items()), *(w.name for w in wheels)])
    tree = root / "userland"
    marker = tree / ".tagvisor-userland"
    if not marker.is_file() or marker.read_text() != userland_id:
        log("testbed: unpacking the arm64 userland")
        _unpack_userland(debs, wheels, tree)
        marker.write_text(userland_id)
    parts = Parts(qemu_binary(), kernel, kernel_package, tree, userland_id)
    stamp_file.write_text(
        json.dumps(
            {
                "kernel": str(kernel),
                "kernel_package": kernel_package,
                "userland": str(tree),
                "userland_id": userland_id,
                "packages": list(USERLAND),
                "wheels": list(WHEELS),
            }
        )
    )
    return parts
