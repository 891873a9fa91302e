"""Canonical JSON for sealed bodies (RFC 8785 style). Pure.

Sorted keys, no insignificant whitespace, UTF-8, and no JSON numbers at all:
integers and decimals travel as strings, so no float ever touches a quantity.
Parsing is strict: duplicate keys, numbers, and any input that does not
re-encode to the same bytes are rejected.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import MalformedInput

JsonValue = Any  # dict[str, JsonValue] | list[JsonValue] | str | bool | None


class NotCanonical(MalformedInput):
    """Bytes that are not the canonical encoding of a pacspace JSON value."""

    code = "not_canonical"


def encode(value: JsonValue) -> bytes:
    _check(value)
    return encode_checked(value)


def encode_checked(value: JsonValue) -> bytes:
    """``encode`` for a value known to hold only strings, booleans, None, lists and string-keyed objects
    (what ``decode`` returns, and what a body's to_json builds from its validated fields)."""
    return _ENCODER.encode(value).encode("utf-8")


def _check(value: JsonValue) -> None:
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotCanonical("object keys must be strings")
            _check(item)
        return
    if isinstance(value, list):
        for item in value:
            _check(item)
        return
    raise NotCanonical(f"{type(value).__name__} is not allowed in canonical JSON (numbers travel as strings)")


def _no_numbers(text: str) -> None:
    raise NotCanonical(f"number {text!r}: numbers travel as strings")


def parse(data: bytes) -> JsonValue:
    """Parse strictly (UTF-8, no numbers), without checking the form: for a caller that re-encodes what it
    built from the value and compares, which checks the form once instead of twice."""
    try:
        text = data.decode("utf-8")
        return _DECODER.decode(text)
    except UnicodeDecodeError:
        raise NotCanonical("not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise NotCanonical(f"not JSON: {exc.msg}") from None
    except RecursionError:
        raise NotCanonical("JSON nested too deeply") from None


# Built once, not per call (json.dumps and json.loads with options build one each time): both are immutable.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder(parse_int=_no_numbers, parse_float=_no_numbers, parse_constant=_no_numbers)


def decode(data: bytes) -> JsonValue:
    """Parse canonical JSON; the result re-encodes to exactly ``data``.

    A duplicate key needs no check of its own: the object keeps one of the two, so the value re-encodes
    to other bytes and is refused.
    """
    value = parse(data)
    try:
        again = encode_checked(value)
    except UnicodeEncodeError:
        raise NotCanonical("JSON string holds a lone surrogate") from None
    if again != data:
        raise NotCanonical("JSON is not in canonical form")
    return value
