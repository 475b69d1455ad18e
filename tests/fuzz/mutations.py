"""Structure-aware mutations of snapshots and migration streams.

A mutation works on the sections, not the bytes: it drops, repeats, swaps or invents
sections, rewrites a JSON field with a hostile value (a wrong type, a number out of
range, NaN, a 5000-digit integer, a lone surrogate, deep nesting), or damages a binary
payload (flipped bytes, extreme u32/u64 fields, truncation). Every section is then
written again with a correct checksum, so what reaches a reader's inner logic is what
the checksum cannot catch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from hypothesis import strategies as st

from tagvisor.snapshot.container import (
    END_TAG,
    Version,
    read_header,
    read_section,
    write_header,
    write_section,
)

Sections = list[tuple[bytes, bytes]]

#: Values a JSON field is replaced with: wrong types, edges of every range.
HOSTILE_VALUES: Final[list[Any]] = [
    None, True, False, -1, 0, 1, 7, 9, 2**31, 2**32, 2**62, 2**63, 2**64, -(2**63),
    1.5, "", "x" * 300, "tmpfs", [], {}, [[0, 0]], [0, 0, 0], {"a": 1},
    "\u00e9\u4e2d", [None] * 4,
]  # fmt: skip
#: Raw JSON text that Python's parser handles badly unless guarded.
HOSTILE_TOKENS: Final = [
    "9" * 5000,
    "Infinity",
    "-Infinity",
    "NaN",
    '"\\ud800"',
    "[" * 3000 + "]" * 3000,
    '{"a":' * 2000 + "1" + "}" * 2000,
    "1e999",
]
KNOWN_TAGS: Final = [
    b"CONF", b"VCPU", b"VREG", b"UART", b"UCAL", b"DMA ", b"DEVS", b"PAGE", b"HELO",
    b"ITER", b"POST", b"CMIT", END_TAG, b"ZZZZ",
]  # fmt: skip
_NUMBER: Final = re.compile(rb"-?\d+")


@dataclass(frozen=True)
class Mutation:
    """One change: ``kind`` at section ``index`` (modulo their count), with ``value``."""

    kind: str
    index: int
    value: Any = None
    extra: int = 0


def split(raw: bytes, magic: bytes) -> tuple[Version, Sections]:
    """A container's version and every section (tag, payload): those up to END!, and
    any after it (a stream's CMIT)."""
    import io

    source = io.BytesIO(raw)
    version = read_header(source, magic, 1)
    sections: Sections = []
    while source.tell() < len(raw):
        section = read_section(source, lambda tag: 1 << 30)
        sections.append((section.tag, bytes(section.payload)))
    return version, sections


def join(magic: bytes, version: Version, sections: Sections) -> bytes:
    """The container again, every checksum right."""
    import io

    out = io.BytesIO()
    write_header(out, magic, version)
    for tag, payload in sections:
        write_section(out, tag, payload)
    return out.getvalue()


def mutations() -> st.SearchStrategy[list[Mutation]]:
    kinds = st.sampled_from(
        ["json-value", "json-token", "json-drop", "flip", "word", "truncate", "extend",
         "drop", "repeat", "swap", "insert", "retag"]
    )  # fmt: skip
    one = st.builds(
        Mutation,
        kind=kinds,
        index=st.integers(0, 1 << 16),
        value=st.one_of(st.sampled_from(HOSTILE_VALUES), st.sampled_from(HOSTILE_TOKENS)),
        extra=st.integers(0, 1 << 20),
    )
    return st.lists(one, min_size=1, max_size=4)


def apply(sections: Sections, plan: list[Mutation]) -> Sections:
    """``sections`` with every mutation of ``plan`` made, in order."""
    result = list(sections)
    for mutation in plan:
        if result:
            result = _apply_one(result, mutation)
    return result


def _apply_one(sections: Sections, m: Mutation) -> Sections:
    i = m.index % len(sections)
    tag, payload = sections[i]
    if m.kind == "drop":
        return sections[:i] + sections[i + 1 :]
    if m.kind == "repeat":
        return sections[: i + 1] + sections[i:]
    if m.kind == "swap" and i + 1 < len(sections):
        return [*sections[:i], sections[i + 1], sections[i], *sections[i + 2 :]]
    if m.kind == "insert":
        new = (KNOWN_TAGS[m.extra % len(KNOWN_TAGS)], payload)
        return [*sections[:i], new, *sections[i:]]
    if m.kind == "retag":
        return [*sections[:i], (KNOWN_TAGS[m.extra % len(KNOWN_TAGS)], payload), *sections[i + 1 :]]
    return [*sections[:i], (tag, _mutate_payload(payload, m)), *sections[i + 1 :]]


def _mutate_payload(payload: bytes, m: Mutation) -> bytes:
    if m.kind.startswith("json-"):
        return _mutate_json(payload, m)
    if not payload and m.kind != "extend":
        return payload
    at = m.extra % max(1, len(payload))
    if m.kind == "flip":
        return payload[:at] + bytes([payload[at] ^ (1 << (m.index % 8))]) + payload[at + 1 :]
    if m.kind == "word":
        width = 8 if m.index % 2 else 4
        value = [0, 1, 0xFFFF_FFFF, 2**63, 2**64 - 1][m.index % 5] & ((1 << (8 * width)) - 1)
        word = value.to_bytes(width, "little")
        return payload[:at] + word + payload[at + width :]
    if m.kind == "truncate":
        return payload[:at]
    if m.kind == "extend":
        return payload + bytes(m.extra % 4096)
    return payload


def _mutate_json(payload: bytes, m: Mutation) -> bytes:
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return payload  # not JSON (or too deep already): leave it as it is
    paths = list(_paths(value))
    if not paths:
        return payload
    path = paths[m.index % len(paths)]
    if m.kind == "json-drop" and path:
        _parent(value, path).pop(path[-1])
        return json.dumps(value).encode()
    if m.kind == "json-value" or not isinstance(m.value, str) or m.value not in HOSTILE_TOKENS:
        replacement = m.value if m.value not in HOSTILE_TOKENS else None
        _set(value, path, replacement)
        return json.dumps(value).encode()
    marker = "\x00TOKEN\x00"
    _set(value, path, marker)
    return json.dumps(value).encode().replace(json.dumps(marker).encode(), m.value.encode())


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Any:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:8]):
            yield from _paths(item, (*prefix, index))


def _parent(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        value = value[key]
    return value


def _set(value: Any, path: tuple[Any, ...], replacement: Any) -> None:
    if path:
        _parent(value, path)[path[-1]] = replacement
