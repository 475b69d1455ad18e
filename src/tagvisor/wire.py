"""JSON state on the wire: deterministic out, hostile in.

Snapshots and migration streams carry small states (the machine's shape, device
registers, the peers' replies) as JSON. Writers use :func:`dumps`: sorted keys, no
spaces, so the same state gives the same bytes. Readers use :func:`loads`, which treats
the payload as an attacker's: every way Python's own parser lets an error other than
:class:`FormatError` escape is closed before anything is built from the value:

- nesting deeper than :data:`MAX_DEPTH` (the C parser recurses, and past the
  interpreter's limit raises RecursionError, which is caught);
- integers longer than :data:`MAX_INT_DIGITS` digits (ValueError past 4300 digits,
  and slow before that);
- ``NaN``, ``Infinity`` and ``-Infinity``, which are not JSON (OverflowError later);
- strings with lone surrogates (``"\\ud800"``), which no UTF-8 text holds
  (UnicodeEncodeError later, when the console prints them).
"""

from __future__ import annotations

import json
from typing import Any, Final, TypeVar

from tagvisor.errors import TagvisorError

#: Nesting any state of tagvisor's needs is 4 deep; 32 leaves room and stays far from
#: the interpreter's recursion limit.
MAX_DEPTH: Final = 32
#: A u64 has 20 digits; a sign makes 21.
MAX_INT_DIGITS: Final = 21

T = TypeVar("T")

#: What a reader hands on: bytes, or the buffer it filled in place (no copy).
Payload = bytes | bytearray | memoryview


class FormatError(TagvisorError):
    """The input is damaged, truncated, foreign or from an unknown version."""


def dumps(value: object) -> bytes:
    """``value`` as compact JSON with sorted keys: equal states, equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise FormatError(f"an integer of {len(text)} digits")
    return int(text)


def _constant(name: str) -> object:
    raise FormatError(f"{name} is not a JSON number")


def _depth(value: object, level: int = 0) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings that are not text (recursing
    at most MAX_DEPTH + 1 deep, whatever the parser accepted)."""
    if level > MAX_DEPTH:
        raise FormatError(f"nested more than {MAX_DEPTH} deep")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError("a string holds a lone surrogate, which is not text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _depth(key, level + 1)
            _depth(item, level + 1)
    elif isinstance(value, list):
        for item in value:
            _depth(item, level + 1)


def loads(payload: Payload, what: str) -> dict[str, Any]:
    """The JSON object in ``payload``, checked as the module says; FormatError naming
    ``what`` for anything else."""
    return _object(payload, what, checked=True)


def loads_numbers(payload: Payload, what: str) -> dict[str, Any]:
    """The JSON object in ``payload`` with the C parser's checks only: for a state of
    many integers (the GIC's 291 registers, decoded in a migration's downtime) whose
    caller checks every value's type and range itself, with builtins.

    What :func:`loads` adds in Python, a call per integer and a walk over every value,
    took most of 13 ms for the GIC's state under nested TCG. Without them: nesting
    past the interpreter's limit is still a RecursionError, an integer past 4300
    digits a ValueError, both caught here; NaN and Infinity are still refused; long
    integers and strings reach the caller, which must refuse anything not a number.
    """
    return _object(payload, what, checked=False)


def _object(payload: Payload, what: str, *, checked: bool) -> dict[str, Any]:
    """The JSON object in ``payload``; ``checked``: with :func:`loads`'s checks in Python."""
    try:
        text = bytes(payload).decode("utf-8")
        if checked:
            value = json.loads(text, parse_int=_integer, parse_constant=_constant)
            _depth(value)
        else:
            value = json.loads(text, parse_constant=_constant)
    except FormatError as error:
        raise FormatError(f"{what} is malformed: {error}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise FormatError(f"{what} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise FormatError(f"{what} is not a JSON object")
    return value


def field(raw: dict[str, Any], name: str, kind: type[T]) -> T:
    """``raw[name]`` if it is a ``kind`` (a bool is not an int here), else FormatError."""
    value = raw.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FormatError(f"field {name!r} is missing or not a {kind.__name__}")
    return value


def integer(raw: dict[str, Any], name: str, low: int, high: int) -> int:
    """``raw[name]``, an int in [low, high]."""
    value = field(raw, name, int)
    if not low <= value <= high:
        raise FormatError(f"field {name!r} is {value}, outside [{low}, {high}]")
    return value
