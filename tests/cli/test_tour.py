"""The `tagvisor` command and its tour."""

import json
import subprocess
import sys

import pytest

from tagvisor.cli.main import main


@pytest.mark.parametrize("mode", ["sync", "async", "asymm"])
def test_tour_catches_overflow_and_use_after_free_in_every_checking_mode(
    mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: `tagvisor tour --mode MODE --json`; both bugs are caught.

    In async mode the catch is the TFSRE0_EL1.TF0 flag, not a fault address.
    """
    assert main(["tour", "--mode", mode, "--json", "--quick"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overflow_caught"]
    assert report["use_after_free_caught"]
    if mode == "async":
        assert report["tfsr_tf0"]
        assert all(step["fault_address"] is None for step in report["steps"])


def test_tour_without_checking_misses_both_bugs(capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: TCF = none: the tags are there but mismatches have no effect."""
    main(["tour", "--mode", "none", "--json", "--quick"])
    report = json.loads(capsys.readouterr().out)
    assert not report["overflow_caught"]
    assert not report["use_after_free_caught"]


def test_sync_fault_names_the_overflowing_address(capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: the overflow writes a[32..39]; FAR is a + 32 with a's tag."""
    main(["tour", "--json", "--quick"])
    steps = json.loads(capsys.readouterr().out)["steps"]
    overflow = next(s for s in steps if s["action"].startswith("overflow"))
    assert overflow["fault_address"] == overflow["pointer"]
    assert overflow["pointer_tag"] != overflow["memory_tag"]


def test_human_output_says_what_was_caught(capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: plain `tagvisor tour` prints the steps and a verdict line."""
    main(["tour", "--quick"])
    out = capsys.readouterr().out
    assert "overflow: caught; use after free: caught" in out


def test_full_tour_catches_migrates_and_catches_again(capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: `tagvisor tour --json`: the A64 heap guest catches its use-after-free,
    is snapshotted, live-migrates to a second tagvisor process while running, arrives
    with equal memory and tags, and catches its overflow there; exit status 0."""
    assert main(["tour", "--json"]) == 0
    story = json.loads(capsys.readouterr().out)["guest"]
    steps = {step["step"]: step for step in story["steps"]}
    assert steps["use-after-free"]["caught"]
    assert steps["use-after-free"]["esr"] == "0x96000011"
    assert steps["migration"]["digests_equal"]
    assert steps["overflow at destination"]["caught"]
    assert steps["overflow at destination"]["esr"] == "0x96000051"
    assert story["ok"]


def test_installed_command_has_help_and_version() -> None:
    """Scenario: a user runs `tagvisor --help` and `tagvisor --version`."""
    run = [sys.executable, "-m", "tagvisor.cli.main"]
    help_text = subprocess.run([*run, "--help"], capture_output=True, text=True, check=True)
    assert "tagvisor tour" in help_text.stdout
    version = subprocess.run([*run, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("tagvisor 0.")


def test_unknown_mode_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: `tagvisor tour --mode fast` exits 2 and lists the valid modes."""
    assert main(["tour", "--mode", "fast"]) == 2
    assert "choose from" in capsys.readouterr().err


def test_the_full_tour_runs_the_mode_it_was_given(capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: `tagvisor tour --mode asymm --json` on the model's FEAT_MTE3 host: the
    use-after-free (a read) is a synchronous fault, the overflow (a write) only sets
    TFSR_EL1 at the destination: asymm, not sync."""
    assert main(["tour", "--mode", "asymm", "--json"]) == 0
    steps = {s["step"]: s for s in json.loads(capsys.readouterr().out)["guest"]["steps"]}
    assert steps["use-after-free"]["esr"] == "0x96000011"
    assert steps["overflow at destination"]["caught"]
    assert steps["overflow at destination"]["esr"] == "0x0"


def test_the_full_tour_without_checking_misses_both_bugs_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Scenario: `tagvisor tour --mode none --json`: the guest runs with TCF none,
    neither bug is caught on either side, the tags still travel whole; exit 0."""
    assert main(["tour", "--mode", "none", "--json"]) == 0
    story = json.loads(capsys.readouterr().out)["guest"]
    steps = {s["step"]: s for s in story["steps"]}
    assert not steps["use-after-free"]["caught"]
    assert not steps["overflow at destination"]["caught"]
    assert steps["migration"]["digests_equal"]


def test_the_snapshot_step_shows_the_tags_the_file_holds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Scenario: the tour's snapshot: the tags it shows for the heap's blocks a, b, c
    come from the file: freed a's four granules share a tag unlike the pointer's it
    was read through, and each block's tag differs from its neighbour's."""
    assert main(["tour", "--json"]) == 0
    steps = {s["step"]: s for s in json.loads(capsys.readouterr().out)["guest"]["steps"]}
    tags = steps["snapshot"]["heap_tags"]
    a, b, c = tags[0:4], tags[4:8], tags[8:12]
    assert len(set(a)) == len(set(b)) == len(set(c)) == 1
    pointer_tag = int(steps["use-after-free"]["pointer"], 16) >> 56 & 0xF
    assert a[0] != pointer_tag
    assert a[0] != b[0] != c[0]
