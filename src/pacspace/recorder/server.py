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

from ..server.writer import GroupWriter
from .config import RecorderConfig
from .events import InvalidEvent, UsageEvent, cloudevent
from .flush import FlushReport
from .plan import format_time, parse_time
from .spool import Spool, accept_op

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
    closed: int = 0
    flush_errors: int = 0
    # Per cadence: when a flush last sealed one of its windows, and the end of the latest such window.
    cadence_flushed: dict[str, float] = field(default_factory=dict)
    cadence_window_end: dict[str, str] = field(default_factory=dict)

    def observe(self, report: FlushReport, now: float) -> None:
        self.flushes += 1
        self.committed += report.committed
        self.closed += report.closed
        self.flush_errors += len(report.errors)
        self.last_flush = now
        for cadence, end in report.windows_written.items():
            self.cadence_flushed[cadence] = now
            self.cadence_window_end[cadence] = max(self.cadence_window_end.get(cadence, ""), end)

    def render(self, spool_events: int, pending: int) -> str:
        rows = [
            ("pacspace_recorder_events_accepted_total", "counter", self.accepted),
            ("pacspace_recorder_events_duplicate_total", "counter", self.duplicates),
            ("pacspace_recorder_events_rejected_total", "counter", self.rejected),
            ("pacspace_recorder_spool_events", "gauge", spool_events),
            ("pacspace_recorder_spool_pending_events", "gauge", pending),
            ("pacspace_recorder_flushes_total", "counter", self.flushes),
            ("pacspace_recorder_records_committed_total", "counter", self.committed),
            ("pacspace_recorder_closes_committed_total", "counter", self.closed),
            ("pacspace_recorder_flush_errors_total", "counter", self.flush_errors),
            ("pacspace_recorder_last_flush_timestamp_seconds", "gauge", round(self.last_flush, 3)),
        ]
        out = "".join(f"# TYPE {n} {t}\n{n} {v}\n" for n, t, v in rows)
        out += "# TYPE pacspace_recorder_cadence_last_flush_timestamp_seconds gauge\n"
        out += "".join(f'pacspace_recorder_cadence_last_flush_timestamp_seconds{{cadence="{c}"}} {round(t, 3)}\n'
                       for c, t in sorted(self.cadence_flushed.items()))
        out += "# TYPE pacspace_recorder_cadence_last_window_end_timestamp_seconds gauge\n"
        out += "".join(f'pacspace_recorder_cadence_last_window_end_timestamp_seconds{{cadence="{c}"}} '
                       f"{int(parse_time(end).timestamp())}\n" for c, end in sorted(self.cadence_window_end.items()))
        return out


@dataclass
class Recorder:
    config: RecorderConfig
    spool: Spool
    writer: GroupWriter  # concurrent ingest requests share one fsync
    metrics: RecorderMetrics = field(default_factory=RecorderMetrics)
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)


RECORDER = web.AppKey("recorder", Recorder)


def create_recorder_app(
    config: RecorderConfig,
    flusher: Callable[[Spool], Awaitable[FlushReport]] | None = None,
    flush_interval: float = 60.0,
) -> web.Application:
    """The app; ``flusher`` (if given) runs a flush every ``flush_interval`` seconds."""
    app = web.Application(client_max_size=MAX_BODY)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        spool = Spool(config.data)
        recorder = Recorder(config, spool, GroupWriter(spool))
        app[RECORDER] = recorder
        tasks = [asyncio.create_task(recorder.writer.run())]
        if flusher:
            tasks.append(asyncio.create_task(_flush_loop(recorder, flusher, flush_interval)))
        yield
        for task in tasks:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        spool.close()

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
    route = recorder.config.router(now)
    for item in items:
        try:
            if not isinstance(item, dict):
                raise InvalidEvent("an event is a JSON object")
            batch.append(route(cloudevent(item, recorder.config.meters)))
        except InvalidEvent as exc:
            rejected.append({"id": item.get("id") if isinstance(item, dict) else None, "reason": str(exc)})
    # Spooled and fsynced before the 202: an accepted event is never lost.
    (accepted, duplicates), = await recorder.writer.write([accept_op(batch, format_time(now))])
    recorder.metrics.accepted += accepted
    recorder.metrics.duplicates += duplicates
    recorder.metrics.rejected += len(rejected)
    return _json({"accepted": accepted, "duplicates": duplicates, "rejected": rejected}, 202)


async def get_health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def get_metrics(request: web.Request) -> web.Response:
    recorder = request.app[RECORDER]
    total, pending = await asyncio.to_thread(recorder.spool.depth)
    text = recorder.metrics.render(total, pending)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def _flush_loop(
    recorder: Recorder, flusher: Callable[[Spool], Awaitable[FlushReport]], interval: float
) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            report = await flusher(recorder.spool)
        except Exception as exc:  # a flush that fails is retried at the next interval; it is resumable
            log.error("flush failed: %s", exc)
            recorder.metrics.flush_errors += 1
            continue
        recorder.metrics.observe(report, time.time())
        for error in report.errors:
            log.error("flush: %s", error)
