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
from ..client.records import load_relationship
from ..records.body import Common, Delta, body_hash
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
    errors: list[str] = field(default_factory=list)


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
    return report
