"""The testbed's parts, downloaded once and cached under ``.cache/testbed``.

Everything comes from Debian's archive and PyPI through their ordinary clients:

* Debian's arm64 kernel (:data:`KERNELS`: bookworm's 6.1, bookworm-backports' 6.12,
  trixie-backports' 7.3): the versioned package the metapackage ``linux-image-arm64``
  depends on (security updates replace it, so the name is resolved each time the
  package lists are refreshed), of which only the ``vmlinuz`` is kept. It is a plain
  arm64 ``Image`` with ``CONFIG_KVM=y`` and ``CONFIG_ARM64_MTE=y`` built in. From trixie
  on, ``linux-image-<version>`` is a small package that depends on
  ``linux-binary-<version>`` (``usr/lib/modules/<version>/vmlinuz``) and
  ``linux-modules-<version>``; the modules are fetched only when a run needs them.
* The arm64 userland for the initramfs (:data:`USERLAND`, bookworm's for every
  kernel), unpacked with ``dpkg -x``.
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
from collections.abc import Callable
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

#: The Debian release whose userland the image is made of (Python 3.11: the host's
#: bytecode fits it).
USERLAND_CODENAME: Final = "bookworm"


@dataclass(frozen=True)
class KernelChoice:
    """A kernel the testbed can boot: its Linux version and the Debian suite holding it."""

    name: str
    codename: str
    pocket: str | None  # "backports", or None for the release itself

    @property
    def dist(self) -> str:
        """The apt suite (``bookworm``, ``trixie-backports``, ...)."""
        return self.codename if self.pocket is None else f"{self.codename}-{self.pocket}"


#: Kernels by their Linux version (what ``tagvisor testbed --kernel`` takes).
KERNELS: Final = {
    "6.1": KernelChoice("6.1", "bookworm", None),
    "6.12": KernelChoice("6.12", "bookworm", "backports"),
    "7.3": KernelChoice("7.3", "trixie", "backports"),
}
#: The names the testbed used before it knew more than bookworm's two kernels.
KERNEL_ALIASES: Final = {"release": "6.1", "backports": "6.12"}
#: Every name ``--kernel`` accepts.
KERNEL_SUITES: Final = (*KERNELS, *KERNEL_ALIASES)


def kernel_named(name: str) -> KernelChoice:
    """The kernel called ``name`` (``6.1``, ``6.12``, ``7.3``; ``release`` and ``backports``
    are 6.1 and 6.12)."""
    choice = KERNELS.get(KERNEL_ALIASES.get(name, name))
    if choice is None:
        raise TestbedError(f"kernel {name!r}: choose one of {', '.join(KERNEL_SUITES)}")
    return choice


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
    """The Debian archive and security URIs to fetch arm64 packages of release ``codename``
    from."""

    codename: str
    archive: str
    security: str | None


def mirrors(codename: str | None = None) -> Mirrors:
    """The Debian archive URIs the machine already uses (or TAGVISOR_DEBIAN_MIRROR), for
    ``codename`` (the host's release by default).

    One archive serves every release, so a release the machine's sources do not name
    (trixie on a bookworm host) comes from the URI that serves the host's.
    """
    host = _codename()
    codename = codename or host
    pairs = _source_uris()

    def serving(suite: str) -> str | None:
        for wanted in (suite.replace(host, codename, 1), suite):
            found = next((uri for uri, suites in pairs if wanted in suites), None)
            if found:
                return found
        return None

    archive = os.environ.get("TAGVISOR_DEBIAN_MIRROR") or serving(host)
    if not archive:
        raise TestbedError(
            f"no Debian archive URI for {host!r} in /etc/apt/sources.list(.d); "
            "set TAGVISOR_DEBIAN_MIRROR (e.g. http://deb.debian.org/debian)"
        )
    security = os.environ.get("TAGVISOR_DEBIAN_SECURITY_MIRROR") or serving(f"{host}-security")
    return Mirrors(codename, archive, security)


class Apt:
    """apt-get / apt-cache for arm64 with a private configuration under ``root``: the
    release of ``choice`` (with its updates and security) and, for a backports kernel,
    its backports."""

    def __init__(self, root: Path, choice: KernelChoice) -> None:
        self.root = root
        self.choice = choice
        self.mirrors = mirrors(choice.codename)
        codename = choice.codename
        self.dist = choice.dist
        keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
        signed = f"[arch=arm64 signed-by={keyring}] " if keyring.is_file() else "[arch=arm64] "
        lines = [f"deb {signed}{self.mirrors.archive} {codename} main"]
        lines.append(f"deb {signed}{self.mirrors.archive} {codename}-updates main")
        if self.mirrors.security:
            lines.append(f"deb {signed}{self.mirrors.security} {codename}-security main")
        if choice.pocket is not None:
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

    def _depends(self, package: str) -> list[str]:
        out = _run(["apt-cache", *self.options, "depends", package], f"apt-cache depends {package}")
        return re.findall(r"^\s*Depends:\s*([^\s:<>|]+)", out, re.MULTILINE)

    def kernel_packages(self) -> tuple[str, str, str]:
        """The versioned package linux-image-arm64 depends on in the chosen suite, the one
        that holds its ``vmlinuz`` and the one that holds its modules.

        Up to bookworm all three are ``linux-image-<version>``; trixie's is a small
        package depending on ``linux-binary-<version>`` and ``linux-modules-<version>``.
        """
        meta = "linux-image-arm64"
        if self.choice.pocket is not None:
            meta = f"{meta}/{self.dist}"
        image = next((p for p in self._depends(meta) if re.match(r"linux-image-[0-9]", p)), None)
        if image is None:
            raise TestbedError(f"{meta} names no linux-image-<version> package in {self.dist}")
        version = image.removeprefix("linux-image-")
        parts = self._depends(image)
        binary = f"linux-binary-{version}"
        modules = f"linux-modules-{version}"
        return image, binary if binary in parts else image, modules if modules in parts else image

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
    #: The kernel's name in :data:`KERNELS` (``6.1``, ``6.12``, ``7.3``).
    kernel_name: str = "6.1"
    #: The package that holds the kernel's modules (fetched by :func:`modules_deb`).
    modules_package: str = ""


def fetched_qemu() -> Path:
    """Where scripts/fetch-qemu puts its qemu-system-aarch64: under TAGVISOR_QEMU_CACHE
    (shared between checkouts) if set, else under the checkout's .cache/qemu, as the
    script decides."""
    root = os.environ.get("TAGVISOR_QEMU_CACHE") or REPO / ".cache" / "qemu"
    return Path(root) / "bin" / "qemu-system-aarch64"


def qemu_binary() -> Path:
    """qemu-system-aarch64 >= 8: TAGVISOR_QEMU_SYSTEM, or scripts/fetch-qemu's."""
    override = os.environ.get("TAGVISOR_QEMU_SYSTEM")
    if override:
        return Path(override)
    cached = fetched_qemu()
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


def _is_vmlinuz(name: str) -> bool:
    # bookworm: boot/vmlinuz-<version>; trixie's linux-binary: usr/lib/modules/<version>/vmlinuz
    return (
        name.startswith("boot/vmlinuz-")
        or re.fullmatch(r"usr/lib/modules/[^/]+/vmlinuz", name) is not None
    )


def _extract_kernel(deb: Path, dest: Path) -> Path:
    """Only the vmlinuz of the kernel package (its modules are not needed to boot)."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if _is_vmlinuz(name) and member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    tmp = dest.with_suffix(".tmp")
                    with tmp.open("wb") as out:
                        shutil.copyfileobj(source, out)
                    tmp.replace(dest)
                    p.stdout.close()
                    p.kill()
                    return dest
    raise TestbedError(f"{deb.name} has no boot/vmlinuz-* nor usr/lib/modules/*/vmlinuz")


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


def _apt_root(choice: KernelChoice) -> Path:
    """Each release's apt lists live apart: bookworm's (``apt``, the userland's too) are
    not rewritten by a trixie kernel's."""
    base = cache_root()
    return base / "apt" if choice.codename == USERLAND_CODENAME else base / f"apt-{choice.codename}"


def _cached(stamp_file: Path) -> Parts | None:
    """The parts a previous fetch recorded, if they are all still there and current."""
    if not stamp_file.is_file():
        return None
    stamp = json.loads(stamp_file.read_text())
    if stamp.get("packages") != list(USERLAND) or stamp.get("wheels") != list(WHEELS):
        return None
    if "kernel_name" not in stamp:  # written before the testbed knew 7.3
        return None
    parts = Parts(
        qemu=qemu_binary(),
        kernel=Path(stamp["kernel"]),
        kernel_package=stamp["kernel_package"],
        userland=Path(stamp["userland"]),
        userland_id=stamp["userland_id"],
        kernel_name=stamp["kernel_name"],
        modules_package=stamp["modules_package"],
    )
    return parts if parts.kernel.is_file() and parts.userland.is_dir() else None


def _fetch_kernel(choice: KernelChoice, log: Callable[[str], None]) -> tuple[Path, str, str]:
    """The kernel's Image (downloaded if missing), its package and its modules' package."""
    apt = Apt(_apt_root(choice), choice)
    log(f"testbed: reading arm64 package lists ({apt.dist}) from {apt.mirrors.archive}")
    apt.update()
    image, binary, modules = apt.kernel_packages()
    kernel = cache_root() / f"{image}.Image"
    if not kernel.is_file():
        log(f"testbed: downloading {binary} (arm64)")
        _extract_kernel(apt.download(binary), kernel)
    return kernel, image, modules


def _fetch_userland(apt: Apt, log: Callable[[str], None]) -> tuple[Path, str]:
    """The unpacked userland tree (rebuilt when a package or wheel changed) and its id."""
    versions = {name: apt.candidate(name) for name in USERLAND}
    debs = [apt.download(name, version) for name, version in versions.items()]
    root = cache_root()
    wheels = [_wheel(requirement, root / "wheels") for requirement in WHEELS]
    userland_id = ",".join([*(f"{n}={v}" for n, v in versions.items()), *(w.name for w in wheels)])
    tree = root / "userland"
    marker = tree / ".tagvisor-userland"
    if not marker.is_file() or marker.read_text() != userland_id:
        log("testbed: unpacking the arm64 userland")
        _unpack_userland(debs, wheels, tree)
        marker.write_text(userland_id)
    return tree, userland_id


def fetch(suite: str = "6.1", *, refresh: bool = False, say: object = print) -> Parts:
    """Every part for the kernel called ``suite`` (see :func:`kernel_named`), downloading
    what the cache lacks. ``refresh`` re-reads apt's lists."""
    choice = kernel_named(suite)
    log: Callable[[str], None] = say if callable(say) else print
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    stamp_file = root / f"parts-{choice.name}.json"
    cached = None if refresh else _cached(stamp_file)
    if cached is not None:
        return cached
    kernel, kernel_package, modules_package = _fetch_kernel(choice, log)
    # The userland is bookworm's whatever the kernel: its release alone, no backports.
    userland_apt = Apt(root / "apt", KernelChoice("userland", USERLAND_CODENAME, None))
    if choice.codename != USERLAND_CODENAME:  # else _fetch_kernel has just read its lists
        userland_apt.update()
    tree, userland_id = _fetch_userland(userland_apt, log)
    parts = Parts(
        qemu_binary(), kernel, kernel_package, tree, userland_id, choice.name, modules_package
    )
    stamp = {
        "kernel": str(kernel),
        "kernel_package": kernel_package,
        "kernel_name": choice.name,
        "modules_package": modules_package,
        "userland": str(tree),
        "userland_id": userland_id,
        "packages": list(USERLAND),
        "wheels": list(WHEELS),
    }
    stamp_file.write_text(json.dumps(stamp))
    return parts


def modules_deb(parts: Parts) -> Path:
    """The .deb that holds ``parts``' kernel modules, downloaded the first time a run needs
    them (trixie's ``linux-modules-*`` is 86 MB that a run without a network never reads)."""
    choice = kernel_named(parts.kernel_name)
    root = _apt_root(choice)
    found = sorted((root / "debs").glob(f"{parts.modules_package}_*.deb"))
    if found:
        return found[-1]
    return Apt(root, choice).download(parts.modules_package)
