"""The shape of JSON someone handed in (an evidence bundle, an event proof): each field's type, checked before
use, and refused with a MalformedInput that names the field. Pure."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from .errors import MalformedInput

_NAMES = {str: "a string", int: "a whole number", list: "a list", dict: "an object"}


def obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedInput(f"{what} is not a JSON object")
    return value


def field(value: Any, key: str, kind: type, what: str, optional: bool = False) -> Any:
    """``value[key]``, of type ``kind`` (an int is never a bool); None if ``optional`` and absent or null."""
    found = obj(value, what).get(key)
    if found is None and optional:
        return None
    if key not in value:
        raise MalformedInput(f"{what} has no {key}")
    if not isinstance(found, kind) or (kind is int and isinstance(found, bool)):
        raise MalformedInput(f"{what}: {key} is not {_NAMES.get(kind, kind.__name__)}")
    return found


def b64(value: Any, key: str, what: str, size: int | None = None) -> bytes:
    """``value[key]`` decoded from standard base64, of ``size`` bytes if given."""
    try:
        data = base64.b64decode(field(value, key, str, what), validate=True)
    except binascii.Error:
        raise MalformedInput(f"{what}: {key} is not base64") from None
    if size is not None and len(data) != size:
        raise MalformedInput(f"{what}: {key} is not {size} bytes")
    return data


def b64_list(value: Any, key: str, what: str, size: int) -> list[bytes]:
    items = field(value, key, list, what)
    return [b64({key: item}, key, what, size) for item in items]


def hex_bytes(value: Any, key: str, what: str, size: int) -> bytes:
    text = field(value, key, str, what)
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise MalformedInput(f"{what}: {key} is not hex") from None
    if len(data) != size:
        raise MalformedInput(f"{what}: {key} is not {size} bytes")
    return data
