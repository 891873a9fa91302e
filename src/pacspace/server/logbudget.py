"""Rate-limited logging: whatever floods a serving process, its log grows by at most a few KB a second.

A filter on the handlers of the root logger (where ``pacspace serve`` and its workers send every
record, aiohttp's and asyncio's included) spends a byte budget: ``rate`` bytes a second, up to a burst
of ``BURST_SECONDS`` seconds' worth. A record that does not fit is dropped and counted; the next one
that fits says how many were dropped. A traceback is kept only for the first record of its kind (its
logger, message and exception type) in ``TRACEBACK_EVERY`` seconds; the others keep one line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

BURST_SECONDS = 16
TRACEBACK_EVERY = 60.0
# What a record costs beyond its message: the time, level and logger name a formatter adds.
_LINE_OVERHEAD = 80
_FORMATTER = logging.Formatter()


class LogBudget(logging.Filter):
    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate * BURST_SECONDS)
        self._at = clock()
        self._dropped = 0
        self._tracebacks: dict[tuple[str, object, type], float] = {}
        # One decision per record, however many handlers it passes.
        self._last: tuple[logging.LogRecord | None, bool] = (None, True)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._last[0] is record:
            return self._last[1]
        keep = self._decide(record)
        self._last = (record, keep)
        return keep

    def _decide(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        self._tokens = min(self.rate * BURST_SECONDS, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if record.exc_info and record.exc_info[0] is not None:
            self._one_traceback(record, now)
        cost = _LINE_OVERHEAD + len(record.getMessage()) + len(record.exc_text or "")
        if cost > self._tokens:
            self._dropped += 1
            return False
        self._tokens -= cost
        if self._dropped:
            record.msg = f"{record.getMessage()} [{self._dropped} log records dropped: over the log budget]"
            record.args = None
            self._dropped = 0
        return True

    def _one_traceback(self, record: logging.LogRecord, now: float) -> None:
        assert record.exc_info is not None and record.exc_info[0] is not None
        kind = (record.name, record.msg, record.exc_info[0])
        if now - self._tracebacks.get(kind, -TRACEBACK_EVERY) >= TRACEBACK_EVERY:
            self._tracebacks[kind] = now
            if len(self._tracebacks) > 1000:
                self._tracebacks.clear()
            if not record.exc_text:
                record.exc_text = _FORMATTER.formatException(record.exc_info)
            return
        record.msg = f"{record.getMessage()}: {record.exc_info[1]!r} (traceback logged already)"
        record.args = None
        record.exc_info = None
        record.exc_text = None


def install(rate: int) -> LogBudget:
    """Put a budget of ``rate`` bytes a second on the root logger's handlers (replacing an earlier one)."""
    budget = LogBudget(rate)
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, LogBudget)]:
            handler.removeFilter(old)
        handler.addFilter(budget)
    return budget
