"""Cadence windows, aligned to UTC. Pure.

``daily`` windows start at 00:00 UTC, ``hourly`` on the hour, ``<N>m`` every N
minutes from midnight (N must divide a day, so no window crosses a day or a
month: every window belongs to exactly one billing period).
"""

from __future__ import annotations

import re
from functools import lru_cache
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ..errors import MalformedInput

_MINUTES = re.compile(r"([1-9][0-9]{0,3})m")
DAY = 24 * 60
_FMT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Cadence:
    minutes: int

    @classmethod
    def parse(cls, text: str) -> Cadence:
        if text == "daily":
            return cls(DAY)
        if text == "hourly":
            return cls(60)
        match = _MINUTES.fullmatch(text)
        if match is None or DAY % int(match.group(1)):
            raise MalformedInput(f"cadence {text!r}: use daily, hourly, or <N>m with N dividing 1440")
        return cls(int(match.group(1)))

    @property
    def name(self) -> str:
        return "daily" if self.minutes == DAY else "hourly" if self.minutes == 60 else f"{self.minutes}m"

    def window(self, time: str) -> tuple[str, str]:
        """The [start, end) window holding ``time`` (``YYYY-MM-DDTHH:MM:SSZ``, as utc_time writes it)."""
        return _window(self.minutes, time[:16])


@lru_cache(maxsize=65536)
def _window(minutes: int, minute: str) -> tuple[str, str]:
    # Keyed by the minute (YYYY-MM-DDTHH:MM): events arrive in bursts of the same few minutes.
    minute_of_day = int(minute[11:13]) * 60 + int(minute[14:16])
    first = minute_of_day - minute_of_day % minutes
    start = f"{minute[:11]}{first // 60:02d}:{first % 60:02d}:00Z"
    if first + minutes < DAY:
        end_minute = first + minutes
        return start, f"{minute[:11]}{end_minute // 60:02d}:{end_minute % 60:02d}:00Z"
    next_day = datetime.strptime(minute[:10], "%Y-%m-%d").replace(tzinfo=timezone.utc) + timedelta(days=1)
    return start, next_day.strftime(_FMT)


def period_of(window_start: str) -> str:
    """The billing period (month) a window belongs to."""
    return window_start[:7]
