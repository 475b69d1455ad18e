"""The conformance suite: the model against the real kernel, field by field.

The model side runs in-process. The real side boots Debian's arm64 kernel in the
testbed (QEMU >= 8, virtualization=on,mte=on) and runs the same scenarios against its
/dev/kvm: about 12 s the first time (downloads, ~45 MB), 6 to 8 s after. Marked
``oracle`` like the other comparisons with an outside reference; like them it fails,
rather than skips, when a part is missing.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest

from tagvisor.conformance.compare import compare, model_results
from tagvisor.conformance.scenarios import SCENARIOS
from tagvisor.testbed.boot import SuiteRun, run_suite
from tests.support.testbed import run_or_fail


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


def _suite_on(kernel_suite: str) -> SuiteRun:
    return run_or_fail(
        lambda: run_suite("tagvisor.conformance.suite", kernel_suite=kernel_suite, say=print)
    )


@pytest.fixture(scope="module")
def bookworm() -> SuiteRun:
    return _suite_on("release")


@pytest.fixture(scope="module")
def backports() -> SuiteRun:
    return _suite_on("backports")


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


@pytest.mark.oracle
def test_model_linux_6_12_matches_the_backports_kernel(backports: SuiteRun) -> None:
    """Scenario: the whole suite on bookworm-backports' 6.12 against the linux-6.12 profile."""
    assert backports.status == 0, backports.error
    assert backports.kernel.startswith("6.12.")
    differences = compare(model_results("linux-6.12"), backports.result["scenarios"])
    assert not differences, "\n".join(map(str, differences))


@pytest.fixture(scope="module")
def trixie() -> SuiteRun:
    return _suite_on("7.3")


@pytest.mark.oracle
def test_model_linux_7_3_matches_the_trixie_backports_kernel(trixie: SuiteRun) -> None:
    """Scenario: the whole suite on trixie-backports' 7.3.4 against linux-7.3 (one boot,
    about 20 s): hugetlb memslots allowed, 7.3's register list, resets and masks."""
    assert trixie.status == 0, trixie.error
    assert trixie.kernel.startswith("7.3.")
    differences = compare(model_results("linux-7.3"), trixie.result["scenarios"])
    assert not differences, "\n".join(map(str, differences))


@pytest.mark.oracle
def test_a_page_changed_only_by_tag_stores_is_in_the_real_dirty_log(
    bookworm: SuiteRun, backports: SuiteRun
) -> None:
    """Scenario: kvm-probe stores tags (STG) on a clean, mapped page and on a fresh one.

    The question a QEMU reviewer raised for tags in migration: both pages must be in
    the log, or pre-copy would leave stale tags at the destination. A page only read is
    not. (The model agrees: the comparisons above include these fields.)
    """
    for run in (bookworm, backports):
        probe = run.result["scenarios"]["guest_first_touch_and_dirty_log"]
        assert probe["status"] == 0, probe
        assert (probe["dirty_page4"], probe["dirty_page7"]) == (True, True)
        assert (probe["dirty_page5"], probe["dirty_page6"]) == (True, False)


@pytest.mark.oracle
def test_the_6_4_and_6_12_copy_tags_rules_hold_on_the_real_kernels(
    bookworm: SuiteRun, backports: SuiteRun
) -> None:
    """Scenario: COPY_TAGS of 2 GiB, and TO_GUEST while dirty logging, on 6.1 and 6.12.

    6.1 copies what the slot has (16 pages) and stops; 6.12 refuses a length above
    INT_MAX (EINVAL, since 6.4) and tag writes while logging (EBUSY, since 6.12).
    """
    old, new = (run.result["scenarios"] for run in (bookworm, backports))
    assert old["copy_tags_int_max"]["from_length_over_int_max"] == 16 * 4096
    assert new["copy_tags_int_max"]["from_length_over_int_max"] == -errno.EINVAL
    assert old["copy_tags_while_dirty_logging"]["logging_to_guest"] == 4096
    assert new["copy_tags_while_dirty_logging"]["logging_to_guest"] == -errno.EBUSY
    assert new["copy_tags_while_dirty_logging"]["after_to_guest"] == 4096


#: MRS x1, GMID_EL1 trapped by HCR_EL2.TID5, reported as FEAT_IDST says: EC 0x18, IL, and
#: the ISS of the MRS (Op0 3, Op2 4, Op1 1, CRn 0, Rt 1, CRm 0, read).
GMID_IDST_ESR = "0x62384021"
UNDEF_ESR = "0x02000000"
TRAPPED_WITHOUT_MTE = ("GCR_EL1", "RGSR_EL1", "TFSR_EL1", "TFSRE0_EL1")


def _gmid_without_mte(result: dict[str, Any]) -> tuple[str, str]:
    return result["mte_off.mrs_GMID_EL1.esr"], result["mte_off.mrs_GMID_EL1.value"]


def test_the_model_traps_gmid_el1_without_mte_only_from_7_0() -> None:
    """Scenario: mte_traps on the model's linux-6.12 and linux-7.3 profiles. Without MTE the
    MTE registers are UNDEFINED on both; GMID_EL1 reads BS 6 on 6.12 and takes EC 0x18 on
    7.3 (70a5ce4efc0e); with MTE nothing traps. Those are the only fields that differ."""
    old = model_results("linux-6.12", ["mte_traps"])["mte_traps"]
    new = model_results("linux-7.3", ["mte_traps"])["mte_traps"]
    assert _gmid_without_mte(old) == ("0x00000000", "0x6")
    assert _gmid_without_mte(new) == (GMID_IDST_ESR, "0x0")
    for result in (old, new):
        for register in TRAPPED_WITHOUT_MTE:
            assert result[f"mte_off.mrs_{register}.esr"] == UNDEF_ESR
            assert result[f"mte_off.msr_{register}_ones.esr"] == UNDEF_ESR
        assert result["mte_on.exceptions"] == 0
    differing = {field for field in old.keys() | new.keys() if old.get(field) != new.get(field)}
    assert {field for field in differing if not field.startswith("_")} == {
        "mte_off.mrs_GMID_EL1.esr",
        "mte_off.mrs_GMID_EL1.value",
        "mte_off.mrs_GMID_EL1.elr",
        "mte_off.exceptions",
    }


@pytest.mark.oracle
def test_mte_traps_on_the_real_kernels_match_the_model_field_by_field(
    bookworm: SuiteRun, backports: SuiteRun, trixie: SuiteRun
) -> None:
    """Scenario: the mte-traps guest under the real KVM of 6.1, 6.12 and 7.3, with MTE and
    without: every probe reported, the MTE registers UNDEF (ESR 0x02000000) without MTE,
    GMID_EL1 read as 6 before 7.0 and trapped with EC 0x18 on 7.3, IRG/STG/LDG never
    trapping; and every compared field equal to the matching profile's."""
    for run, profile in ((bookworm, "linux-6.1"), (backports, "linux-6.12"), (trixie, "linux-7.3")):
        real = run.result["scenarios"]["mte_traps"]
        assert (real["mte_on.probes_reported"], real["mte_off.probes_reported"]) == (18, 18)
        for register in TRAPPED_WITHOUT_MTE:
            assert real[f"mte_off.mrs_{register}.esr"] == UNDEF_ESR
        for instruction in ("irg", "stg", "ldg"):
            assert real[f"mte_off.{instruction}.esr"] == real[f"mte_on.{instruction}.esr"]
            assert real[f"mte_on.{instruction}.esr"] == "0x00000000"
        expected = (GMID_IDST_ESR, "0x0") if profile == "linux-7.3" else ("0x00000000", "0x6")
        assert _gmid_without_mte(real) == expected
        model = model_results(profile, ["mte_traps"])
        differences = compare(model, {"mte_traps": real})
        assert not differences, "\n".join(map(str, differences))


@pytest.mark.oracle
def test_real_6_1_and_7_3_show_a_previous_owners_huge_page_tags(
    bookworm: SuiteRun, trixie: SuiteRun
) -> None:
    """Scenario: a guest stores tag 0xB on a huge page and its VM goes; the next VM gets the
    same huge page (docs/conformance.md "Memory").

    6.1 (MAP_PRIVATE hugetlb memfd, same process and child): FROM_GUEST before the run
    and the guest's first LDG read 0xB. 7.3 (hugetlb memfd, no PROT_MTE): FROM_GUEST reads
    zeros, but after COPY_TAGS TO_GUEST into page 1 the guest reads 0xB on pages 0, 2, 3.
    """
    owner, planted = 1 << 0xB, 1 << 5
    old = bookworm.result["scenarios"]["tags_across_owners"]
    for who in ("same_process", "child_process"):
        assert old[f"_hugetlb_memfd_private.{who}.frames_reused"] == 512
        assert old[f"hugetlb_memfd_private.{who}.guest_before"] == [owner, planted, owner, owner]
    new = trixie.result["scenarios"]["memslot_backing_tags"]
    assert new["hugetlb_memfd_private.from_before"]["masks"] == [1] * 8
    assert new["hugetlb_memfd_private.guest_before"] == [owner, planted, owner, owner]
