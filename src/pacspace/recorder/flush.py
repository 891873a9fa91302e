"""A flush: what is due is planned (recorder.plan), sealed, stored, then sent in batches.

Resumable and idempotent. Records are sealed and stored, with the events they
count, in one durable transaction before anything is sent (Spool.store_flush).
A flush first re-sends whatever an earlier one stored and never saw
acknowledged: the server answers a retry of the same (seq, ciphertext) with the
same receipt, so a crash at any point neither loses nor repeats a record.

The recorder extends each chain from its own copy (Spool chains), learned once:
from the provider's home when the chain is still just the genesis it created
there, otherwise by fetching and fully verifying it (client.records). If the
server holds another record at a seq the recorder meant to use (someone else
extended the chain), the unsent records are dropped, their events counted
again, and the chain is learned afresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from datetime import timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..client.home import Home
from ..client.http import PacspaceClient
from ..client.records import RelationshipView, load_relationship, refuse_rule_breaking
from ..errors import PacspaceError
from ..records.batchwire import BatchRecord
from ..records.body import Close, Delta, body_hash
from ..records.rules import Ledger
from ..records.seal import Opened, RelationshipKeys, seal
from .config import RecorderConfig
from .plan import ChainFacts, PlannedRecord, Planner, candidate_windows, closing_periods, format_time, parse_time, quiet_periods
from .spool import Chain, Spool, SpooledEvent, StoredRecord, pack_rowids
from .windows import period_of

BATCH = 5000  # records per request (the server takes up to 10,000)
LEARN_CONCURRENCY = 16
STALE = {"record_conflict", "duplicate_tag"}  # another record holds the seq: the recorder's chain is behind


@dataclass
class FlushReport:
    committed: int = 0  # deltas and corrections acknowledged by this flush
    resent: int = 0  # of those, records an earlier flush stored but did not see acknowledged
    closed: int = 0
    learned: int = 0
    errors: list[str] = field(default_factory=list)
    windows_written: dict[str, str] = field(default_factory=dict)  # cadence -> end of the latest window sealed

    def to_json(self) -> dict[str, int]:
        return {"committed": self.committed, "resent": self.resent, "closed": self.closed,
                "learned": self.learned, "errors": len(self.errors)}


def cutoff(until: str, grace_minutes: int) -> str:
    """Windows that ended at least the grace before ``until`` are due."""
    return format_time(parse_time(until) - timedelta(minutes=grace_minutes))


async def flush(
    client: PacspaceClient, home: Home, spool: Spool, config: RecorderConfig, until: str,
    progress: Callable[[str], None] | None = None,
) -> FlushReport:
    """Commit everything due at ``until`` (minus the grace). Spool work and sealing run in a worker
    thread, so a `recorder serve` keeps answering ingest while it flushes. One flush at a time per
    spool, across processes (FlushBusy otherwise)."""
    with spool.flushing():
        return await _flush(client, home, spool, config, until, progress)


async def _flush(
    client: PacspaceClient, home: Home, spool: Spool, config: RecorderConfig, until: str,
    progress: Callable[[str], None] | None,
) -> FlushReport:
    report = FlushReport()
    say = progress or (lambda _: None)
    refused = await _send(client, spool, await asyncio.to_thread(spool.unsent), report, resend=True)
    limit = cutoff(until, config.grace_minutes)
    pending, chains, wanted = await asyncio.to_thread(_due, spool, config, limit, refused)
    unknown = sorted(rid for rid in wanted if rid not in chains or chains[rid].must_refetch)
    if unknown:
        say(f"learning {len(unknown)} chains")
        chains.update(await _learn(client, home, spool, unknown, chains, report))
    signer = home.keys().ed25519
    planned, advanced = await asyncio.to_thread(
        _plan_and_seal, spool, config, signer, chains, pending, sorted(wanted), limit, report
    )
    if planned or advanced:
        # Durable before anything is sent: from here on a crash re-sends exactly these records.
        await asyncio.to_thread(spool.store_flush, planned, advanced)
    if planned:
        say(f"sending {len(planned)} records")
        await _send(client, spool, planned, report, resend=False)
    return report


def _due(
    spool: Spool, config: RecorderConfig, limit: str, refused: set[str]
) -> tuple[dict[str, list[SpooledEvent]], dict[str, Chain], set[str]]:
    """Pending events, the known chains, and the relationships with something to write."""
    pending = spool.pending(limit)
    chains = spool.chains(set(pending) | set(config.cadence_of))
    wanted = set(pending) | {rid for rid, c in chains.items() if closing_periods(c, [], limit) or quiet_periods(c, limit)}
    if config.zero_deltas:
        wanted |= set(config.cadence_of)
    return pending, chains, wanted - refused


def _plan_and_seal(
    spool: Spool, config: RecorderConfig, signer: Ed25519PrivateKey, chains: dict[str, Chain],
    pending: dict[str, list[SpooledEvent]], wanted: list[str], limit: str, report: FlushReport,
) -> tuple[list[StoredRecord], list[Chain]]:
    """Each wanted relationship's records, planned and sealed; and the chains they advance."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    planned: list[StoredRecord] = []
    advanced: list[Chain] = []
    for rid in wanted:
        chain = chains.get(rid)
        cadence = config.cadence_of.get(rid)
        if chain is None or chain.must_refetch:
            continue  # learning failed; reported
        if cadence is None:
            report.errors.append(f"{rid}: has events or an open period but is not in the config")
            continue
        events = pending.get(rid, [])
        facts = ChainFacts(
            delta_seq=spool.has_delta_for(rid, candidate_windows(chain, events, cadence, limit, config.zero_deltas)),
            close_seq={p: s for p in _retired_periods(chain, events) if (s := spool.close_seq(rid, p)) is not None},
            usage={p: spool.usage_records(rid, p) for p in closing_periods(chain, events, limit)},
        )
        try:
            records, new_chain = Planner(chain, facts, cadence, limit, now, config.zero_lines()).plan(events)
        except PacspaceError as exc:
            report.errors.append(f"{rid}: {exc}")
            continue
        try:
            new_chain.rules = _ruled(chain, records)
        except PacspaceError as exc:
            report.errors.append(f"{rid}: nothing sealed: {exc}")
            continue
        if records or new_chain.covered_until != chain.covered_until:
            advanced.append(new_chain)
        keys = RelationshipKeys(chain.secret)
        for record in records:
            sealed = seal(record.body, keys, signer)
            window = record.window_start
            planned.append(StoredRecord(rid, sealed.seq, record.body.kind, record.body.period, window,
                                        sealed.tag, sealed.blob, sealed.body, None,
                                        pack_rowids(e.rowid for e in record.counted)))
            if window is not None:
                end = record.body.window_end  # type: ignore[union-attr]
                report.windows_written[cadence.name] = max(report.windows_written.get(cadence.name, ""), end)
    return planned, advanced


async def _send(
    client: PacspaceClient, spool: Spool, records: list[StoredRecord], report: FlushReport, resend: bool
) -> set[str]:
    """Append stored records in batches; mark the acknowledged ones; returns the relationships to leave alone
    in this flush (the server refused one of their records)."""
    refused: set[str] = set()
    for start in range(0, len(records), BATCH):
        # Once one of a relationship's records is refused, none after it may be sent: a later seq
        # could be accepted after someone else's record and fork the chain.
        chunk = [r for r in records[start : start + BATCH] if r.relationship not in refused]
        if not chunk:
            continue
        answer = await client.append_batch([BatchRecord(r.relationship, r.seq, r.tag, r.blob) for r in chunk])
        done: list[tuple[str, int, int]] = []
        for record, result in zip(chunk, answer["results"]):
            if result["status"] == "ok":
                done.append((record.relationship, record.seq, int(result["index"])))
                if record.kind == "close":
                    report.closed += 1
                else:
                    report.committed += 1
                    report.resent += resend
            elif record.relationship not in refused:
                refused.add(record.relationship)
                report.errors.append(f"{record.relationship} seq {record.seq}: {result['error']}: {result['message']}")
                if result["error"] in STALE or (result["error"] == "seq_conflict"
                                                and int(result.get("expected_seq", -1)) > record.seq):
                    # Someone else extended the chain: nothing of ours at or after this seq is committed.
                    await asyncio.to_thread(spool.forget, record.relationship)
        await asyncio.to_thread(spool.mark_committed, done)
    return refused


def _ruled(chain: Chain, records: list[PlannedRecord]) -> dict[str, Any]:
    """The chain's rules view after ``records``; raises RuleBroken, before anything is sealed, for a record the
    protocol rules would flag (records.rules): the recorder never breaks its customer's chain either."""
    ledger = Ledger.from_json(chain.rules or {})
    for record in records:
        opened = Opened(record.body.common.seq, record.body, record.encoded, b"")
        refuse_rule_breaking(ledger, opened)
        ledger.add(opened)
    return ledger.to_json()


def _retired_periods(chain: Chain, events: list[SpooledEvent]) -> set[str]:
    """Closed periods that pending events belong to: only their closes are needed (for ``corrects``)."""
    return {period_of(e.window_start) for e in events} & set(chain.closed_periods)


async def _learn(
    client: PacspaceClient, home: Home, spool: Spool, rids: list[str], known: dict[str, Chain], report: FlushReport
) -> dict[str, Chain]:
    """The chains the recorder has not extended before: from the home's creation record, or fetched and verified."""
    def from_home() -> tuple[list[tuple[Chain, list[StoredRecord]]], list[str]]:
        found: list[tuple[Chain, list[StoredRecord]]] = []
        fetch: list[str] = []
        for rid in rids:
            state, secret = home.relationship_state(rid), home.relationship_secret(rid)
            if rid not in known and state.get("next_seq") == 1 and secret is not None:
                # The home created this chain and nothing has extended it from this home since.
                head = str(state["head"])
                found.append((Chain(rid, secret, 1, head, rules=Ledger(0, head).to_json()), []))
            else:
                fetch.append(rid)
        return found, fetch

    learned, fetch = await asyncio.to_thread(from_home)
    gate = asyncio.Semaphore(LEARN_CONCURRENCY)
    log_key = home.log_key()

    async def verified(rid: str) -> None:
        async with gate:
            try:
                view = await load_relationship(client, home, rid, log_key)
            except PacspaceError as exc:
                report.errors.append(f"{rid}: cannot learn its chain: {exc}")
                return
        learned.append(_chain_of(view))

    await asyncio.gather(*(verified(rid) for rid in fetch))
    # One durable transaction for all of them, however many.
    await asyncio.to_thread(spool.learn, learned)
    report.learned += len(learned)
    return {chain.relationship: chain for chain, _ in learned}


def _chain_of(view: RelationshipView) -> tuple[Chain, list[StoredRecord]]:
    records: list[StoredRecord] = []
    used: set[str] = set()
    closed: set[str] = set()
    for r in view.records:
        body = r.body
        period = getattr(body, "period", "")
        window = body.window_start if isinstance(body, Delta) and body.kind == "delta" else None
        records.append(StoredRecord(view.rid, r.seq, body.kind, period, window, r.tag, r.blob, r.opened.encoded, r.index))
        if isinstance(body, Delta):
            used.add(period)
        elif isinstance(body, Close):
            closed.add(period)
    last = view.records[-1]
    covered = max((b.window_end for b in (r.body for r in view.records) if isinstance(b, Delta) and b.kind == "delta"),
                  default=None)
    chain = Chain(view.rid, view.keys.secret, last.seq + 1, body_hash(last.opened.encoded),
                  sorted(used - closed), sorted(closed), covered, view.ledger.to_json())
    return chain, records

