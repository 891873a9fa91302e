"""``pacspace recorder serve``: CloudEvents over HTTP into the spool (202 only once durable), and periodic flushes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from .config import RecorderConfig
from .events import InvalidEvent, UsageEvent, cloudevent
from .plan import format_time
from .spool import Spool

log = logging.getLogger("pacspace.recorder")
MAX_BODY = 32 << 20
SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


@dataclass
class RecorderMetrics:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    flushes: int = 0
    last_flush: float = 0.0
    committed: int = 0
    flush_errors: int = 0

    def render(self, spool_events: int) -> str:
        rows = [
            ("pacspace_recorder_events_accepted_total", "counter", self.accepted),
            ("pacspace_recorder_events_duplicate_total", "counter", self.duplicates),
            ("pacspace_recorder_events_rejected_total", "counter", self.rejected),
            ("pacspace_recorder_spool_events", "gauge", spool_events),
            ("pacspace_recorder_flushes_total", "counter", self.flushes),
            ("pacspace_recorder_deltas_committed_total", "counter", self.committed),
            ("pacspace_recorder_flush_errors_total", "counter", self.flush_errors),
            ("pacspace_recorder_last_flush_timestamp_seconds", "gauge", round(self.last_flush, 3)),
        ]
        return "".join(f"# TYPE {n} {t}\n{n} {v}\n" for n, t, v in rows)


@dataclass
class Recorder:
    config: RecorderConfig
    spool: Spool
    metrics: RecorderMetrics = field(default_factory=RecorderMetrics)
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)


RECORDER = web.AppKey("recorder", Recorder)


def create_recorder_app(
    config: RecorderConfig,
    flusher: Callable[[Spool], Awaitable[tuple[int, list[str]]]] | None = None,
    flush_interval: float = 60.0,
) -> web.Application:
    """The app; ``flusher`` (if given) runs every ``flush_interval`` seconds and returns (committed, errors)."""
    app = web.Application(client_max_size=MAX_BODY)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        recorder = Recorder(config, Spool(config.data))
        app[RECORDER] = recorder
        task = asyncio.create_task(_flush_loop(recorder, flusher, flush_interval)) if flusher else None
        yield
        if task:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        recorder.spool.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/events", post_events)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/health", get_health)
    return app


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


async def post_events(request: web.Request) -> web.Response:
    recorder = request.app[RECORDER]
    ctype = request.content_type
    if ctype not in (SINGLE, BATCH, "application/json"):
        return _json({"error": "unsupported_media_type", "message": f"send {SINGLE} or {BATCH}"}, 415)
    try:
        payload = json.loads(await request.read())
    except (ValueError, RecursionError):
        return _json({"error": "malformed", "message": "the body is not JSON"}, 400)
    items = payload if isinstance(payload, list) else [payload]
    if ctype == BATCH and not isinstance(payload, list):
        return _json({"error": "malformed", "message": "a CloudEvents batch is a JSON array"}, 400)
    batch: list[tuple[UsageEvent, str, tuple[str, str]]] = []
    rejected: list[dict[str, Any]] = []
    now = recorder.clock()
    for item in items:
        try:
            if not isinstance(item, dict):
                raise InvalidEvent("an event is a JSON object")
            batch.append(recorder.config.route(cloudevent(item, recorder.config.meters), now))
        except InvalidEvent as exc:
            rejected.append({"id": item.get("id") if isinstance(item, dict) else None, "reason": str(exc)})
    # Spooled and fsynced before the 202: an accepted event is never lost.
    accepted, duplicates = await asyncio.to_thread(recorder.spool.accept, batch, format_time(now))
    recorder.metrics.accepted += accepted
    recorder.metrics.duplicates += duplicates
    recorder.metrics.rejected += len(rejected)
    return _json({"accepted": accepted, "duplicates": duplicates, "rejected": rejected}, 202)


async def get_health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def get_metrics(request: web.Request) -> web.Response:
    recorder = request.app[RECORDER]
    events = recorder.spool.status()["events"]
    return web.Response(text=recorder.metrics.render(events), content_type="text/plain", charset="utf-8")


async def _flush_loop(
    recorder: Recorder, flusher: Callable[[Spool], Awaitable[tuple[int, list[str]]]], interval: float
) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            committed, errors = await flusher(recorder.spool)
        except Exception as exc:  # a flush that fails is retried at the next interval; it is resumable
            log.error("flush failed: %s", exc)
            recorder.metrics.flush_errors += 1
            continue
        recorder.metrics.flushes += 1
        recorder.metrics.committed += committed
        recorder.metrics.flush_errors += len(errors)
        recorder.metrics.last_flush = time.time()
        for error in errors:
            log.error("flush: %s", error)
