"""Which backend runs: the real KVM where it can, the model otherwise, always said."""

from __future__ import annotations

import pytest

from tagvisor.cli.backend import linux_unavailable
from tagvisor.cli.errors import Exit
from tagvisor.cli.main import main

MISSING = linux_unavailable()
needs_no_real_kvm = pytest.mark.skipif(
    MISSING is None, reason="this host's /dev/kvm runs MTE guests: auto picks it"
)


@needs_no_real_kvm
def test_backend_linux_without_a_usable_kvm_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Scenario: `run heap --backend linux` on a host without an MTE-capable /dev/kvm
    (here: not arm64): exit 69, one line saying what is missing and to use the model,
    and the guest never boots."""
    assert main(["run", "heap", "--backend", "linux"]) == Exit.UNAVAILABLE
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert str(MISSING) in lines[0]
    assert "--backend model" in lines[0]


@needs_no_real_kvm
def test_auto_picks_the_model_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: plain `run heap` on such a host: stderr names the model, its MTE level
    and why the real KVM was not taken; the guest runs (exit 0)."""
    assert main(["run", "heap"]) == 0
    err = capsys.readouterr().err
    assert "backend: model, FEAT_MTE3" in err
    assert f"auto: the real KVM is not usable here, {MISSING}" in err


def test_the_model_host_offers_mte3_to_the_guest(capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: `run heap --backend model`: the guest's CPU report shows FEAT_MTE3, so
    `--tcf asymm` is asymmetric checking and not sync in disguise."""
    assert main(["run", "heap", "--backend", "model", "--tcf", "asymm"]) == 0
    out = capsys.readouterr().out
    assert "cpu: FEAT_MTE3" in out
    assert "tag checks asymm" in out
    assert "overflow caught asynchronously" in out
