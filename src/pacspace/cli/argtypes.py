"""Argument types the parser checks, so that a bad value is a usage error (exit 2) naming the option."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..errors import MalformedInput
from ..keys import parse_fingerprint


def port(text: str) -> int:
    """A TCP port to listen on, 1 to 65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: a whole number from 1 to 65535")
    return int(text)


def seconds(most: float | None = None) -> Callable[[str], float]:
    """A positive, finite number of seconds, at most ``most``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0 and (most is None or value <= most)):
            bound = f" and at most {most:g}" if most is not None else ""
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0{bound}")
        return value

    parse.__name__ = "seconds"
    return parse


def whole(least: int, most: int | None = None) -> Callable[[str], int]:
    """A whole number from ``least`` (to ``most``)."""

    def parse(text: str) -> int:
        value = int(text) if text.isdigit() and len(text) <= 18 else None
        if value is None or value < least or (most is not None and value > most):
            bound = f"from {least} to {most}" if most is not None else f"of at least {least}"
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number {bound}")
        return value

    parse.__name__ = "whole number"
    return parse


def fingerprint(text: str) -> str:
    """A key fingerprint as `pacspace keys show` prints it (or an older, 128-bit one)."""
    try:
        return parse_fingerprint(text)
    except MalformedInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
