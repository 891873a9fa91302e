"""Refusals: a party whose requests keep being refused is slowed down, and only that party.

Every refusal (an error answer to one of its requests, or records of a batch refused) takes a token from
the party's bucket, which refills at ``rate`` tokens a second up to ``BURST_SECONDS`` seconds' worth. An
honest client, refused now and then (a conflict to retry, a record still in flight), never empties it. A
party whose bucket is empty is answered 429 ``slow_down`` before its request is read any further, after
waiting out its deficit (at most ``MAX_WAIT`` seconds): a flood of bad requests then costs the server a
request head and a timer each, and the flooding connections wait instead of sending more.

Requests that fail authentication are counted the same way against their peer address, so a flood of
bad tokens is slowed too; the public read routes, which have no party, are not.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..errors import PacspaceError

BURST_SECONDS = 10
MAX_WAIT = 1.0
# The refusals a request of the batch route counts for: one, and one more per this many refused records.
BATCH_ITEMS_PER_REFUSAL = 1000
_KEYS_KEPT = 10_000


class SlowDown(PacspaceError):
    """Too many of this party's requests were refused lately; retry after ``retry_after`` seconds."""

    code = "slow_down"
    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Bucket:
    tokens: float
    at: float


class Refusals:
    """The refusal buckets of one serving process, by party name (or ``addr:`` peer address)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = rate * BURST_SECONDS
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def deficit(self, key: str) -> float:
        """Seconds until ``key`` may be served again; 0 if now."""
        bucket = self._refilled(key)
        return 0.0 if bucket is None or bucket.tokens >= 0 else -bucket.tokens / self.rate

    def charge(self, key: str, refusals: float = 1.0) -> None:
        bucket = self._refilled(key)
        if bucket is None:
            if len(self._buckets) >= _KEYS_KEPT:
                self._forget_full()
            bucket = self._buckets[key] = _Bucket(self.burst, self._clock())
        bucket.tokens = max(bucket.tokens - refusals, -self.burst)

    async def admit(self, key: str) -> None:
        """Return at once if ``key`` may be served; else wait out its deficit (up to MAX_WAIT) and refuse."""
        wait = self.deficit(key)
        if wait > 0:
            await asyncio.sleep(min(wait, MAX_WAIT))
            raise SlowDown("too many of your requests were refused lately; slow down", max(1, math.ceil(wait)))

    def _refilled(self, key: str) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            now = self._clock()
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        return bucket

    def _forget_full(self) -> None:
        """Keep the table small: full buckets hold nothing worth remembering."""
        for key in [k for k, b in self._buckets.items() if self._refilled(k) and b.tokens >= self.burst]:
            del self._buckets[key]


REFUSALS = web.AppKey("refusals", Refusals)
# What a request is counted against, and the refusals it made beyond its answer's status.
_KEY: Any = web.RequestKey("refusal_key", str) if hasattr(web, "RequestKey") else "refusal_key"
_EXTRA: Any = web.RequestKey("refusals_extra", int) if hasattr(web, "RequestKey") else "refusals_extra"


async def admit(request: web.Request, key: str) -> None:
    """The request counts against ``key`` from here on; answered 429 if ``key`` was refused too often."""
    request[_KEY] = key
    await request.app[REFUSALS].admit(key)


def batch_refused(request: web.Request, records: int) -> None:
    """The batch route refused ``records`` of the request's records (its answer is still 200)."""
    if records:
        request[_EXTRA] = 1 + records // BATCH_ITEMS_PER_REFUSAL


def settle(request: web.Request, response: web.StreamResponse | None) -> None:
    """After the answer: charge the request's key for what was refused."""
    key = request.get(_KEY)
    if key is None:
        return
    refused = request.get(_EXTRA, 0)
    if response is not None and response.status >= 400 and response.status != 429:
        refused += 1
    if refused:
        request.app[REFUSALS].charge(key, refused)
