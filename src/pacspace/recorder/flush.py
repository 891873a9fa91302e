"""Committing due windows: one delta per relationship per window, sealed, stored, then sent in one batch.

Resumable and idempotent: a window's delta is sealed and stored in the spool
before it is sent; a later flush sends the same stored record again (the
server answers a retry with the same receipt) or, if the relationship's chain
already holds it, just records its index.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ..client.home import Home
from ..client.http import PacspaceClient
from ..client.records import append_body, close_maker, load_relationship
from ..errors import PacspaceError
from ..records.body import Close, Common, Delta, body_hash
from ..records.seal import seal
from .aggregate import WindowUsage
from .config import RecorderConfig
from .spool import SealedDelta, Spool
from .windows import period_of

_FMT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass
class FlushReport:
    committed: int = 0
    already_committed: int = 0
    closed: int = 0
    errors: list[str] = field(default_factory=list)


def period_end(period: str) -> str:
    """The first instant after a billing period (a month)."""
    year, month = int(period[:4]), int(period[5:7])
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return f"{year:04d}-{month:02d}-01T00:00:00Z"


def cutoff(until: str, grace_minutes: int) -> str:
    """Windows that ended at least the grace before ``until`` are due."""
    when = datetime.strptime(until, _FMT).replace(tzinfo=timezone.utc) - timedelta(minutes=grace_minutes)
    return when.strftime(_FMT)


async def flush(client: PacspaceClient, home: Home, spool: Spool, config: RecorderConfig, until: str) -> FlushReport:
    report = FlushReport()
    due = spool.due(cutoff(until, config.grace_minutes))
    by_rel: dict[str, list[tuple[str, str]]] = {}
    for rid, start, end in due:
        by_rel.setdefault(rid, []).append((start, end))
    items: list[dict[str, object]] = []
    sent: list[SealedDelta] = []
    signer = home.keys().ed25519
    for rid, windows in by_rel.items():
        view = await load_relationship(client, home, rid, home.log_key())
        by_seq = {r.seq: r for r in view.records}
        head = view.head
        if head is None:
            report.errors.append(f"{rid}: no genesis record")
            continue
        next_seq, prev = head.next_seq, head.head
        for start, end in windows:
            stored = spool.sealed(rid, start)
            if stored is not None and stored.seq in by_seq:
                # Sent before a crash and committed: only its index was not recorded.
                if by_seq[stored.seq].tag != stored.tag:
                    report.errors.append(f"{rid} {start}: seq {stored.seq} holds another record")
                    continue
                spool.mark_committed(rid, start, by_seq[stored.seq].index)
                report.already_committed += 1
                continue
            if stored is None:
                usage = WindowUsage(rid, start, end)
                for event in spool.events_of(rid, start):
                    usage.add(event)
                body = Delta(
                    Common(rid, next_seq, prev, f"window-{start}", time.strftime(_FMT, time.gmtime())),
                    period_of(start), start, end, usage.lines(),
                    evidence={"events_root": usage.events_root().hex(), "events_count": str(len(usage.digests)),
                              "source": "pacspace-recorder"},
                )
                sealed = seal(body, view.keys, signer)
                stored = SealedDelta(rid, start, sealed.seq, sealed.tag, sealed.blob, sealed.body, None)
                # Durable before it is sent: a crash from here on resends this very record.
                spool.save_sealed(stored)
            if stored.seq != next_seq:
                report.errors.append(f"{rid} {start}: stored seq {stored.seq}, the chain expects {next_seq}")
                continue
            items.append({"relationship": rid, "seq": stored.seq, "tag": base64.b64encode(stored.tag).decode(),
                          "ciphertext": base64.b64encode(stored.blob).decode()})
            sent.append(stored)
            next_seq, prev = stored.seq + 1, body_hash(stored.body)
    if items:
        answer = await client.append_batch(items)
        for delta, result in zip(sent, answer["results"]):
            if result["status"] == "ok":
                spool.mark_committed(delta.relationship, delta.window_start, int(result["index"]))
                report.committed += 1
            else:
                report.errors.append(f"{delta.relationship} {delta.window_start}: {result['error']}: {result['message']}")
    await _close_ended_periods(client, home, spool, config, until, report)
    return report


async def _close_ended_periods(
    client: PacspaceClient, home: Home, spool: Spool, config: RecorderConfig, until: str, report: FlushReport
) -> None:
    """Close every period that ended (plus the grace) by ``until``. Idempotent without any stored state:
    a period whose close is already in the chain (even one sent just before a crash) is skipped."""
    limit = cutoff(until, config.grace_minutes)
    for rid, period in spool.committed_periods():
        if period_end(period) > limit:
            continue
        view = await load_relationship(client, home, rid, home.log_key())
        if any(isinstance(r.body, Close) and r.body.period == period for r in view.records):
            continue
        try:
            await append_body(client, home, view, close_maker(view, period))
            report.closed += 1
        except PacspaceError as exc:
            report.errors.append(f"{rid} close {period}: {exc}")
