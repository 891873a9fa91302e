"""Normalized usage events, the importers that produce them, and their canonical digests. Pure.

Every source (CloudEvents, Stripe meter events, OpenAI and Anthropic usage
objects) becomes :class:`UsageEvent`: one customer's quantity of one meter at
one time, with its source's event id (the dedup key). LLM usage objects are
mapped to *disjoint* meters (shared/specs usage-events §2.4), so that the axes
of one response sum to the provider's totals and no token is counted twice:
OpenAI's ``prompt_tokens`` includes cached tokens, Anthropic's
``input_tokens`` does not, and both map to the same uncached/cache-read axes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from ..errors import MalformedInput
from ..records.body import canonical_decimal


class InvalidEvent(MalformedInput):
    """An event that cannot be counted; ``reason`` says why. It is rejected whole, never half-counted."""

    code = "invalid_event"


@dataclass(frozen=True)
class UsageEvent:
    source: str
    event_id: str
    customer: str
    meter: str
    unit: str
    quantity: str  # canonical decimal string
    time: str  # RFC 3339 UTC, seconds
    dimensions: dict[str, str] = field(default_factory=dict)

    @property
    def dedup_key(self) -> tuple[str, str, str]:
        """One source event may yield several meters (an LLM response): dedup is per (source, id, meter)."""
        return self.source, self.event_id, self.meter

    def canonical(self) -> bytes:
        """The canonical JSON of the event's fields (records.canonical rules); InvalidEvent if not valid Unicode."""
        cached: bytes | None = self.__dict__.get("_canonical")
        if cached is None:
            try:
                cached = _canonical_event(self)
            except UnicodeEncodeError:
                raise InvalidEvent(f"event {self.event_id[:40]!r} holds text that is not valid Unicode") from None
            object.__setattr__(self, "_canonical", cached)  # computed once: checked at routing, stored at accept
        return cached

    def digest(self) -> bytes:
        """What ``events_root`` commits to: SHA-256 of the event's canonical JSON."""
        return hashlib.sha256(self.canonical()).digest()


_INT_FAST = 10**18
_str = json.encoder.encode_basestring  # JSON string, non-ASCII kept (ensure_ascii=False)


def _canonical_event(e: UsageEvent) -> bytes:
    """records.canonical.encode of the event's fields, written out: the keys in sorted order, every value a
    string (tests/test_recorder.py checks it byte for byte against canonical.encode)."""
    dims = ",".join(f"{_str(k)}:{_str(v)}" for k, v in sorted(e.dimensions.items()))
    return (
        f'{{"customer":{_str(e.customer)},"dimensions":{{{dims}}},"id":{_str(e.event_id)},"meter":{_str(e.meter)},'
        f'"quantity":{_str(e.quantity)},"source":{_str(e.source)},"time":{_str(e.time)},"unit":{_str(e.unit)}}}'
    ).encode("utf-8")


_CANONICAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def utc_time(value: Any) -> str:
    """RFC 3339 or Unix seconds (or milliseconds) to ``YYYY-MM-DDTHH:MM:SSZ``."""
    if isinstance(value, str) and _CANONICAL_TIME.fullmatch(value):
        try:
            datetime.fromisoformat(value[:-1])  # a real date and time (no February 30th)
            return value
        except ValueError:
            raise InvalidEvent(f"time {value!r} is not RFC 3339 with a zone, or Unix seconds") from None
    try:
        if isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"[0-9]{9,13}", value)):
            seconds = float(value)
            if seconds > 1e11:  # milliseconds
                seconds /= 1000
            when = datetime.fromtimestamp(seconds, timezone.utc)
        elif isinstance(value, str):
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError("no time zone")
            when = when.astimezone(timezone.utc)
        else:
            raise ValueError("not a time")
    except (ValueError, OverflowError, OSError):
        raise InvalidEvent(f"time {value!r} is not RFC 3339 with a zone, or Unix seconds") from None
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _quantity(value: Any, what: str) -> str:
    if isinstance(value, bool) or value is None:
        raise InvalidEvent(f"{what} is not a number")
    if type(value) is int and -_INT_FAST < value < _INT_FAST:
        return str(value)  # already canonical: the common case, token counts
    if isinstance(value, float):
        # Floats arrive from JSON sources; their shortest repr is what the sender meant.
        value = repr(value)
    try:
        text = canonical_decimal(str(value))
    except MalformedInput:
        raise InvalidEvent(f"{what} {value!r} is not a decimal") from None
    return text


def _int(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidEvent(f"{what} must be a non-negative integer")
    return value


# --- LLM usage objects -------------------------------------------------------


def _response(obj: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """An LLM API response's usage object, id and model, which every usage record needs."""
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        raise InvalidEvent("no usage object")
    event_id, model = obj.get("id"), obj.get("model")
    if not isinstance(event_id, str) or not event_id or not isinstance(model, str):
        raise InvalidEvent("a usage record needs the response id and model")
    return usage, event_id, model


def openai_usage(obj: dict[str, Any], customer: str, source: str = "openai") -> list[UsageEvent]:
    """An OpenAI response (Chat Completions or Responses API) with ``id``, ``model``, ``created`` and ``usage``."""
    usage, event_id, model = _response(obj)
    if "prompt_tokens" in usage:  # Chat Completions
        prompt = _int(usage.get("prompt_tokens"), "prompt_tokens")
        completion = _int(usage.get("completion_tokens"), "completion_tokens")
        pdet = usage.get("prompt_tokens_details") or {}
        cdet = usage.get("completion_tokens_details") or {}
        cached = _int(pdet.get("cached_tokens"), "cached_tokens")
        reasoning = _int(cdet.get("reasoning_tokens"), "reasoning_tokens")
        rejected = _int(cdet.get("rejected_prediction_tokens"), "rejected_prediction_tokens")
    else:  # Responses API
        prompt = _int(usage.get("input_tokens"), "input_tokens")
        completion = _int(usage.get("output_tokens"), "output_tokens")
        cached = _int((usage.get("input_tokens_details") or {}).get("cached_tokens"), "cached_tokens")
        reasoning = _int((usage.get("output_tokens_details") or {}).get("reasoning_tokens"), "reasoning_tokens")
        rejected = 0
    # prompt includes cached; completion includes reasoning and rejected predictions (billed as output).
    uncached, visible = prompt - cached, completion - reasoning - rejected
    if uncached < 0 or visible < 0:
        raise InvalidEvent("usage details exceed their totals")
    axes = {
        "llm.input.uncached_tokens": uncached,
        "llm.input.cache_read_tokens": cached,
        "llm.output.visible_tokens": visible,
        "llm.output.reasoning_tokens": reasoning,
        "llm.output.rejected_prediction_tokens": rejected,
    }
    dims = {"model": model}
    if isinstance(obj.get("service_tier"), str):
        dims["service_tier"] = obj["service_tier"]
    when = utc_time(obj.get("created", obj.get("created_at")))
    events = [UsageEvent(source, event_id, customer, m, "token", str(q), when, dims) for m, q in axes.items() if q]
    events.append(UsageEvent(source, event_id, customer, "llm.requests", "request", "1", when, dims))
    return events


def anthropic_usage(obj: dict[str, Any], customer: str, source: str = "anthropic") -> list[UsageEvent]:
    """An Anthropic Messages response (``id``, ``model``, ``usage``) plus a ``created_at`` time."""
    usage, event_id, model = _response(obj)
    when = utc_time(obj.get("created_at"))
    dims = {"model": model}
    if isinstance(usage.get("service_tier"), str):
        dims["service_tier"] = usage["service_tier"]
    # input_tokens excludes cache reads and writes: the three are already disjoint.
    axes: list[tuple[str, int, dict[str, str]]] = [
        ("llm.input.uncached_tokens", _int(usage.get("input_tokens"), "input_tokens"), dims),
        ("llm.input.cache_read_tokens", _int(usage.get("cache_read_input_tokens"), "cache_read_input_tokens"), dims),
        ("llm.output.visible_tokens", _int(usage.get("output_tokens"), "output_tokens"), dims),
    ]
    written = _int(usage.get("cache_creation_input_tokens"), "cache_creation_input_tokens")
    split = usage.get("cache_creation") or {}
    five, hour = _int(split.get("ephemeral_5m_input_tokens"), "5m"), _int(split.get("ephemeral_1h_input_tokens"), "1h")
    if split and five + hour != written:
        raise InvalidEvent("cache_creation's split does not add up to cache_creation_input_tokens")
    if not split:
        five = written
    axes += [
        ("llm.input.cache_write_tokens", five, {**dims, "ttl": "5m"}),
        ("llm.input.cache_write_tokens", hour, {**dims, "ttl": "1h"}),
    ]
    tools = usage.get("server_tool_use") or {}
    events = [UsageEvent(source, event_id, customer, m, "token", str(q), when, d) for m, q, d in axes if q]
    for tool, count in sorted(tools.items()):
        if _int(count, f"server_tool_use.{tool}"):
            name = tool.removesuffix("_requests")
            events.append(UsageEvent(source, event_id, customer, f"llm.server_tool.{name}", "request", str(count), when, dims))
    events.append(UsageEvent(source, event_id, customer, "llm.requests", "request", "1", when, dims))
    return events


# --- metering systems -------------------------------------------------------


@dataclass(frozen=True)
class MeterMapping:
    """How one event type becomes a meter: where its value is, its unit, and which fields are dimensions."""

    meter: str
    unit: str
    value: str  # a dotted path into the event data ("tokens", "payload.value")
    dimensions: tuple[str, ...] = ()


def _path(data: Any, dotted: str) -> Any:
    if "." not in dotted:
        return data.get(dotted) if isinstance(data, dict) else None
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def cloudevent(obj: dict[str, Any], meters: dict[str, MeterMapping]) -> UsageEvent:
    """A CloudEvents 1.0 event (the shape OpenMeter takes): ``type`` picks the meter, ``subject`` the customer."""
    if obj.get("specversion") != "1.0":
        raise InvalidEvent("specversion must be 1.0")
    for key in ("id", "source", "type", "subject"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise InvalidEvent(f"a CloudEvent needs a non-empty {key}")
    mapping = meters.get(obj["type"])
    if mapping is None:
        raise InvalidEvent(f"no meter is configured for event type {obj['type']!r}")
    data = obj.get("data") or {}
    quantity = _quantity(_path(data, mapping.value), f"data.{mapping.value}")
    dims = {d: str(v) for d in mapping.dimensions if (v := _path(data, d)) is not None}
    when = utc_time(obj["time"]) if "time" in obj else None
    if when is None:
        raise InvalidEvent("a CloudEvent needs a time")
    return UsageEvent(obj["source"], obj["id"], obj["subject"], mapping.meter, mapping.unit, quantity, when, dims)


def stripe_event(row: dict[str, Any], meters: dict[str, MeterMapping]) -> UsageEvent:
    """A Stripe meter event (bulk CSV/JSONL): ``identifier``, ``timestamp``, ``event_name``, ``payload[...]``."""
    given = row.get("payload")
    payload: dict[str, Any] = given if isinstance(given, dict) else {
        k[len("payload["):-1] if k.startswith("payload[") else k.removeprefix("payload_"): v
        for k, v in row.items()
        if k.startswith("payload")
    }
    identifier, name = row.get("identifier"), row.get("event_name")
    customer = payload.get("stripe_customer_id")
    if not identifier or not isinstance(name, str) or not customer:
        raise InvalidEvent("a Stripe meter event needs identifier, event_name and payload.stripe_customer_id")
    mapping = meters.get(name) or MeterMapping(name, "unit", "value")
    quantity = _quantity(payload.get(mapping.value.removeprefix("payload.")), "payload.value")
    dims = {d: str(payload[d]) for d in mapping.dimensions if d in payload}
    return UsageEvent("stripe", str(identifier), str(customer), mapping.meter, mapping.unit, quantity,
                      utc_time(row.get("timestamp")), dims)


def read_jsonl(text: str) -> Iterator[tuple[int, dict[str, Any] | InvalidEvent]]:
    """Each line's object, or the reason it is not one; numbered from 1."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_float=Decimal)
        except ValueError as exc:
            yield number, InvalidEvent(f"not JSON: {exc}")
            continue
        yield number, obj if isinstance(obj, dict) else InvalidEvent("not a JSON object")


def read_stripe_csv(text: str) -> Iterator[tuple[int, dict[str, Any] | InvalidEvent]]:
    """Each row as a dict of its header's names, or the reason it is not one; numbered as lines, the header 1."""
    for number, row in enumerate(csv.DictReader(io.StringIO(text)), 2):
        # DictReader files extra fields under None.
        yield number, InvalidEvent("more fields than the header names") if None in row else dict(row)
