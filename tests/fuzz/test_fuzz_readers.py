"""The fuzzer: hostile snapshots and streams, structure-aware, checksums recomputed.

Each example takes a real snapshot or migration stream, mutates its sections
(tests/fuzz/mutations.py) and feeds it to the reader (tests/fuzz/harness.py): the
reader must succeed or raise one of the project's documented errors, finish in time,
and keep its allocations bounded. CI runs a short run; ``scripts/fuzz`` a long one
(TAGVISOR_FUZZ_EXAMPLES sets the count). The findings that made the readers what they
are stay here as fixed inputs, run every time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tagvisor.migration import protocol
from tagvisor.snapshot import snapshot as snapshot_format
from tests.fuzz import harness
from tests.fuzz.mutations import Mutation, apply, join, mutations, split
from tests.fuzz.seeds import seed_old_snapshot, seed_snapshot, seed_stream

EXAMPLES = int(os.environ.get("TAGVISOR_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
SNAP, STREAM = snapshot_format.MAGIC, protocol.MAGIC


@FUZZ
@given(plan=mutations())
def test_a_mutated_snapshot_is_restored_or_refused_with_a_documented_error(
    tmp_path: Path, plan: list[Mutation]
) -> None:
    """Scenario: a real 1.2 snapshot, sections mutated and re-checksummed: read and
    restore end in success or a TagvisorError, within the allocation bound."""
    version, sections = split(seed_snapshot(), SNAP)
    harness.feed_snapshot(join(SNAP, version, apply(sections, plan)), tmp_path)


@FUZZ
@given(plan=mutations())
def test_a_mutated_old_snapshot_is_restored_or_refused_with_a_documented_error(
    tmp_path: Path, plan: list[Mutation]
) -> None:
    """Scenario: the same for a format 1.1 snapshot (its DEVS section and all)."""
    version, sections = split(seed_old_snapshot(), SNAP)
    harness.feed_snapshot(join(SNAP, version, apply(sections, plan)), tmp_path)


@FUZZ
@given(plan=mutations())
def test_a_mutated_stream_is_received_or_refused_with_a_documented_error(
    plan: list[Mutation],
) -> None:
    """Scenario: a recorded pre-copy stream, sections mutated and re-checksummed, sent
    to a destination: it receives a guest or fails with IncomingError, in time."""
    version, sections = split(seed_stream(), STREAM)
    harness.feed_stream(join(STREAM, version, apply(sections, plan)))


def test_the_seeds_themselves_are_accepted(tmp_path: Path) -> None:
    """Scenario: unmutated, each seed restores or is received (so a mutation that
    fails, fails because of the mutation)."""
    assert harness.feed_snapshot(seed_snapshot(), tmp_path) == "restored"
    assert harness.feed_snapshot(seed_old_snapshot(), tmp_path) == "restored"
    assert harness.feed_stream(seed_stream()) == "received"


def _hello_with(seed: bytes, change: str) -> bytes:
    """The stream with its HELO's JSON text edited: ``old => new``."""
    version, sections = split(seed, STREAM)
    old, new = change.split(" => ")
    text = sections[0][1].decode()
    assert old in text, f"the seed's HELO has no {old!r}"
    return join(STREAM, version, [(b"HELO", text.replace(old, new).encode()), *sections[1:]])


#: The findings of the first fuzzing campaign (A to D), each now refused cleanly.
FINDINGS = {
    "A nesting 3000 deep": '"compress": false => "compress": ' + "[" * 3000 + "]" * 3000,
    "A 5000-digit integer": '"vcpus": 1 => "vcpus": ' + "9" * 5000,
    "A Infinity": '"mte_level": 2 => "mte_level": Infinity',
    "A lone surrogate": '"profile": "linux-6.13" => "profile": "\\ud800"',
    "B tcf 7": '"tcf": 1 => "tcf": 7',
    "B tcf -1": '"tcf": 1 => "tcf": -1',
    "B no VCPUs": '"vcpus": 1 => "vcpus": 0',
    "B nine VCPUs": '"vcpus": 1 => "vcpus": 9',
    "B unknown backing": '"ram_backing": "anonymous" => "ram_backing": "floppy"',
    "B unknown tag access": '"tag_access": "copy-tags" => "tag_access": "nope"',
    "B RAM of 2^62": '"ram_size": 4194304 => "ram_size": 4611686018427387904',
    "B RAM not whole 2 MiB": '"ram_size": 4194304 => "ram_size": 4198400',
}


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_greeting_finding_is_refused_cleanly(finding: str) -> None:
    """Scenario: the HELO of a recorded stream carries one of the first campaign's
    findings (deep nesting, a huge integer, Infinity, a lone surrogate, impossible
    machine shapes): the destination refuses with IncomingError, nothing else."""
    assert harness.feed_stream(_hello_with(seed_stream(), FINDINGS[finding])) == "IncomingError"


def test_a_stream_without_its_pages_or_with_two_confs_is_refused(tmp_path: Path) -> None:
    """Scenario: findings C and D. The stream with every PAGE removed, and the
    snapshot with its CONF given twice, are both refused."""
    version, sections = split(seed_stream(), STREAM)
    no_pages = [section for section in sections if section[0] != b"PAGE"]
    assert harness.feed_stream(join(STREAM, version, no_pages)) == "IncomingError"
    assert harness.feed_stream(join(STREAM, version, sections)) == "received"
    version, sections = split(seed_snapshot(), SNAP)
    twice = [sections[0], *sections]
    assert harness.feed_snapshot(join(SNAP, version, twice), tmp_path) == "FormatError"
