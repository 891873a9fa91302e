"""Request bodies: how many bytes each route takes from each role, checked before a byte is read; then
read within a deadline, against a budget of the body bytes the process holds at once.

Order of refusals, cheapest first: a declared Content-Length over the most any role may send the
route is 413 before authentication (the app's middleware calls :func:`refuse_declared`); a caller
whose role may not write the route is refused by its handler before it reads (403); a body read is cut
off at the caller's limit (413, Content-Length or chunked), and must arrive within ``body_timeout``
seconds plus one a MiB of its declared length, or of that limit if chunked (408). The batch route's
body is decoded while it arrives (batch_body.py for JSON, records/batchwire.py for the binary encoding its
Content-Type names), never held whole.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..errors import MalformedInput, PacspaceError
from ..records import batchwire
from ..records.batchwire import BatchRecord
from ..records.seal import BLOB_OVERHEAD, MAX_BUCKET
from .batch_body import BatchDecoder
from .context import CONFIG

MiB = 1 << 20
# One record as JSON: its ciphertext in base64 (4/3 of at most MAX_BLOB bytes) and the rest, with room.
RECORD_BODY = 2 * (MAX_BUCKET + BLOB_OVERHEAD)
BATCH_BODY = 64 * MiB
SMALL_BODY = 4096
_CHUNK = 64 << 10


class TooLarge(PacspaceError):
    code = "too_large"
    http_status = 413


class UnsupportedMediaType(PacspaceError):
    code = "unsupported_media_type"
    http_status = 415


class BodyTimeout(PacspaceError):
    code = "body_timeout"
    http_status = 408


class Busy(PacspaceError):
    """The process holds as many request bodies as it may; nothing of this one was read."""

    code = "busy"
    http_status = 503
    retry_after = 1


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes each role may send a route; 0 for a role the route never reads a body from."""

    provider: int = 0
    customer: int = 0

    def of(self, role: str | None) -> int:
        """The limit for ``role``; None: the most any role may send."""
        if role is None:
            return max(self.provider, self.customer)
        return self.provider if role == "provider" else self.customer


LIMITS: dict[tuple[str, str], BodyLimit] = {
    ("POST", "/v1/records"): BodyLimit(provider=BATCH_BODY),
    ("POST", "/v1/relationships"): BodyLimit(provider=RECORD_BODY),
    ("POST", "/v1/relationships/{rid}/records"): BodyLimit(provider=RECORD_BODY),
    ("PUT", "/v1/me/keys"): BodyLimit(provider=SMALL_BODY, customer=SMALL_BODY),
    ("POST", "/v1/relationships/{rid}/acceptance"): BodyLimit(customer=SMALL_BODY),
    ("POST", "/v1/relationships/{rid}/decline"): BodyLimit(customer=SMALL_BODY),
}
MAX_BODY = max(max(limit.provider, limit.customer) for limit in LIMITS.values())


class BodyBudget:
    """Request-body bytes a process holds at once: each request reserves what it may read before reading it,
    and gives it back when its answer is made (what it parsed from the body is held that long)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._freed = asyncio.Event()

    async def reserve(self, n: int) -> int:
        n = min(n, self.total)
        while self.free < n:
            self._freed.clear()
            await self._freed.wait()
        self.free -= n
        return n

    def release(self, n: int) -> None:
        self.free += n
        self._freed.set()


BUDGET = web.AppKey("body_budget", BodyBudget)
# The bytes a request reserved, stored on it (a typed key where aiohttp has them, from 3.13).
_RESERVED: Any = web.RequestKey("body_reserved", int) if hasattr(web, "RequestKey") else "body_reserved"


def _limit(request: web.Request) -> BodyLimit | None:
    route = request.match_info.route.resource
    return None if route is None else LIMITS.get((request.method, route.canonical))


def limit_of(request: web.Request, role: str) -> int:
    """The most bytes ``role`` may send this request's route (0 if the route takes no body from it)."""
    limit = _limit(request)
    return 0 if limit is None else limit.of(role)


def refuse_declared(request: web.Request) -> None:
    """Before anything else: a declared body larger than any role may send this route. (Routes without a
    limit here read no body; the few bytes of one that arrives are dropped, see protocol.LINGER_BYTES.)"""
    declared, limit = request.content_length, _limit(request)
    if declared and limit is not None and declared > limit.of(None):
        raise TooLarge(f"request body exceeds {limit.of(None)} bytes")


def release(request: web.Request) -> None:
    """Give back the request's reservation (the app's middleware, once the handler is done)."""
    held = request.get(_RESERVED)
    if held:
        request[_RESERVED] = 0
        request.app[BUDGET].release(held)


async def read_forwarded(request: web.Request) -> bytes:
    """The body a standby forwards to the sequencer (standby.py), held to the largest limit of any route, the body
    budget and the body timeout; the sequencer then applies the route's own limit for the caller's role."""
    if not request.can_read_body:
        return b""
    data = bytearray()
    await _read(request, MAX_BODY, data.extend)
    return bytes(data)


async def read_json(request: web.Request, role: str) -> dict[str, Any]:
    """The body, a JSON object of at most the route's limit for ``role``."""
    data = bytearray()

    def take(chunk: bytes) -> None:
        data.extend(chunk)

    await _read(request, limit_of(request, role), take)
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedInput("request body is not JSON") from None
    if not isinstance(body, dict):
        raise MalformedInput("request body must be a JSON object")
    return body


async def read_records(
    request: web.Request,
    role: str,
    on_item: Callable[[Any], None],
    max_item: int,
    on_records: Callable[[list[BatchRecord]], None],
) -> None:
    """The batch route's body as it arrives. JSON (``{"records": [...]}``; the default when no Content-Type is
    given): ``on_item`` gets each item. The binary encoding (batchwire.CONTENT_TYPE): ``on_records`` gets the
    records each chunk completed, checked. Any other Content-Type is 415, before a byte is read."""
    if records_encoding(request) == batchwire.CONTENT_TYPE:
        wire = batchwire.RecordsDecoder()

        def take_records(chunk: bytes) -> None:
            records = wire.feed(chunk)
            if records:
                on_records(records)

        await _read(request, limit_of(request, role), take_records)
        wire.end()
        return
    decoder = BatchDecoder(max_item)

    def take(chunk: bytes) -> None:
        for item in decoder.feed(chunk):
            on_item(item)

    await _read(request, limit_of(request, role), take)
    for item in decoder.end():
        on_item(item)


def records_encoding(request: web.Request) -> str:
    """The batch body's media type: JSON unless the Content-Type names the binary encoding; 415 for any other."""
    if "Content-Type" not in request.headers:
        return "application/json"
    kind = request.content_type
    if kind not in ("application/json", batchwire.CONTENT_TYPE):
        raise UnsupportedMediaType(f"the body is application/json or {batchwire.CONTENT_TYPE}, not {kind[:100]}")
    return kind


async def _read(request: web.Request, limit: int, take: Callable[[bytes], None]) -> None:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise TooLarge(f"request body exceeds {limit} bytes")
    allowed = request.app[CONFIG].body_timeout + (limit if declared is None else declared) / MiB
    try:
        async with asyncio.timeout(allowed):
            await _reserve(request, limit if declared is None else declared)
            await _take_chunks(request, limit, take)
    except TimeoutError:
        if request.get(_RESERVED) is None:
            raise Busy("the server holds as many request bodies as it may; retry") from None
        raise BodyTimeout(f"the request body did not arrive within {allowed:.0f} seconds") from None


async def _reserve(request: web.Request, n: int) -> None:
    request[_RESERVED] = await request.app[BUDGET].reserve(n)


async def _take_chunks(request: web.Request, limit: int, take: Callable[[bytes], None]) -> None:
    seen = 0
    while chunk := await request.content.read(_CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise TooLarge(f"request body exceeds {limit} bytes")
        take(chunk)
        await asyncio.sleep(0)  # a body already buffered must not keep others from the event loop
