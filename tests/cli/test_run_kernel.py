"""`tagvisor run --kernel`: a Linux guest needs a real KVM; the model refuses at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tagvisor.cli.main import main
from tests.vmm.linux.images import image

needs_no_arm64_kvm = pytest.mark.skipif(
    os.uname().machine == "aarch64" and os.path.exists("/dev/kvm"),
    reason="on an arm64 host with /dev/kvm the kernel would really boot",
)


@needs_no_arm64_kvm
def test_on_the_model_a_kernel_is_refused_naming_what_the_model_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: `tagvisor run --kernel Image` where there is no arm64 /dev/kvm: the
    model is chosen and the command fails at once with 69 (a backend that is not
    there), naming the GIC, the arch timer and FP/SIMD."""
    kernel = tmp_path / "Image"
    kernel.write_bytes(image())
    code = main(["run", "--kernel", str(kernel), "--mem", "64M"])
    err = capsys.readouterr().err
    assert code == 69
    assert "no interrupt controller, no arch timer and no FP/SIMD" in err


def test_a_file_that_is_no_kernel_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: --kernel names an ELF file (status 1, the kernel could not be used)
    and then a missing file (66, as for any missing input); each message says why."""
    elf = tmp_path / "vmlinux"
    elf.write_bytes(b"\x7fELF" + bytes(200))
    assert main(["run", "--kernel", str(elf), "--backend", "model"]) == 1
    assert "an ELF file" in capsys.readouterr().err
    assert main(["run", "--kernel", str(tmp_path / "missing")]) == 66
    assert "no kernel at" in capsys.readouterr().err


def test_run_without_a_guest_or_a_kernel_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Scenario: `tagvisor run` with neither: status 2, naming --kernel."""
    assert main(["run"]) == 2
    assert "--kernel" in capsys.readouterr().err


def test_a_served_linux_guest_on_the_model_is_refused_before_any_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: --kernel with --api-socket on the model: Linux guests are served like
    any other now, so the refusal is the model's (69, no GIC), and no socket is left."""
    kernel = tmp_path / "Image"
    kernel.write_bytes(image(text_offset=0x80000, image_size=4 << 20))
    sock = tmp_path / "vm.sock"
    args = ["run", "--kernel", str(kernel), "--backend", "model", "--api-socket", str(sock)]
    assert main(args) == 69
    assert "no in-kernel GIC" in capsys.readouterr().err
    assert not sock.exists()
