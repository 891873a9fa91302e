"""The usage chart: one panel per meter and unit, each with its own scale, on a real time axis."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal

from pacspace.client.chart import LEFT, RIGHT, WIDTH, Sample, usage_chart


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=timezone.utc)


def test_panels_have_their_own_scale_and_windows_sit_at_their_time():
    svg = usage_chart([
        Sample(at(1), at(1, 1), "tokens", "token", "model=m-1", Decimal("1000000")),
        Sample(at(16), at(17), "tokens", "token", "model=m-1", Decimal("250000")),  # a daily window
        Sample(at(16), at(16, 1), "requests", "request", "", Decimal("3")),
        Sample(at(16), at(16, 1), "requests", "request", "", Decimal("2")),  # the same window twice: added up
    ], "2026-11")
    assert re.findall(r'data-meter="([^"]+)" data-unit="([^"]+)" data-max="([^"]+)"', svg) == [
        ("requests", "request", "5"), ("tokens", "token", "1000000")]
    requests, tokens = svg.split('data-meter="tokens"')
    span = WIDTH - LEFT - RIGHT

    def days(part: str) -> list[float]:
        return [round((float(x) - LEFT) / span * 30, 2) for x in re.findall(r'<circle cx="([0-9.]+)"', part)]

    assert days(tokens) == [0.02, 15.5] and days(requests) == [15.02]
    assert "1,000,000" in tokens and ">Nov 1<" in svg and ">Nov 29<" in svg


def test_negative_corrections_and_hostile_labels():
    svg = usage_chart([Sample(at(2), at(2, 1), "m", "u", 'model="x" <b>', Decimal("-0.75")),
                       Sample(at(3), at(3, 1), "m", "u", 'model="x" <b>', Decimal("2"))], "2026-11")
    assert ">-0.75<" in svg and "<b>" not in svg and "&lt;b&gt;" in svg and "&quot;x&quot;" in svg
    assert usage_chart([], "2026-11") == "<p>No usage records in this period.</p>"
