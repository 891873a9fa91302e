"""The usage chart: an inline SVG, drawn server-side, of a period's usage on a real time axis. Pure.

One panel per meter and unit, each with its own scale; within a panel one line
per combination of dimensions. Each window's quantity is drawn at the middle of
the window, at its place in the month, so an hourly meter and a daily one sit
on the same time axis. Quantities are exact decimals; floats only place pixels.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from ..records.body import canonical_decimal, period_bounds

WIDTH, LEFT, RIGHT = 900, 96, 16
PANEL, AXIS, LEGEND, TOP = 120, 30, 15, 24  # a panel's plot, its time labels, one legend line; the first title
MAX_DOTS = 200  # per series: beyond this the line alone is drawn
PALETTE = ("#0969da", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#cf222e", "#0a7ea4", "#6e7781")


@dataclass(frozen=True)
class Sample:
    start: datetime
    end: datetime
    meter: str
    unit: str
    label: str  # the dimensions, as text ("" for none)
    quantity: Decimal


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def usage_chart(samples: list[Sample], period: str) -> str:
    """The SVG (or a sentence when the period has no usage)."""
    if not samples:
        return "<p>No usage records in this period.</p>"
    start, end = (parse_time(t) for t in period_bounds(period))
    panels: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        panels.setdefault((s.meter, s.unit), []).append(s)
    drawn, top = [], TOP
    for (meter, unit), items in sorted(panels.items()):
        drawn.append(_panel(meter, unit, items, top, (start, end)))
        top += PANEL + AXIS + LEGEND * len({s.label for s in items}) + TOP
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{top}" '
            f'viewBox="0 0 {WIDTH} {top}" role="img" aria-label="usage per window in {html.escape(period)}">'
            + "".join(drawn) + "</svg>")


def _panel(meter: str, unit: str, items: list[Sample], top: int, span: tuple[datetime, datetime]) -> str:
    series: dict[str, dict[tuple[datetime, datetime], Decimal]] = {}
    for s in items:
        windows = series.setdefault(s.label, {})
        windows[(s.start, s.end)] = windows.get((s.start, s.end), Decimal(0)) + s.quantity
    values = [q for w in series.values() for q in w.values()]
    low, high = min(min(values), Decimal(0)), max(max(values), Decimal(0))
    if low == high:
        high = low + 1
    scale = _Scale(span, (low, high), top)
    parts = [f'<g class="panel" data-meter="{html.escape(meter)}" data-unit="{html.escape(unit)}" '
             f'data-max="{canonical_decimal(max(values))}">',
             f'<text x="{LEFT}" y="{top - 8}" class="panel-title" font-size="13" font-weight="600">'
             f'{html.escape(meter)} ({html.escape(unit)})</text>',
             _axes(scale, (low, high)), _time_axis(scale)]
    for i, (label, windows) in enumerate(sorted(series.items())):
        parts.append(_series(scale, label or "all", unit, sorted(windows.items()), PALETTE[i % len(PALETTE)], i))
    parts.append("</g>")
    return "".join(parts)


@dataclass(frozen=True)
class _Scale:
    span: tuple[datetime, datetime]
    values: tuple[Decimal, Decimal]
    top: int

    def x(self, when: datetime) -> float:
        start, end = self.span
        fraction = (when - start) / (end - start)
        return LEFT + min(1.0, max(0.0, fraction)) * (WIDTH - LEFT - RIGHT)

    def y(self, value: Decimal) -> float:
        low, high = self.values
        return self.top + PANEL - float((value - low) / (high - low)) * PANEL


def _axes(scale: _Scale, bounds: tuple[Decimal, Decimal]) -> str:
    zero = scale.y(Decimal(0))
    out = [f'<line x1="{LEFT}" y1="{scale.top}" x2="{LEFT}" y2="{scale.top + PANEL}" stroke="#8c959f"/>',
           f'<line x1="{LEFT}" y1="{zero:.1f}" x2="{WIDTH - RIGHT}" y2="{zero:.1f}" stroke="#8c959f"/>']
    for value in sorted(set(bounds) | {Decimal(0)}):
        y = scale.y(value)
        label = f"{value:,f}" if value else "0"
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{html.escape(label)}</text>')
        out.append(f'<line x1="{LEFT - 3}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#eaeef2"/>')
    return "".join(out)


def _time_axis(scale: _Scale) -> str:
    """A tick at each day's start, a date under every seventh from the 1st."""
    start, end = scale.span
    bottom = scale.top + PANEL
    out = []
    day = start
    while day <= end:
        x = scale.x(day)
        out.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#8c959f"/>')
        if (day.day - 1) % 7 == 0 and day < end:
            out.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" font-size="10">{day:%b} {day.day}</text>')
        day += timedelta(days=1)
    return "".join(out)


def _series(scale: _Scale, label: str, unit: str, windows: list[tuple[tuple[datetime, datetime], Decimal]],
            color: str, i: int) -> str:
    points = [(scale.x(s + (e - s) / 2), scale.y(q)) for (s, e), q in windows]
    out = [f'<g class="series" data-label="{html.escape(label)}">',
           f'<polyline fill="none" stroke="{color}" stroke-width="1.8" '
           f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in points)}"/>']
    if len(points) <= MAX_DOTS:
        for ((s, e), q), (x, y) in zip(windows, points):
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"><title>'
                       f'{s:%Y-%m-%d %H:%M}–{e:%H:%M} UTC: {canonical_decimal(q)} {html.escape(unit)} '
                       f'({html.escape(label)})</title></circle>')
    legend_y = scale.top + PANEL + AXIS + LEGEND * i
    out.append(f'<rect x="{LEFT}" y="{legend_y - 9}" width="10" height="10" fill="{color}"/>'
               f'<text x="{LEFT + 14}" y="{legend_y}" font-size="11">{html.escape(label)}</text></g>')
    return "".join(out)
