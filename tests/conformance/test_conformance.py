"""The conformance suite: the model against the real kernel, field by field.

The model side runs in-process. The real side boots Debian's arm64 kernel in the
testbed (QEMU >= 8, virtualization=on,mte=on) and runs the same scenarios against its
/dev/kvm: about 12 s the first time (downloads, ~45 MB), 6 to 8 s after. Marked
``oracle`` like the other comparisons with an outside reference; like them it fails,
rather than skips, when a part is missing.
"""

from __future__ import annotations

from typing import Any

import pytest

from tagvisor.conformance.compare import compare, model_results
from tagvisor.conformance.scenarios import SCENARIOS
from tagvisor.testbed.boot import SuiteRun, run_suite
from tagvisor.testbed.errors import TestbedError


def test_the_model_runs_every_scenario_it_can() -> None:
    results = model_results("linux-6.1")
    expected = {entry.name for entry in SCENARIOS if "model" in entry.backends}
    assert set(results) == expected
    crashed = {name: r["exception"] for name, r in results.items() if "exception" in r}
    assert not crashed


def test_compare_lists_differing_fields_and_ignores_host_facts() -> None:
    model: dict[str, dict[str, Any]] = {"s": {"a": 0, "b": -22, "_host": 2}, "only_model": {}}
    real: dict[str, dict[str, Any]] = {"s": {"a": 0, "b": -14, "c": 1, "_host": 3}}
    found = {(d.scenario, d.field, d.model, d.real) for d in compare(model, real)}
    assert found == {("s", "b", -22, -14), ("s", "c", "<missing>", 1)}


@pytest.fixture(scope="module")
def bookworm() -> SuiteRun:
    try:
        return run_suite("tagvisor.conformance.suite", kernel_suite="release", say=print)
    except TestbedError as exc:
        problem = str(exc)
    pytest.fail(f"the testbed could not run: {problem}", pytrace=False)


@pytest.mark.oracle
def test_the_real_kernel_ran_the_whole_suite(bookworm: SuiteRun) -> None:
    assert bookworm.status == 0, bookworm.error
    assert bookworm.kernel.startswith("6.1.")
    assert any("Memory Tagging Extension" in line for line in bookworm.dmesg)
    real = bookworm.result["scenarios"]
    assert set(real) == {entry.name for entry in SCENARIOS if "linux" in entry.backends}
    crashed = {name: r["exception"] for name, r in real.items() if "exception" in r}
    assert not crashed


@pytest.mark.oracle
def test_model_linux_6_1_matches_bookworms_kernel(bookworm: SuiteRun) -> None:
    differences = compare(model_results("linux-6.1"), bookworm.result["scenarios"])
    assert not differences, "\n".join(map(str, differences))


@pytest.mark.oracle
def test_kvm_run_exits_decode_on_the_real_kernel(bookworm: SuiteRun) -> None:
    run = bookworm.result["scenarios"]["run_mmio_and_system_off"]
    assert run["init"] == 0
    assert [e["reason"] for e in run["exits"]] == ["MMIO", "MMIO", "MMIO", "SYSTEM_EVENT"]
    write, read, echoed, off = run["exits"]
    assert (write["addr"], write["write"], write["data"]) == (0x0900_0000, True, "41000000")
    assert (read["addr"], read["write"], read["len"]) == (0x0900_0018, False, 4)
    assert echoed["data"] == "78563412"  # the guest stored what set_mmio_read_data gave
    assert off["event"] == 1
