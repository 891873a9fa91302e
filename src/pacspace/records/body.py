"""Sealed record bodies: one versioned schema per kind, canonical JSON both ways. Pure.

Every body carries ``schema``, ``relationship``, ``seq`` (gapless from 0),
``prev`` (hex SHA-256 of the previous body's canonical bytes; zeros for
genesis), ``kind``, ``record_id`` and ``created_at``. Quantities are decimal
strings, never floats. Parsing re-encodes and compares, so a body has exactly
one byte form and its hash is well defined.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Set as AbstractSet
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
import decimal
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Union

from ..errors import MalformedInput
from . import canonical

Kind = Literal["genesis", "delta", "correction", "close"]
SCHEMAS: dict[str, str] = {
    "genesis": "pacspace.genesis/v1",
    "delta": "pacspace.usage_delta/v1",
    "correction": "pacspace.correction/v1",
    "close": "pacspace.close/v1",
}
GENESIS_PREV = "0" * 64
CADENCES = re.compile(r"daily|hourly|[1-9][0-9]{0,3}m")
BILLING_CYCLES = ("monthly",)

_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?")
_COUNT = re.compile(r"0|[1-9][0-9]{0,18}")
_HEX32 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z")
_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class InvalidBody(MalformedInput):
    """A record body that does not follow its schema."""

    code = "invalid_body"


# Quantities are exact: arithmetic on them runs with this many significant digits and refuses to
# round (decimal.Inexact is trapped), and a quantity string is at most MAX_DECIMAL_DIGITS long.
DECIMAL_PRECISION = 200
MAX_DECIMAL_DIGITS = 64


def exact() -> decimal.Context:
    return decimal.Context(prec=DECIMAL_PRECISION, traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])


def canonical_decimal(value: Decimal | int | str) -> str:
    """The one string form of a decimal: no exponent, no '+', no leading or trailing zeros, no '-0'."""
    try:
        d = exact().create_decimal(value)
    except (InvalidOperation, decimal.Inexact, ValueError, TypeError):
        raise InvalidBody(f"{value!r} is not a decimal of at most {DECIMAL_PRECISION} digits") from None
    if not d.is_finite():
        raise InvalidBody(f"{value!r} is not a finite decimal")
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    text = "0" if text in ("-0", "") else text
    if len(text) > MAX_DECIMAL_DIGITS:
        raise InvalidBody(f"decimal {text[:20]}... is longer than {MAX_DECIMAL_DIGITS} characters")
    return text


def _decimal(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_DECIMAL_DIGITS or not _DECIMAL.fullmatch(value) or value == "-0":
        raise InvalidBody(f"{what} must be a canonical decimal string, got {value!r}")
    return value


def _count(value: Any, what: str) -> int:
    if not isinstance(value, str) or not _COUNT.fullmatch(value):
        raise InvalidBody(f"{what} must be a non-negative integer string, got {value!r}")
    return int(value)


def _match(pattern: re.Pattern[str], value: Any, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidBody(f"{what} is malformed: {value!r}")
    return value


def _dimensions(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 32:
        raise InvalidBody("dimensions must be an object of at most 32 string pairs")
    for k, v in value.items():
        _match(_NAME, k, "dimension name")
        if not isinstance(v, str) or len(v) > 256:
            raise InvalidBody(f"dimension {k!r} must be a string of at most 256 characters")
    return dict(value)


def _keys(obj: Any, required: AbstractSet[str], optional: AbstractSet[str] = frozenset(),
          what: str = "body") -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidBody(f"{what} must be an object")
    missing = required - obj.keys()
    extra = obj.keys() - required - optional
    if missing:
        raise InvalidBody(f"{what} lacks {', '.join(sorted(missing))}")
    if extra:
        raise InvalidBody(f"{what} has unknown fields {', '.join(sorted(extra))}")
    return obj


_LINE_KEYS, _LINE_OPTIONAL = frozenset({"meter", "unit", "quantity", "dimensions"}), frozenset({"event_count", "late"})


@dataclass(frozen=True)
class Line:
    """One meter's quantity in a window, for one combination of dimensions."""

    meter: str
    unit: str
    quantity: str
    dimensions: dict[str, str] = field(default_factory=dict)
    event_count: int | None = None
    # Usage of earlier windows whose delta was already written: counted here, flagged, never amended there.
    late: bool = False

    def __post_init__(self) -> None:
        _match(_NAME, self.meter, "meter")
        _match(_NAME, self.unit, "unit")
        _decimal(self.quantity, f"quantity of {self.meter}")
        # Its own copy: the caller's dict could change under the cached key.
        object.__setattr__(self, "dimensions", _dimensions(self.dimensions))

    def key(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        return self._key

    @cached_property  # the rules ask each line's key several times a record
    def _key(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        return self.meter, self.unit, tuple(sorted(self.dimensions.items()))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "meter": self.meter,
            "unit": self.unit,
            "quantity": self.quantity,
            "dimensions": dict(self.dimensions),
        }
        if self.event_count is not None:
            out["event_count"] = str(self.event_count)
        if self.late:
            out["late"] = "true"
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Line:
        _keys(obj, _LINE_KEYS, _LINE_OPTIONAL, "line")
        if "late" in obj and obj["late"] != "true":
            raise InvalidBody('a line\'s "late" flag is "true" or absent')
        count = obj.get("event_count")
        # __post_init__ checks the meter, unit, quantity and dimensions.
        return cls(
            meter=obj["meter"],
            unit=obj["unit"],
            quantity=obj["quantity"],
            dimensions=obj["dimensions"],
            event_count=None if count is None else _count(count, "event_count"),
            late="late" in obj,
        )


@dataclass(frozen=True)
class PartyKeys:
    """A party's public keys as the genesis record names them."""

    name: str
    x25519: str  # base64 of the 32-byte public key
    ed25519: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "x25519": self.x25519, "ed25519": self.ed25519}

    @classmethod
    def from_json(cls, obj: Any, what: str) -> PartyKeys:
        _keys(obj, {"name", "x25519", "ed25519"}, what=what)
        for k in ("name", "x25519", "ed25519"):
            if not isinstance(obj[k], str) or not obj[k]:
                raise InvalidBody(f"{what}.{k} must be a non-empty string")
        return cls(obj["name"], obj["x25519"], obj["ed25519"])


@dataclass(frozen=True)
class Common:
    relationship: str
    seq: int
    prev: str
    record_id: str
    created_at: str

    def __post_init__(self) -> None:
        _match(_ID, self.relationship, "relationship")
        if not 0 <= self.seq < 1 << 63:
            raise InvalidBody(f"seq {self.seq} is out of range")
        _match(_HEX32, self.prev, "prev")
        _match(_ID, self.record_id, "record_id")
        _match(_TIME, self.created_at, "created_at")


@dataclass(frozen=True)
class Genesis:
    common: Common
    provider: PartyKeys
    customer: PartyKeys
    cadence: str = "daily"
    billing_cycle: str = "monthly"
    kind: Kind = "genesis"

    def __post_init__(self) -> None:
        if self.common.seq != 0 or self.common.prev != GENESIS_PREV:
            raise InvalidBody("genesis is seq 0 with an all-zero prev")
        _match(CADENCES, self.cadence, "cadence")
        if self.billing_cycle not in BILLING_CYCLES:
            raise InvalidBody(f"billing_cycle must be one of {', '.join(BILLING_CYCLES)}")


@dataclass(frozen=True)
class Delta:
    """Usage in one window; as a correction, ``corrects`` names the seq it adjusts (nothing is amended)."""

    common: Common
    period: str
    window_start: str
    window_end: str
    lines: tuple[Line, ...]
    evidence: dict[str, str] | None = None
    corrects: int | None = None

    def __post_init__(self) -> None:
        if self.common.seq == 0:
            raise InvalidBody("seq 0 is the genesis record")
        _match(_PERIOD, self.period, "period")
        _match(_TIME, self.window_start, "window.start")
        _match(_TIME, self.window_end, "window.end")
        if self.window_end < self.window_start:
            raise InvalidBody("window ends before it starts")
        if not self.lines or len(self.lines) > 1000:
            raise InvalidBody("a delta has 1 to 1000 lines")
        if len({(line.key(), line.late) for line in self.lines}) != len(self.lines):
            raise InvalidBody("two lines share a meter, unit, dimensions and lateness")
        if self.evidence is not None:
            _keys(self.evidence, set(), {"events_root", "events_count", "source"}, "evidence")
            if "events_root" in self.evidence:
                _match(_HEX32, self.evidence["events_root"], "evidence.events_root")
            if "events_count" in self.evidence:
                _count(self.evidence["events_count"], "evidence.events_count")
            if "source" in self.evidence:
                _match(_NAME, self.evidence["source"], "evidence.source")
        if self.corrects is not None and not 0 < self.corrects < self.common.seq:
            raise InvalidBody("a correction corrects an earlier delta")

    @property
    def kind(self) -> Kind:
        return "delta" if self.corrects is None else "correction"


@dataclass(frozen=True)
class Close:
    """The end of a billing period: exactly which records it covers, and their totals."""

    common: Common
    period: str
    first_seq: int
    last_seq: int
    record_count: int
    chain_head: str
    totals: tuple[Line, ...]
    kind: Kind = "close"

    def __post_init__(self) -> None:
        _match(_PERIOD, self.period, "period")
        _match(_HEX32, self.chain_head, "chain_head")
        if not 0 < self.first_seq <= self.last_seq + 1 or self.last_seq >= self.common.seq:
            raise InvalidBody("a close covers earlier records: 0 < first_seq <= last_seq + 1 <= seq")
        if self.record_count < 0 or self.record_count > self.last_seq - self.first_seq + 1:
            raise InvalidBody("record_count cannot exceed the seqs covered")


Body = Union[Genesis, Delta, Close]


def to_json(body: Body) -> dict[str, Any]:
    c = body.common
    out: dict[str, Any] = {
        "schema": SCHEMAS[body.kind],
        "kind": body.kind,
        "relationship": c.relationship,
        "seq": str(c.seq),
        "prev": c.prev,
        "record_id": c.record_id,
        "created_at": c.created_at,
    }
    if isinstance(body, Genesis):
        out.update(
            provider=body.provider.to_json(),
            customer=body.customer.to_json(),
            cadence=body.cadence,
            billing_cycle=body.billing_cycle,
        )
    elif isinstance(body, Delta):
        out.update(
            period=body.period,
            window={"start": body.window_start, "end": body.window_end},
            lines=[line.to_json() for line in body.lines],
        )
        if body.evidence is not None:
            out["evidence"] = dict(body.evidence)
        if body.corrects is not None:
            out["corrects"] = str(body.corrects)
    else:
        out.update(
            period=body.period,
            first_seq=str(body.first_seq),
            last_seq=str(body.last_seq),
            record_count=str(body.record_count),
            chain_head=body.chain_head,
            totals=[line.to_json() for line in body.totals],
        )
    return out


def encode_body(body: Body) -> bytes:
    # The fields are validated when a body is built: to_json holds only strings, lists and objects.
    return canonical.encode_checked(to_json(body))


def body_hash(encoded: bytes) -> str:
    """What the next record's ``prev`` (and a close's ``chain_head``) names: hex SHA-256 of the canonical body."""
    return hashlib.sha256(encoded).hexdigest()


_COMMON = frozenset({"schema", "kind", "relationship", "seq", "prev", "record_id", "created_at"})
_GENESIS_KEYS = _COMMON | {"provider", "customer", "cadence", "billing_cycle"}
_DELTA_KEYS = _COMMON | {"period", "window", "lines"}
_CORRECTION_KEYS = _DELTA_KEYS | {"corrects"}
_CLOSE_KEYS = _COMMON | {"period", "first_seq", "last_seq", "record_count", "chain_head", "totals"}
_WINDOW_KEYS, _EVIDENCE = frozenset({"start", "end"}), frozenset({"evidence"})


def decode_body(data: bytes) -> Body:
    """Parse and validate a canonical body; raises InvalidBody or canonical.NotCanonical.

    The form is checked once, at the end: the body built from the bytes must encode to exactly them (which
    canonical.decode's own re-encoding would only repeat)."""
    obj = canonical.parse(data)
    if not isinstance(obj, dict):
        raise InvalidBody("a body is an object")
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in SCHEMAS or obj.get("schema") != SCHEMAS[kind]:
        raise InvalidBody(f"unknown kind or schema: {kind!r} / {obj.get('schema')!r}")
    common = Common(
        relationship=obj.get("relationship"),  # type: ignore[arg-type]
        seq=_count(obj.get("seq"), "seq"),
        prev=obj.get("prev"),  # type: ignore[arg-type]
        record_id=obj.get("record_id"),  # type: ignore[arg-type]
        created_at=obj.get("created_at"),  # type: ignore[arg-type]
    )
    body: Body
    if kind == "genesis":
        _keys(obj, _GENESIS_KEYS)
        body = Genesis(
            common,
            PartyKeys.from_json(obj["provider"], "provider"),
            PartyKeys.from_json(obj["customer"], "customer"),
            cadence=obj["cadence"],
            billing_cycle=obj["billing_cycle"],
        )
    elif kind in ("delta", "correction"):
        _keys(obj, _CORRECTION_KEYS if kind == "correction" else _DELTA_KEYS, _EVIDENCE)
        window = _keys(obj["window"], _WINDOW_KEYS, what="window")
        if not isinstance(obj["lines"], list):
            raise InvalidBody("lines must be a list")
        body = Delta(
            common,
            period=obj["period"],
            window_start=window["start"],
            window_end=window["end"],
            lines=tuple(Line.from_json(line) for line in obj["lines"]),
            evidence=obj.get("evidence"),
            corrects=_count(obj["corrects"], "corrects") if kind == "correction" else None,
        )
    else:
        _keys(obj, _CLOSE_KEYS)
        if not isinstance(obj["totals"], list):
            raise InvalidBody("totals must be a list")
        body = Close(
            common,
            period=obj["period"],
            first_seq=_count(obj["first_seq"], "first_seq"),
            last_seq=_count(obj["last_seq"], "last_seq"),
            record_count=_count(obj["record_count"], "record_count"),
            chain_head=obj["chain_head"],
            totals=tuple(Line.from_json(line) for line in obj["totals"]),
        )
    try:
        again = encode_body(body)
    except UnicodeEncodeError:
        raise canonical.NotCanonical("JSON string holds a lone surrogate") from None
    if again != data:
        raise canonical.NotCanonical("body is not in canonical form")
    return body


class Tally:
    """Running sums of lines per (meter, unit, dimensions), exact: what a close's totals must equal."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, str, tuple[tuple[str, str], ...]], Decimal] = {}
        self._ctx = exact()

    def add(self, delta: Delta) -> None:
        for line in delta.lines:
            key = line.key()
            self._sums[key] = self._ctx.add(self._sums.get(key, Decimal(0)), self._ctx.create_decimal(line.quantity))

    def to_json(self) -> list[list[Any]]:
        return [[m, u, [list(d) for d in dims], canonical_decimal(total)] for (m, u, dims), total in sorted(self._sums.items())]

    @classmethod
    def from_json(cls, rows: list[list[Any]]) -> Tally:
        tally = cls()
        for m, u, dims, total in rows:
            tally._sums[(m, u, tuple((k, v) for k, v in dims))] = tally._ctx.create_decimal(total)
        return tally

    def lines(self) -> tuple[Line, ...]:
        """The sums in a stable order, as a close states them."""
        return tuple(
            Line(meter, unit, canonical_decimal(total), dict(dims))
            for (meter, unit, dims), total in sorted(self._sums.items())
        )


def totals(deltas: Iterable[Delta]) -> tuple[Line, ...]:
    """Sum of the lines of deltas and corrections, per (meter, unit, dimensions), in a stable order."""
    tally = Tally()
    for delta in deltas:
        tally.add(delta)
    return tally.lines()


@lru_cache(maxsize=1024)  # every delta of a month asks for the same month
def period_bounds(period: str) -> tuple[str, str]:
    """A billing period (a month, YYYY-MM) as its first instant and the first instant after it."""
    year, month = int(period[:4]), int(period[5:7])
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return f"{period}-01T00:00:00Z", f"{year:04d}-{month:02d}-01T00:00:00Z"
