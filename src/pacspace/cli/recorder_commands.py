"""``pacspace recorder import|flush|status``: the provider's usage events in, committed deltas out."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..client.home import Home, default_home
from ..client.http import PacspaceClient
from ..errors import MalformedInput
from ..recorder.config import RecorderConfig, load_config
from ..recorder.events import (
    InvalidEvent,
    UsageEvent,
    anthropic_usage,
    cloudevent,
    openai_usage,
    read_jsonl,
    read_stripe_csv,
    stripe_event,
    utc_time,
)
from ..recorder.flush import FlushReport, flush
from ..recorder.plan import format_time
from ..recorder.spool import Spool

FORMATS = ("cloudevents", "stripe", "openai", "anthropic")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rec = sub.add_parser("recorder", help="(provider) usage events in, committed deltas out",
                         description="Turn usage events into one committed delta per customer per cadence window.")
    rsub = rec.add_subparsers(dest="recorder_command", metavar="COMMAND", required=True)
    p = rsub.add_parser("import", help="spool events from a file",
                        description="Read events (CloudEvents JSONL, Stripe meter-event CSV or JSONL, OpenAI or Anthropic "
                        "usage objects as JSONL) and spool them durably, deduplicated on their source ids. LLM usage "
                        "is mapped to disjoint meters so no token is counted twice.")
    p.add_argument("file", type=Path)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--config", type=Path, required=True, help="the recorder's TOML file (docs/recorder.md)")
    p.add_argument("--customer", help="the customer ref for usage objects that do not carry a 'customer' field")
    p.set_defaults(run=cmd_import)
    p = rsub.add_parser("flush", help="commit every window due by a time",
                        description="Commit what is due by --until (default now) minus the grace: one delta per "
                        "relationship per window that ended, late events flagged in the next delta or corrected, zero "
                        "deltas if configured, and the close of each month that ended. Sent through the batch endpoint. "
                        "Resumable: a flush that died is finished, never repeated. Prints a JSON summary.")
    p.add_argument("--config", type=Path, required=True, help="the recorder's TOML file (docs/recorder.md)")
    p.add_argument("--until", help="RFC 3339 UTC time (default: now)")
    p.add_argument("--url", help="the log server (default $PACSPACE_URL, else http://127.0.0.1:8080)")
    p.add_argument("--token", help="the provider's bearer token (default $PACSPACE_TOKEN)")
    p.add_argument("--home", type=Path, help="the provider's home (default $PACSPACE_HOME, else ~/.pacspace)")
    p.set_defaults(run=cmd_flush)
    p = rsub.add_parser("serve", help="accept CloudEvents over HTTP and flush on a timer",
                        description="Accept CloudEvents 1.0 at POST /events (application/cloudevents+json or "
                        "application/cloudevents-batch+json; 202 only once spooled durably), serve /metrics, and, "
                        "when PACSPACE_TOKEN is set, flush every window that is due every --flush-interval seconds.")
    p.add_argument("--config", type=Path, required=True, help="the recorder's TOML file (docs/recorder.md)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--flush-interval", type=float, default=60.0, metavar="SECONDS")
    p.set_defaults(run=cmd_serve)
    p = rsub.add_parser("prove-event", help="which delta counted an event, with a proof",
                        description="Print, for each meter of one source event, the committed delta that counted it "
                        "(relationship, seq, log index, window) and an RFC 9162 proof that the event is under that "
                        "delta's events_root. Give the file to the customer: `pacspace evidence verify-event FILE`.")
    p.add_argument("--config", type=Path, required=True, help="the recorder's TOML file (docs/recorder.md)")
    p.add_argument("--event-id", required=True, help="the source's event id (CloudEvents id, Stripe identifier, response id)")
    p.add_argument("--source", help="the event's source, if ids repeat across sources")
    p.set_defaults(run=cmd_prove_event)
    p = rsub.add_parser("status", help="spooled events and deltas", description="Counts from the spool.")
    p.add_argument("--config", type=Path, required=True, help="the recorder's TOML file (docs/recorder.md)")
    p.set_defaults(run=cmd_status)


def _parse(obj: dict[str, Any], fmt: str, config: RecorderConfig, customer: str | None) -> list[UsageEvent]:
    if fmt == "cloudevents":
        return [cloudevent(obj, config.meters)]
    if fmt == "stripe":
        return [stripe_event(obj, config.meters)]
    ref = obj.get("customer", customer)
    if not isinstance(ref, str):
        raise InvalidEvent("no customer: add a 'customer' field or pass --customer")
    return openai_usage(obj, ref) if fmt == "openai" else anthropic_usage(obj, ref)


def cmd_import(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        text = args.file.read_text()
    except OSError as exc:
        raise MalformedInput(f"cannot read {args.file}: {exc.strerror}") from None
    rows = read_stripe_csv(text) if args.format == "stripe" and not text.lstrip().startswith("{") else read_jsonl(text)
    batch: list[tuple[UsageEvent, str, tuple[str, str]]] = []
    rejected: list[str] = []
    now = datetime.now(timezone.utc)
    route = config.router(now)
    for number, obj in rows:
        try:
            if isinstance(obj, InvalidEvent):
                raise obj
            # All of a line's events (an LLM response's meters) or none of them.
            batch += [route(event) for event in _parse(obj, args.format, config, args.customer)]
        except InvalidEvent as exc:
            rejected.append(f"line {number}: {exc}")
    spool = Spool(config.data)
    try:
        accepted, duplicates = spool.accept(batch, format_time(now))
    finally:
        spool.close()
    for reason in rejected[:20]:
        print(f"pacspace: rejected {reason}", file=sys.stderr)
    if len(rejected) > 20:
        print(f"pacspace: ... and {len(rejected) - 20} more rejected lines", file=sys.stderr)
    print(json.dumps({"accepted": accepted, "duplicates": duplicates, "rejected": len(rejected)}))
    return 0 if not rejected else 1


def cmd_flush(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    # --until may be in the future: windows are then committed as if that time had come (for tests, drills).
    until = utc_time(args.until) if args.until else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    url = args.url or os.environ.get("PACSPACE_URL") or "http://127.0.0.1:8080"
    token = args.token or os.environ.get("PACSPACE_TOKEN")
    if not token:
        raise MalformedInput("no token: set PACSPACE_TOKEN or pass --token")
    home = Home(args.home or default_home())

    async def main() -> int:
        spool = Spool(config.data)
        try:
            async with PacspaceClient(url, token) as client:
                report = await flush(client, home, spool, config, until,
                                     progress=lambda line: print(f"pacspace: {line}", file=sys.stderr))
        finally:
            spool.close()
        for error in report.errors:
            print(f"pacspace: {error}", file=sys.stderr)
        print(json.dumps(report.to_json()))
        return 1 if report.errors else 0

    return asyncio.run(main())


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    spool = Spool(config.data)
    try:
        print(json.dumps(spool.status()))
    finally:
        spool.close()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from aiohttp import web

    from ..recorder.server import create_recorder_app

    config = load_config(args.config)
    url = os.environ.get("PACSPACE_URL") or "http://127.0.0.1:8080"
    token = os.environ.get("PACSPACE_TOKEN")
    home = Home(default_home())
    flusher = None
    if token:
        async def flusher(spool: Spool) -> FlushReport:
            async with PacspaceClient(url, token) as client:
                until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                report = await flush(client, home, spool, config, until)
            return report
    else:
        print("pacspace: PACSPACE_TOKEN is not set: events are spooled but not flushed", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"pacspace: recorder on http://{args.host}:{args.port}/events", file=sys.stderr)
    web.run_app(create_recorder_app(config, flusher, args.flush_interval), host=args.host, port=args.port,
                print=None, access_log=None)
    return 0


def cmd_prove_event(args: argparse.Namespace) -> int:
    import base64

    from ..recorder.aggregate import events_root, prove_event
    from ..records.body import Delta, decode_body

    config = load_config(args.config)
    spool = Spool(config.data)
    try:
        found = spool.find_event(args.event_id, args.source)
        if not found:
            raise MalformedInput(f"no spooled event with id {args.event_id!r}")
        proofs = []
        for rid, seq, event in found:
            record = None if seq is None else spool.record(rid, seq)
            if record is None or record.index is None:
                raise MalformedInput(f"event {args.event_id!r} of {rid} is not in a committed record yet (run a flush)")
            digests = [e.digest() for e in spool.counted_by(rid, seq)]
            if event.digest() not in digests:
                raise MalformedInput(f"the spool no longer lists the events of {rid} seq {seq}: no proof can be made")
            index, size, path = prove_event(digests, event.digest())
            body = decode_body(record.body)
            proofs.append({
                "relationship": rid, "seq": seq, "log_index": record.index, "kind": record.kind,
                "window_start": body.window_start if isinstance(body, Delta) else None,
                "events_root": events_root(digests).hex(), "event": json.loads(event.canonical()),
                "index": index, "size": size, "path": [base64.b64encode(h).decode() for h in path],
            })
    finally:
        spool.close()
    print(json.dumps({"format": "pacspace.event-proof/v1", "proofs": proofs}, indent=1))
    return 0
