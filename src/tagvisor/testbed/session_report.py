"""What a Linux guest session (tagvisor.testbed.linux_session) showed: the figures for
``tagvisor testbed --linux-guest --json``, and what failed, if anything.

A session passes when, after the snapshot and again after the migration, the digests
of memory and tags are equal, the guest's workload verified every granule it has with
no mismatch and caught both bugs (SIGSEGV, SEGV_MTESERR), after post-copy it verified
every granule again (its mismatches are reported, not failed: see _postcopy_failures)
and caught both bugs, and at the end it exited and powered off.
"""

from __future__ import annotations

from typing import Any, Final

from tagvisor.migration.source import MigrationReport

#: The keys of the snapshot and migration steps that --json keeps.
STEP_KEYS: Final = (
    "digests_equal",
    "guest_verified_granules",
    "mismatches",
    "bugs_caught",
    "verify_seconds",
)
SNAPSHOT_KEYS: Final = (
    *STEP_KEYS,
    "save_seconds",
    "restore_seconds",
    "file_bytes",
    "data_bytes",
    "tag_bytes",
    "tick_uptime",
)
MIGRATION_KEYS: Final = (
    *STEP_KEYS,
    "total_seconds",
    "downtime_ms",
    "send_downtime_ms",
    "downtime_phases_ms",
    "destination_apply_ms",
    "tag_share",
    "iterations",
    "pages_sent",
    "uniform_tag_pages",
    "data_bytes",
    "tag_bytes",
    "dirty_per_iteration",
    "guest_share",
    "cpu_seconds",
    "tag_copies",
)


POSTCOPY_KEYS: Final = (
    "guest_verified_granules",
    "mismatches",
    "bugs_caught",
    "total_seconds",
    "downtime_ms",
    "downtime_phases_ms",
    "destination_apply_ms",
    "postcopy_pages",
    "postcopy_requests",
    "tag_share",
)


def migration_figures(report: MigrationReport) -> dict[str, Any]:
    """The source's side of a migration step as the session reports it (plain JSON:
    it crosses from a VM's process, tagvisor.testbed.vm_process)."""
    out: dict[str, Any] = {
        "total_seconds": rounded(report.total_seconds),
        "downtime_ms": rounded(report.downtime_seconds * 1000),
        "send_downtime_ms": rounded(report.send_downtime_seconds * 1000),
        "downtime_phases_ms": {
            name: rounded(seconds * 1000) for name, seconds in report.downtime_phases.items()
        },
        "tag_share": round(report.tag_share, 5),
        "iterations": report.iterations,
        "pages_sent": report.pages_sent,
        "uniform_tag_pages": report.uniform_tag_pages,
        "data_bytes": report.data_bytes,
        "tag_bytes": report.tag_bytes,
        "wire_bytes": report.wire_bytes,
        "dirty_per_iteration": report.dirty_per_iteration,
        "guest_share": round(report.guest_share, 3),
    }
    if report.postcopy:
        out["postcopy_pages"] = report.postcopy_pages
    return out


def rounded(value: float) -> float:
    """Seconds or milliseconds as the session reports them: to a thousandth."""
    return round(value, 3)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The session's figures as one object (the issue's keys among them)."""
    snapshot = result.get("snapshot") or {}
    migration = result.get("migration") or {}
    out: dict[str, Any] = {
        "boot_seconds": result.get("boot_seconds"),
        "seconds_to_ready": result.get("seconds_to_ready"),
        "granules": _granules(result),
        "snapshot": {key: snapshot.get(key) for key in SNAPSHOT_KEYS},
        "migration": {key: migration.get(key) for key in MIGRATION_KEYS},
        "postcopy": {key: (result.get("postcopy") or {}).get(key) for key in POSTCOPY_KEYS},
        "ticks": result.get("ticks"),
        "glibc_mtag": result.get("glibc_mtag", []),
        "seconds_total": result.get("seconds_total"),
    }
    for key in ("qemu", "qemu_nomte_migration"):
        if key in result:
            out[key] = result[key]
    if "error" in result:
        out["error"] = result["error"]
    return out


def _granules(result: dict[str, Any]) -> int | None:
    ready = result.get("ready") or {}
    value = ready.get("granules")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def failures(result: dict[str, Any]) -> list[str]:
    """What the session did not show, in words (empty: it passed)."""
    if "error" in result:
        return [f"the session stopped: {result['error']}"]
    problems = []
    granules = _granules(result)
    for step in ("snapshot", "migration"):
        figures = result.get(step) or {}
        if figures.get("digests_equal") is not True:
            problems.append(f"after the {step}, memory and tags differ from the source's")
        if figures.get("mismatches") != 0 or figures.get("guest_verified_granules") != granules:
            problems.append(
                f"after the {step}, the guest verified {figures.get('guest_verified_granules')} "
                f"of {granules} granules with {figures.get('mismatches')} mismatches"
            )
        if figures.get("bugs_caught") != "2/2":
            problems.append(f"after the {step}, the guest caught {figures.get('bugs_caught')} bugs")
    problems += _postcopy_failures(result.get("postcopy") or {}, granules)
    exit_ = result.get("exit") or {}
    if exit_.get("exit_status") != 0:
        problems.append(f"the guest did not power off cleanly at the end ({exit_})")
    return problems


def _postcopy_failures(figures: dict[str, Any], granules: int | None) -> list[str]:
    """Post-copy must finish with the guest verifying every granule and catching both
    bugs. A mismatch there is not a failure of tagvisor but the measured cost of the
    call Linux lacks (a UFFDIO_COPY that places tags): docs/linux-guests.md."""
    if figures.get("guest_verified_granules") != granules:
        return [
            f"after post-copy, the guest verified {figures.get('guest_verified_granules')} of "
            f"{granules} granules"
        ]
    if figures.get("bugs_caught") != "2/2":
        return [f"after post-copy, the guest caught {figures.get('bugs_caught')} bugs"]
    return []
