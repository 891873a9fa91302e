"""``pacspace recorder import|flush|status``: the provider's usage events in, committed deltas out."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import exitcodes
from ..client.home import Home, default_home
from ..client.http import PacspaceClient, server_url
from ..errors import MalformedInput, PacspaceError
from ..files import read_text
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
from ..recorder.flush import FlushReport, cutoff, flush
from ..recorder.plan import format_time, next_period, period_end
from ..recorder.spool import Spool
from ..recorder.windows import period_of
from .argtypes import port, seconds
from .listen import listen
from .party import DEFAULT_URL, common, home_of, server_of

FORMATS = ("cloudevents", "stripe", "openai", "anthropic")


class NotCommittedYet(PacspaceError):
    """prove-event: the event is spooled, and no committed record counts it yet."""

    code = "not_committed_yet"
    exit_code = exitcodes.INCOMPLETE


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rec = sub.add_parser("recorder", help="(provider) usage events in, committed deltas out",
                         description="Turn usage events into one committed delta per customer per cadence window.")
    rsub = rec.add_subparsers(dest="recorder_command", metavar="COMMAND", required=True)
    p = rsub.add_parser("import", help="spool events from a file",
                        description="Read events (CloudEvents JSONL, Stripe meter-event CSV or JSONL, OpenAI or Anthropic "
                        "usage objects as JSONL; docs/recorder.md shows each) and spool them durably, deduplicated on "
                        "their source ids. LLM usage is mapped to disjoint meters so no token is counted twice. Prints "
                        "a JSON summary. Exit 2 if any line was rejected (each is named on stderr; the others are "
                        "spooled).")
    p.add_argument("file", type=Path, help="the events: JSONL, or CSV for --format stripe")
    p.add_argument("--format", required=True, choices=FORMATS, help="the events' format")
    _config_arg(p)
    p.add_argument("--customer", metavar="REF",
                   help="the customer ref for usage objects that do not carry a 'customer' field (default: none)")
    p.set_defaults(run=cmd_import)
    p = rsub.add_parser("flush", help="commit every window due by a time",
                        description="Commit what is due by --until (default now) minus the grace: one delta per "
                        "relationship per window that ended, late events flagged in the next delta or corrected, zero "
                        "deltas if configured, and the close of each month that ended. Sent through the batch endpoint. "
                        "Resumable: a flush that died is finished, never repeated. Checks the server, the token and the "
                        "keys even when nothing is due. Prints a JSON summary; exit 1 if a relationship failed.")
    _config_arg(p)
    p.add_argument("--until", metavar="TIME",
                   help="RFC 3339 UTC time; one in the future needs --force (default: now)")
    p.add_argument("--force", action="store_true",
                   help="allow --until in the future: windows and months that have not ended are committed and closed "
                   "as if that time had come (a drill)")
    common(p)
    p.set_defaults(run=cmd_flush)
    p = rsub.add_parser("serve", help="accept CloudEvents over HTTP and flush on a timer",
                        description="Accept CloudEvents 1.0 at POST /events (application/cloudevents+json or "
                        "application/cloudevents-batch+json; 202 only once spooled durably), serve /metrics, and, "
                        "when PACSPACE_TOKEN is set, flush every window that is due every --flush-interval seconds "
                        "(to PACSPACE_URL, as the provider of PACSPACE_HOME).")
    _config_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=port, default=8090, help="port to listen on")
    p.add_argument("--flush-interval", type=seconds(), default=60.0, metavar="SECONDS",
                   help="seconds between flushes, above 0")
    p.set_defaults(run=cmd_serve)
    p = rsub.add_parser("prove-event", help="which delta counted an event, with a proof",
                        description="Print, for each meter of one source event, the committed delta that counted it "
                        "(relationship, seq, log index, window) and an RFC 9162 proof that the event is under that "
                        "delta's events_root. Give the file to the customer: `pacspace evidence verify-event FILE`.")
    _config_arg(p)
    p.add_argument("--event-id", required=True, metavar="ID",
                   help="the source's event id (CloudEvents id, Stripe identifier, response id)")
    p.add_argument("--source", help="the event's source, if ids repeat across sources (default: any)")
    p.set_defaults(run=cmd_prove_event)
    p = rsub.add_parser("status", help="spooled events and deltas; checks the server",
                        description="Print counts from the spool as JSON, then check the server, the token and the "
                        "keys a flush would use (exit 3 if the server is unreachable, 2 if it refuses the token).")
    _config_arg(p)
    common(p)
    p.set_defaults(run=cmd_status)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, metavar="FILE", help="the recorder's TOML file (docs/recorder.md)")


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
    text = read_text(args.file, "the events file")
    rows = read_stripe_csv(text) if args.format == "stripe" and not text.lstrip().startswith("{") else read_jsonl(text)
    batch: list[tuple[UsageEvent, str, tuple[str, str]]] = []
    rejected: list[str] = []
    now = datetime.now(timezone.utc)
    route = config.router(now)
    try:
        for number, obj in rows:
            try:
                if isinstance(obj, InvalidEvent):
                    raise obj
                # All of a line's events (an LLM response's meters) or none of them.
                batch += [route(event) for event in _parse(obj, args.format, config, args.customer)]
            except InvalidEvent as exc:
                rejected.append(f"line {number}: {exc}")
    except csv.Error as exc:
        raise MalformedInput(f"the events file {args.file} is not CSV: {exc}") from None
    spool = Spool(config.data)
    try:
        accepted, duplicates = spool.accept(batch, format_time(now))
    finally:
        spool.close()
    print(json.dumps({"accepted": accepted, "duplicates": duplicates, "rejected": len(rejected)}))
    if not rejected:
        return exitcodes.OK
    for reason in rejected[:20]:
        print(f"pacspace: rejected {reason}", file=sys.stderr)
    more = " (the first 20 are above)" if len(rejected) > 20 else ""
    raise MalformedInput(f"{len(rejected)} line(s) of {args.file} rejected{more}; {accepted} new event(s) spooled")


def _months_ending(after: str, by: str) -> list[str]:
    """The months that end after ``after`` and by ``by``: what a flush at ``by`` closes that one at ``after`` would not."""
    months: list[str] = []
    period = period_of(after)
    for _ in range(1200):
        if period_end(period) > by:
            break
        if period_end(period) > after:
            months.append(period)
        period = next_period(period)
    return months


def _until(args: argparse.Namespace, config: RecorderConfig) -> str:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if not args.until:
        return now
    until = utc_time(args.until)
    if until <= now:
        return until
    limit = cutoff(until, config.grace_minutes)
    months = _months_ending(cutoff(now, config.grace_minutes), limit)
    shown = ", ".join(months[:12]) + (f" and {len(months) - 12} more" if len(months) > 12 else "")
    what = f"it commits every window that ends by {limit}" + (f" and closes {shown} for every relationship "
                                                              "with usage in it" if months else "")
    if not args.force:
        raise MalformedInput(f"--until {until} is in the future: {what}, before that time has come; pass --force "
                             "if this is a drill")
    print(f"pacspace: --until {until} is in the future (--force): {what}", file=sys.stderr)
    return until


async def _provider(client: PacspaceClient, home: Home) -> str:
    """The server answers, takes the token, and knows it as a provider; the home holds the keys. Its name."""
    me = await client.me()
    if me.get("role") != "provider":
        raise MalformedInput(f"the token is {me.get('name')}'s, a {me.get('role')}: the recorder commits as a provider")
    home.keys()
    return str(me.get("name"))


def cmd_flush(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    until = _until(args, config)
    url, token = server_of(args)
    home = home_of(args)

    async def main() -> int:
        async with PacspaceClient(url, token) as client:
            await _provider(client, home)
            spool = Spool(config.data)
            try:
                report = await flush(client, home, spool, config, until,
                                     progress=lambda line: print(f"pacspace: {line}", file=sys.stderr))
            finally:
                spool.close()
        print(json.dumps(report.to_json()))
        if not report.errors:
            return exitcodes.OK
        for error in report.errors:
            print(f"pacspace: {error}", file=sys.stderr)
        raise PacspaceError(f"{len(report.errors)} error(s) in this flush (above); what did not fail is committed")

    return asyncio.run(main())


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    spool = Spool(config.data)
    try:
        print(json.dumps(spool.status()), flush=True)
    finally:
        spool.close()
    url, token = server_of(args)
    home = home_of(args)

    async def main() -> int:
        async with PacspaceClient(url, token) as client:
            name = await _provider(client, home)
        print(f"pacspace: {client.url} answers; the token is {name}'s, and {home.path} holds its keys", file=sys.stderr)
        return exitcodes.OK

    return asyncio.run(main())


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from aiohttp import web

    from ..recorder.server import create_recorder_app

    config = load_config(args.config)
    url = server_url(os.environ.get("PACSPACE_URL") or DEFAULT_URL)
    token = os.environ.get("PACSPACE_TOKEN")
    home = Home(default_home())
    flusher = None
    if token:
        async def flusher(spool: Spool) -> FlushReport:
            async with PacspaceClient(url, token) as client:
                until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                report = await flush(client, home, spool, config, until)
            return report
    # Bound before anything is created (the spool is opened once the app starts).
    sock = listen(args.host, args.port)
    if not token:
        print("pacspace: PACSPACE_TOKEN is not set: events are spooled but not flushed", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_recorder_app(config, flusher, args.flush_interval)

    async def announce(app: web.Application) -> None:
        print(f"pacspace: recorder on http://{args.host}:{args.port}/events", file=sys.stderr)

    app.on_startup.append(announce)
    web.run_app(app, sock=sock, print=None, access_log=None)
    return exitcodes.OK


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
            if seq is None or record is None or record.index is None:
                raise NotCommittedYet(f"event {args.event_id!r} of {rid} is not in a committed record yet (run a flush)")
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
