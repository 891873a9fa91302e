"""The recorder's configuration (TOML), validated once; a bad file is refused with its line and the reason."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from ..errors import MalformedInput
from ..files import read_text
from ..records.body import InvalidBody, Line
from .events import InvalidEvent, MeterMapping, UsageEvent
from .windows import Cadence

FUTURE_SKEW = timedelta(minutes=5)  # as Stripe allows
# An event's quantity: at most 30 digits before the point and 18 after, so that the exact sum of up to
# 10^15 of them still fits a record's 64-character decimal.
MAX_INTEGER_DIGITS = 30
MAX_FRACTION_DIGITS = 18


def sealable(event: UsageEvent) -> None:
    """Refuse, at ingest, an event no record could carry (a flush would otherwise fail on it forever)."""
    try:
        Line(event.meter, event.unit, event.quantity, event.dimensions)
    except InvalidBody as exc:
        raise InvalidEvent(str(exc)) from None
    whole, _, fraction = event.quantity.lstrip("-").partition(".")
    if len(whole) > MAX_INTEGER_DIGITS or len(fraction) > MAX_FRACTION_DIGITS:
        raise InvalidEvent(
            f"quantity {event.quantity[:40]} has more than {MAX_INTEGER_DIGITS} digits before the point "
            f"or {MAX_FRACTION_DIGITS} after"
        )
_FMT = "%Y-%m-%dT%H:%M:%SZ"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")


@dataclass(frozen=True)
class RecorderConfig:
    data: Path
    grace_minutes: int
    relationship_of: dict[str, str]  # customer ref (CloudEvents subject, Stripe customer id, ...) -> relationship
    cadence_of: dict[str, Cadence]  # relationship -> cadence
    meters: dict[str, MeterMapping]  # event type / Stripe event_name -> meter
    zero_deltas: bool = False  # a delta for every window, even an idle one
    dedup_days: int = 35  # events older than this are refused: a replay of them could no longer be recognised

    def route(self, event: UsageEvent, now: datetime) -> tuple[UsageEvent, str, tuple[str, str]]:
        """(event, relationship, window) for an event this recorder may count at ``now``; InvalidEvent if not."""
        return self.router(now)(event)

    def router(self, now: datetime) -> Callable[[UsageEvent], tuple[UsageEvent, str, tuple[str, str]]]:
        """:meth:`route` for many events at one ``now``."""
        # Event times are canonical (YYYY-MM-DDTHH:MM:SSZ), so they compare as strings.
        oldest = (now - timedelta(days=self.dedup_days)).strftime(_FMT)
        newest = (now + FUTURE_SKEW).strftime(_FMT)

        def route(event: UsageEvent) -> tuple[UsageEvent, str, tuple[str, str]]:
            rid = self.relationship_of.get(event.customer)
            if rid is None:
                raise InvalidEvent(f"customer {event.customer!r} is not in the config")
            if event.time < oldest:
                raise InvalidEvent(
                    f"time {event.time} is more than {self.dedup_days} days ago, outside the dedup window: "
                    "a replay of it could not be told apart"
                )
            if event.time > newest:
                raise InvalidEvent(f"time {event.time} is in the future")
            sealable(event)
            event.canonical()  # refuses text that cannot be encoded before anything is stored
            return event, rid, self.cadence_of[rid].window(event.time)

        return route

    def zero_lines(self) -> tuple[Line, ...] | None:
        """The lines of an idle window's delta: each configured meter at zero (None: zero deltas are off)."""
        if not self.zero_deltas:
            return None
        pairs = sorted({(m.meter, m.unit) for m in self.meters.values()}) or [("events", "event")]
        return tuple(Line(meter, unit, "0", {}, 0) for meter, unit in pairs)


def load_config(path: Path) -> RecorderConfig:
    try:
        raw = tomllib.loads(read_text(path, "the recorder config"))
    except tomllib.TOMLDecodeError as exc:
        raise MalformedInput(f"{path}: {exc}") from None
    try:
        return parse_config(raw, path.parent)
    except MalformedInput as exc:
        raise MalformedInput(f"{path}: {exc}") from None


def parse_config(raw: dict, base: Path) -> RecorderConfig:  # type: ignore[type-arg]
    section = raw.get("recorder", {})
    if not isinstance(section, dict):
        raise MalformedInput("[recorder] is a table")
    grace = section.get("grace_minutes", 10)
    if not isinstance(grace, int) or isinstance(grace, bool) or not 0 <= grace <= 7 * 24 * 60:
        raise MalformedInput("[recorder] grace_minutes must be an integer number of minutes, at most a week")
    zero = section.get("zero_deltas", False)
    if not isinstance(zero, bool):
        raise MalformedInput("[recorder] zero_deltas is true or false")
    dedup_days = section.get("dedup_days", 35)
    if not isinstance(dedup_days, int) or isinstance(dedup_days, bool) or not 1 <= dedup_days <= 3660:
        raise MalformedInput("[recorder] dedup_days must be a whole number of days from 1 to 3660")
    unknown = set(section) - {"data", "grace_minutes", "zero_deltas", "dedup_days"}
    if unknown:
        raise MalformedInput(f"[recorder] has unknown keys: {', '.join(sorted(unknown))}")
    data = section.get("data", "recorder-data")
    if not isinstance(data, str) or not data:
        raise MalformedInput("[recorder] data is the spool's directory, a string")
    data = base / data
    relationship_of: dict[str, str] = {}
    cadence_of: dict[str, Cadence] = {}
    customers = raw.get("customers", [])
    if not isinstance(customers, list) or not customers:
        raise MalformedInput("the config needs at least one [[customers]] entry")
    for n, entry in enumerate(customers, 1):
        if not isinstance(entry, dict):
            raise MalformedInput(f"[[customers]] #{n}: is a table")
        ref, rid = entry.get("ref"), entry.get("relationship")
        if not isinstance(ref, str) or not ref or not isinstance(rid, str) or not _NAME.fullmatch(rid):
            raise MalformedInput(f"[[customers]] #{n}: needs ref and relationship")
        if ref in relationship_of:
            raise MalformedInput(f"[[customers]] #{n}: customer {ref!r} appears twice")
        relationship_of[ref] = rid
        cadence = Cadence.parse(str(entry.get("cadence", "daily")))
        if cadence_of.setdefault(rid, cadence) != cadence:
            raise MalformedInput(f"[[customers]] #{n}: relationship {rid} is listed before with another cadence")
    meters: dict[str, MeterMapping] = {}
    if not isinstance(raw.get("meters", {}), dict):
        raise MalformedInput("[meters] is a table of [meters.<event type>] tables")
    for name, m in raw.get("meters", {}).items():
        if not isinstance(m, dict) or not isinstance(m.get("meter"), str) or not _NAME.fullmatch(m["meter"]):
            raise MalformedInput(f"[meters.{name}]: needs a meter name")
        dims = m.get("dimensions", [])
        if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims):
            raise MalformedInput(f"[meters.{name}]: dimensions is a list of field names")
        unit = m.get("unit", "unit")
        if not isinstance(unit, str) or not _NAME.fullmatch(unit):
            raise MalformedInput(f"[meters.{name}]: unit must be a name (letters, digits, ._:/@-)")
        if not all(_NAME.fullmatch(d) for d in dims) or len(dims) > 32:
            raise MalformedInput(f"[meters.{name}]: at most 32 dimensions, each a name (letters, digits, ._:/@-)")
        meters[name] = MeterMapping(m["meter"], unit, str(m.get("value", "value")), tuple(dims))
    return RecorderConfig(data, grace, relationship_of, cadence_of, meters, zero, dedup_days)
