"""The guest runtime's side of docs/guest-abi.md under QEMU: the boot configuration
block, the ucall transcript, MTE detection, and the panic path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tagvisor.arch import TagCheckMode
from tests.oracle_system.conftest import boot, completed
from tests.support import guest_reports as rid
from tests.support.guests import (
    DEFAULT_RAM_SIZE,
    DEFAULT_SEED,
    EXIT_NO_MTE,
    BootConfig,
    ElfImage,
    prebuilt,
)
from tests.support.transcript import (
    PANIC_STATUS,
    UCALL_DONE,
    UCALL_PRINT,
    UCALL_SYNC,
    Transcript,
)

pytestmark = pytest.mark.oracle

#: UDF #0x7e, which mte-smoke executes when boot argument bit 0 is set.
UDF_7E = (0x7E).to_bytes(4, "little")


def test_guest_without_a_boot_block_runs_sync_with_128_mib(qemu_system: Path) -> None:
    """Scenario: the heap guest booted with nothing at 0x4000_1000 (no magic). The
    runtime falls back to its defaults: tag check mode sync, 128 MiB, the default IRG
    seed, and reports the block as invalid; the guest still completes."""
    transcript = completed("heap", None)
    assert transcript.report(rid.BOOT) == (0, TagCheckMode.SYNC, 0, DEFAULT_RAM_SIZE, DEFAULT_SEED)
    assert transcript.done == 0


def test_boot_block_sets_mode_ram_size_seed_and_argument(qemu_system: Path) -> None:
    """Scenario: a boot block asking for asymmetric mode, 256 MiB (QEMU gets -m 256M),
    IRG seed 0x1234 and program argument 2, written with -device loader words. The
    runtime's BOOT report echoes each field and the mode is the one in effect."""
    config = BootConfig(mode=TagCheckMode.ASYMM, ram_size=256 << 20, seed=0x1234, arg=2)
    transcript = completed("heap", config)
    assert transcript.report(rid.BOOT) == (1, TagCheckMode.ASYMM, 1, 256 << 20, 0x1234)
    assert transcript.report(rid.HEAP_INIT)[3] == TagCheckMode.ASYMM


def test_console_is_ucall_lines_and_print_texts_from_boot_to_done(smoke: Transcript) -> None:
    """Scenario: mte-smoke's whole console output. Every line is either a ucall line or
    the text of the UCALL_PRINT that follows it; the first ucalls are the runtime's
    BOOT and CPU reports and the last is UCALL_DONE."""
    lines = [line for line in smoke.text.splitlines() if line]
    assert len(lines) == len(smoke.ucalls) + len(smoke.printed)
    assert [u.args[0] for u in smoke.ucalls[:2]] == [rid.BOOT, rid.CPU]
    assert {u.cmd for u in smoke.ucalls} == {UCALL_SYNC, UCALL_PRINT, UCALL_DONE}
    assert smoke.ucalls[-1].cmd == UCALL_DONE
    assert smoke.printed == ("mte-smoke: LDGM/STGM/STZGM",)


def test_unexpected_exception_prints_panic_and_exits_255(qemu_system: Path) -> None:
    """Scenario: mte-smoke with boot argument bit 0 ends with UDF #0x7e at EL1. The
    runtime's vector prints `panic esr=.. far=.. elr=..` with ESR EC 0 (unknown
    reason) and IL set, FAR 0 (architecturally UNKNOWN here, so not printed), ELR at
    the UDF, makes UCALL_DONE 255 and powers off."""
    run = boot("mte-smoke", BootConfig(arg=1))
    transcript = run.transcript
    assert run.powered_off
    assert transcript.panic is not None
    assert transcript.panic.esr == 0x0200_0000
    assert transcript.panic.far == 0  # UNKNOWN for EC 0: the runtime prints 0
    assert transcript.done == transcript.exit_status == PANIC_STATUS
    assert transcript.printed[-1] == "mte-smoke: now an undefined instruction"
    image = ElfImage.read(prebuilt("mte-smoke"))
    udfs = {
        base + at
        for base, data, _ in image.segments
        for at in range(0, len(data), 4)
        if data[at : at + 4] == UDF_7E
    }
    assert transcript.panic.elr in udfs


def test_guest_stops_when_the_vmm_has_not_enabled_mte(qemu_system: Path) -> None:
    """Scenario: a valid boot block with flags bit 0 clear (the VMM did not enable MTE
    for the VM), on a CPU that has it. The runtime leaves the MTE registers alone and
    the smoke guest exits with status 3 (MTE unavailable) without a panic."""
    transcript = completed("mte-smoke", BootConfig(mte=False))
    assert transcript.report(rid.CPU)[3] == 0
    assert transcript.report(rid.BOOT)[1] == TagCheckMode.NONE
    assert transcript.done == EXIT_NO_MTE


def test_guest_stops_on_a_machine_without_tag_storage(qemu_system: Path) -> None:
    """Scenario: -M virt,mte=off. ID_AA64PFR1_EL1.MTE reads below 2 (no FEAT_MTE2), so
    the runtime treats MTE as unavailable even though the boot block's flag is set,
    and the heap guest exits with status 3 instead of faulting on GCR_EL1."""
    transcript = boot("heap", machine_mte=False).transcript
    assert transcript.report(rid.CPU)[0] < 2
    assert transcript.panic is None
    assert transcript.done == EXIT_NO_MTE
