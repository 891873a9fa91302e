"""The recorder's configuration (TOML), validated once; a bad file is refused with its line and the reason."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import MalformedInput
from .events import MeterMapping
from .windows import Cadence

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")


@dataclass(frozen=True)
class RecorderConfig:
    data: Path
    grace_minutes: int
    relationship_of: dict[str, str]  # customer ref (CloudEvents subject, Stripe customer id, ...) -> relationship
    cadence_of: dict[str, Cadence]  # relationship -> cadence
    meters: dict[str, MeterMapping]  # event type / Stripe event_name -> meter


def load_config(path: Path) -> RecorderConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise MalformedInput(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MalformedInput(f"{path}: {exc}") from None
    return parse_config(raw, path.parent)


def parse_config(raw: dict, base: Path) -> RecorderConfig:  # type: ignore[type-arg]
    section = raw.get("recorder", {})
    grace = section.get("grace_minutes", 10)
    if not isinstance(grace, int) or not 0 <= grace <= 7 * 24 * 60:
        raise MalformedInput("[recorder] grace_minutes must be an integer number of minutes, at most a week")
    data = base / str(section.get("data", "recorder-data"))
    relationship_of: dict[str, str] = {}
    cadence_of: dict[str, Cadence] = {}
    customers = raw.get("customers", [])
    if not isinstance(customers, list) or not customers:
        raise MalformedInput("the config needs at least one [[customers]] entry")
    for n, entry in enumerate(customers, 1):
        ref, rid = entry.get("ref"), entry.get("relationship")
        if not isinstance(ref, str) or not ref or not isinstance(rid, str) or not _NAME.fullmatch(rid):
            raise MalformedInput(f"[[customers]] #{n}: needs ref and relationship")
        if ref in relationship_of:
            raise MalformedInput(f"[[customers]] #{n}: customer {ref!r} appears twice")
        relationship_of[ref] = rid
        cadence_of[rid] = Cadence.parse(str(entry.get("cadence", "daily")))
    meters: dict[str, MeterMapping] = {}
    for name, m in raw.get("meters", {}).items():
        if not isinstance(m, dict) or not isinstance(m.get("meter"), str) or not _NAME.fullmatch(m["meter"]):
            raise MalformedInput(f"[meters.{name}]: needs a meter name")
        dims = m.get("dimensions", [])
        if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims):
            raise MalformedInput(f"[meters.{name}]: dimensions is a list of field names")
        meters[name] = MeterMapping(m["meter"], str(m.get("unit", "unit")), str(m.get("value", "value")), tuple(dims))
    return RecorderConfig(data, grace, relationship_of, cadence_of, meters)
