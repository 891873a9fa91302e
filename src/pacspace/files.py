"""Reading the files a user names: one error (MalformedInput, exit 2) naming the file, whatever went wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import MalformedInput


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise MalformedInput(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise MalformedInput(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise MalformedInput(f"cannot read {what} {path}: {exc.strerror or 'the system refused'}") from None


def read_text(path: Path, what: str) -> str:
    """The file as UTF-8 text; ``what`` names it for the user ("the receipt", "--invoice")."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedInput(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedInput(f"{what} is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise MalformedInput(f"{what} is JSON nested too deeply") from None


def read_json(path: Path, what: str) -> Any:
    return parse_json(read_text(path, what), f"{what} {path}")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise MalformedInput(f"{what} {path} is not a JSON object")
    return value
