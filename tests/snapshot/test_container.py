"""The sectioned container: versions, checksums, unknown sections, size limits."""

import io

import pytest

from tagvisor.snapshot.container import (
    HEADER,
    FormatError,
    Version,
    iter_sections,
    read_header,
    write_header,
    write_section,
)

MAGIC = b"TESTFMT\0"


V1_3 = Version(1, 3)


def stream(*sections: tuple[bytes, bytes, bool], version: Version = V1_3) -> io.BytesIO:
    sink = io.BytesIO()
    write_header(sink, MAGIC, version)
    for tag, payload, optional in sections:
        write_section(sink, tag, payload, optional=optional)
    write_section(sink, b"END!", b"{}")
    sink.seek(0)
    return sink


def test_newer_minor_version_is_read_and_its_unknown_optional_section_skipped() -> None:
    """Scenario: a 1.3 stream with an optional section this reader does not know."""
    source = stream((b"CONF", b"a", False), (b"NEW1", b"extra", True), (b"CONF", b"b", False))
    assert read_header(source, MAGIC, 1) == Version(1, 3)
    tags = [s.tag for s in iter_sections(source, {b"CONF": 16})]
    assert tags == [b"CONF", b"CONF", b"END!"]


def test_unknown_mandatory_section_stops_the_reader() -> None:
    """Scenario: a section this reader does not know and may not skip."""
    source = stream((b"NEW1", b"extra", False))
    read_header(source, MAGIC, 1)
    with pytest.raises(FormatError, match="unknown mandatory section"):
        list(iter_sections(source, {b"CONF": 16}))


def test_other_major_version_is_refused_with_advice() -> None:
    """Scenario: a well-formed 2.0 stream (valid checksum) given to a 1.x reader."""
    source = stream(version=Version(2, 0))
    with pytest.raises(FormatError, match=r"version 2\.0 is not readable.*1\.x"):
        read_header(source, MAGIC, 1)


def test_section_longer_than_its_limit_is_refused_before_reading_it() -> None:
    """Scenario: a CONF section of 100 bytes where the reader allows 16."""
    source = stream((b"CONF", bytes(100), False))
    read_header(source, MAGIC, 1)
    with pytest.raises(FormatError, match="claims 100 bytes, more than the 16"):
        list(iter_sections(source, {b"CONF": 16}))


def test_header_checksum_guards_the_version_field() -> None:
    """Scenario: the minor version is altered without fixing the CRC."""
    raw = bytearray(stream().getvalue())
    raw[10] ^= 1
    with pytest.raises(FormatError, match="header's checksum"):
        read_header(io.BytesIO(bytes(raw)), MAGIC, 1)
    assert HEADER.size == 16
