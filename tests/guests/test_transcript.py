"""The transcript parser and the boot configuration block, without any emulator."""

from __future__ import annotations

import struct

import pytest

from tagvisor.arch import TagCheckMode
from tests.support.guests import BOOT_CONFIG_ADDR, BOOT_MAGIC, BootConfig
from tests.support.transcript import (
    Assertion,
    Panic,
    TranscriptError,
    Ucall,
    parse_transcript,
    parse_ucall_line,
    parse_ucalls,
)

SAMPLE = (
    "ucall 1 1 1 1 1 8000000 ace1\r\n"
    "ucall 1 2 3 6 4 1\n"
    "heap: use-after-free\n"
    "ucall 3 40082e00\n"
    "ucall 2 4c 0 1\n"
    "panic esr=96000011 far=200000040200000 elr=40080124\n"
    "ucall 4 ff\n"
)


def test_ucall_lines_become_command_and_hex_arguments() -> None:
    """Scenario: console lines as the runtime prints them. `ucall <cmd> <args...>` in
    lower-case hex without 0x gives (cmd, args); other lines are not ucalls; a
    malformed ucall line (upper case, 0x, too many arguments, no command) is an error,
    not silently dropped."""
    assert parse_ucall_line("ucall 1 111 a000000040090000 ffff") == Ucall(
        1, (0x111, 0xA000000040090000, 0xFFFF)
    )
    assert parse_ucall_line("ucall 4") == Ucall(4, ())
    assert parse_ucall_line("mte-smoke: LDGM") is None
    assert parse_ucall_line("") is None
    for bad in ("ucall", "ucall 1 0xff", "ucall 1 FF", "ucall 1 " + "1 " * 7, "ucall 1 x"):
        with pytest.raises(TranscriptError):
            parse_ucall_line(bad)


def test_transcript_collects_reports_prints_asserts_panic_and_status() -> None:
    """Scenario: a transcript with CR-LF and LF line ends holding two reports, a print,
    an assert, a panic line and UCALL_DONE 255. Reports are found by id, the printed
    text is the line before UCALL_PRINT, and the exit status is DONE's."""
    transcript = parse_transcript(SAMPLE)
    assert [u.cmd for u in transcript.ucalls] == [1, 1, 3, 2, 4]
    assert parse_ucalls(SAMPLE) == list(transcript.ucalls)
    assert transcript.report(1) == (1, 1, 1, 0x8000000, 0xACE1)
    assert transcript.reports(2) == [(3, 6, 4, 1)]
    assert transcript.reports(9) == []
    assert transcript.printed == ("heap: use-after-free",)
    assert transcript.assertions == [Assertion(0x4C, 0, 1)]
    assert transcript.panic == Panic(0x96000011, 0x200000040200000, 0x40080124)
    assert transcript.done == transcript.exit_status == 0xFF
    with pytest.raises(TranscriptError):
        parse_transcript(SAMPLE + "ucall 1 1 0\n").report(1)


def test_guest_that_powers_off_without_done_exits_zero() -> None:
    """Scenario: a transcript with reports but no UCALL_DONE (the guest called PSCI
    SYSTEM_OFF itself). The ABI gives it exit status 0."""
    transcript = parse_transcript("ucall 1 1 0\n")
    assert transcript.done is None
    assert transcript.exit_status == 0


def test_boot_config_block_layout_and_qemu_loader_words() -> None:
    """Scenario: a boot block for async mode, 256 MiB, argument 7, seed 0xBEEF. Its
    bytes follow docs/guest-abi.md (magic, version, mode, flags, RAM size) then the
    guest fields (argument, seed); QEMU gets one -device loader per non-zero field,
    at the field's address with its width."""
    config = BootConfig(mode=TagCheckMode.ASYNC, ram_size=256 << 20, arg=7, seed=0xBEEF)
    data = config.to_bytes()
    assert len(data) == 40
    assert struct.unpack("<IIIIQQI", data[:36]) == (BOOT_MAGIC, 1, 2, 1, 256 << 20, 7, 0xBEEF)
    loader = config.qemu_loader_args()
    assert loader[0::2] == ["-device"] * 7
    assert loader[1] == f"loader,addr={BOOT_CONFIG_ADDR:#x},data={BOOT_MAGIC:#x},data-len=4"
    assert loader[9] == f"loader,addr={BOOT_CONFIG_ADDR + 16:#x},data={256 << 20:#x},data-len=8"
    assert loader[13] == f"loader,addr={BOOT_CONFIG_ADDR + 32:#x},data=0xbeef,data-len=4"
    assert len(BootConfig(mode=TagCheckMode.NONE, mte=False).qemu_loader_args()) == 2 * 3
