"""The recorder's spool, ``<data>/recorder.db``: accepted events, the chains it extends, the records it wrote.

Durable once a call returns (WAL, synchronous=FULL). An accepted event is never
lost. A flush seals its records, stores them and assigns their events in one
transaction *before* sending anything, so a flush that dies anywhere resumes by
sending the very same records again (same seq, same ciphertext), which the
server answers with the same receipts: nothing is committed twice, and no event
is counted in two records.

Tables:
  events    one row per (source, id, meter): the window it belongs to, when it
            arrived, and the seq of the record that counted it (NULL: not yet)
  chains    per relationship the recorder extends: the relationship secret (this
            file is 0600, like the party keys), the next seq and head, the periods
            with usage not yet closed, the periods closed, how far zero deltas have
            covered, and the protocol rules' view of the chain (records.rules, as
            JSON; version 3 added it, and a chain without it is learned again)
  records   every record of those chains the recorder knows (written or learned),
            with its log index once committed (NULL: sealed, not yet acknowledged)
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from ..errors import PacspaceError
from ..storage.transaction import write_transaction
from .events import UsageEvent

SCHEMA_VERSION = 3
_NO_END = "9999"  # sorts after every window end: with it, the events_due index covers all pending events

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        source TEXT NOT NULL, event_id TEXT NOT NULL, meter TEXT NOT NULL,
        relationship TEXT NOT NULL, window_start TEXT NOT NULL, window_end TEXT NOT NULL,
        received_at TEXT NOT NULL, seq INTEGER, body BLOB NOT NULL,
        UNIQUE (event_id, source, meter))""",  # a rowid table: faster to fill than WITHOUT ROWID for rows this wide
    # The events a flush may count: pending ones by window end. Keyed by window end, new entries land in one
    # place (the current window), so the index costs ingest almost nothing; counted events leave it.
    "CREATE INDEX IF NOT EXISTS events_due ON events(window_end) WHERE seq IS NULL",
    """CREATE TABLE IF NOT EXISTS chains (
        relationship TEXT PRIMARY KEY, secret BLOB NOT NULL, next_seq INTEGER NOT NULL, head TEXT NOT NULL,
        open_periods TEXT NOT NULL, closed_periods TEXT NOT NULL, covered_until TEXT, rules TEXT)""",
    """CREATE TABLE IF NOT EXISTS records (
        relationship TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, period TEXT NOT NULL,
        window_start TEXT, tag BLOB NOT NULL, blob BLOB NOT NULL, body BLOB NOT NULL, idx INTEGER,
        events BLOB NOT NULL,
        PRIMARY KEY (relationship, seq))""",
    "CREATE INDEX IF NOT EXISTS records_window ON records(relationship, window_start) WHERE kind = 'delta'",
    "CREATE INDEX IF NOT EXISTS records_unsent ON records(relationship, seq) WHERE idx IS NULL",
)


class SpoolError(PacspaceError):
    """The spool file cannot be used as it is (made by another version, or damaged)."""

    code = "spool"


class FlushBusy(PacspaceError):
    """Another flush holds this spool; two at once could count an event twice."""

    code = "flush_busy"


@dataclass(frozen=True)
class SpooledEvent:
    """An accepted event not yet counted in any record."""

    window_start: str
    window_end: str
    event: UsageEvent
    rowid: int = 0


@dataclass
class Chain:
    """What the recorder knows of one relationship's chain: enough to extend it without asking the server."""

    relationship: str
    secret: bytes
    next_seq: int
    head: str
    open_periods: list[str] = field(default_factory=list)  # periods with usage and no close yet, oldest first
    closed_periods: list[str] = field(default_factory=list)
    covered_until: str | None = None  # zero deltas: the end of the last window written
    rules: dict[str, Any] | None = None  # records.rules.Ledger.to_json() of the chain so far

    @property
    def must_refetch(self) -> bool:
        """The server refused a record as stale, or the spool predates the rules view: learn the chain from the
        server, not from the home."""
        return self.next_seq < 0 or self.rules is None


@dataclass(frozen=True)
class StoredRecord:
    relationship: str
    seq: int
    kind: str
    period: str
    window_start: str | None
    tag: bytes
    blob: bytes
    body: bytes
    index: int | None
    events: bytes = b""  # the spool rows of the events it counts (pack_rowids)


def pack_rowids(rowids: Iterable[int]) -> bytes:
    return b"".join(r.to_bytes(8, "big") for r in rowids)


def unpack_rowids(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 8], "big") for i in range(0, len(data), 8)]


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[Concatenate[Spool, _P], _R]) -> Callable[Concatenate[Spool, _P], _R]:
    def wrapper(spool: Spool, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with spool._lock:
            return method(spool, *args, **kwargs)

    wrapper.__doc__ = method.__doc__
    wrapper.__name__ = method.__name__
    return wrapper


class Spool:
    def __init__(self, data: Path) -> None:
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data / "recorder.db"
        if not path.exists():
            # It holds relationship secrets: 0600 from the first byte.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        # Used from the event loop and from worker threads; one lock serializes every call.
        self.data = data
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        # The dedup index grows with every event: keep its upper levels (and more) in memory.
        self._conn.execute("PRAGMA cache_size = -131072")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        tables = self._conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if tables and version == 2:
            # Version 3 adds each chain's rules view; chains from before are learned again from the server.
            self._conn.execute("ALTER TABLE chains ADD COLUMN rules TEXT")
            version = SCHEMA_VERSION
        if tables and version != SCHEMA_VERSION:
            self._conn.close()
            raise SpoolError(
                f"{path} has schema version {version}, this pacspace writes {SCHEMA_VERSION}: "
                "flush it with the pacspace that made it, then start from a new data directory"
            )
        for statement in _SCHEMA:
            self._conn.execute(statement)
        self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @_locked
    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def flushing(self) -> Iterator[None]:
        """Exclusive, across processes (flock on <data>/flush.lock), for the length of one flush."""
        fd = os.open(self.data / "flush.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FlushBusy(f"another flush is running on {self.data}; try again when it ends") from None
            yield
        finally:
            os.close(fd)

    # -- events ---------------------------------------------------------------------------------------

    def accept(self, events: Iterable[tuple[UsageEvent, str, tuple[str, str]]], received_at: str) -> tuple[int, int]:
        """Store new events in one durable transaction; returns (accepted, duplicates).

        A duplicate is an event whose (source, id, meter) is already spooled: it
        is dropped whole, whatever it says.
        """
        (result,) = self.write([accept_op(events, received_at)])
        return result  # type: ignore[no-any-return]

    @_locked
    def write(self, ops: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        """Run ops in one durable transaction, for group commit (server.writer.GroupWriter)."""
        with write_transaction(self._conn) as conn:
            return [op(conn) for op in ops]

    @_locked
    def pending(self, ended_by: str | None = None) -> dict[str, list[SpooledEvent]]:
        """Events not yet counted whose window ended by ``ended_by`` (None: all of them), by relationship."""
        rows = self._conn.execute(
            "SELECT rowid, relationship, window_start, window_end, body FROM events "
            "WHERE seq IS NULL AND window_end <= ?", (ended_by or _NO_END,)
        ).fetchall()
        out: dict[str, list[SpooledEvent]] = {}
        for rowid, rid, start, end, body in rows:
            out.setdefault(rid, []).append(SpooledEvent(start, end, _event(body), rowid))
        return out

    @_locked
    def counted_by(self, rid: str, seq: int) -> list[UsageEvent]:
        """The events one record counts."""
        record = self._conn.execute(
            "SELECT events FROM records WHERE relationship = ? AND seq = ?", (rid, seq)
        ).fetchone()
        rowids = unpack_rowids(bytes(record[0])) if record else []
        bodies: list[bytes] = []
        for i in range(0, len(rowids), 500):
            chunk = rowids[i : i + 500]
            bodies += [b for (b,) in self._conn.execute(
                f"SELECT body FROM events WHERE rowid IN ({','.join('?' * len(chunk))})", chunk)]
        return [_event(body) for body in bodies]

    @_locked
    def find_event(self, event_id: str, source: str | None) -> list[tuple[str, int | None, UsageEvent]]:
        """(relationship, seq of the record that counted it or None, event) for each meter of the source event."""
        rows = self._conn.execute(
            "SELECT relationship, seq, body FROM events WHERE event_id = ? AND (? IS NULL OR source = ?)",
            (event_id, source, source),
        ).fetchall()
        return [(r[0], r[1], _event(r[2])) for r in rows]

    # -- chains and records -----------------------------------------------------------------------------

    @_locked
    def chains(self, relationships: Iterable[str]) -> dict[str, Chain]:
        out: dict[str, Chain] = {}
        for rid in relationships:
            row = self._conn.execute(
                "SELECT secret, next_seq, head, open_periods, closed_periods, covered_until, rules FROM chains "
                "WHERE relationship = ?", (rid,)
            ).fetchone()
            if row is not None:
                out[rid] = Chain(rid, bytes(row[0]), row[1], row[2], json.loads(row[3]), json.loads(row[4]), row[5],
                                 None if row[6] is None else json.loads(row[6]))
        return out

    @_locked
    def learn(self, learned: list[tuple[Chain, list[StoredRecord]]]) -> None:
        """Take chains verified from the server (or known from their creation) as the ones to extend.

        A record the recorder wrote itself keeps the list of events it counts
        (same seq, same tag), so prove-event still finds them.
        """
        with write_transaction(self._conn) as conn:
            for chain, records in learned:
                mine = {seq: (bytes(tag), bytes(events)) for seq, tag, events in conn.execute(
                    "SELECT seq, tag, events FROM records WHERE relationship = ?", (chain.relationship,))}
                conn.execute("DELETE FROM records WHERE relationship = ?", (chain.relationship,))
                kept = [replace(r, events=mine[r.seq][1]) if r.seq in mine and mine[r.seq][0] == r.tag else r
                        for r in records]
                _insert_records(conn, kept)
                _save_chain(conn, chain)

    @_locked
    def forget(self, rid: str) -> None:
        """Drop what the recorder sealed for ``rid`` but the server refused, and the chain it believed.

        The events those records counted are pending again; the next flush
        learns the chain afresh from the server (Chain.must_refetch). Only for records the server answered with a
        conflict (another record holds that seq), so none of them is committed.
        """
        with write_transaction(self._conn) as conn:
            for (events,) in conn.execute(
                "SELECT events FROM records WHERE relationship = ? AND idx IS NULL", (rid,)
            ).fetchall():
                conn.executemany("UPDATE events SET seq = NULL WHERE rowid = ?",
                                 [(r,) for r in unpack_rowids(bytes(events))])
            conn.execute("DELETE FROM records WHERE relationship = ? AND idx IS NULL", (rid,))
            conn.execute("UPDATE chains SET next_seq = -1 WHERE relationship = ?", (rid,))

    @_locked
    def has_delta_for(self, rid: str, window_starts: Iterable[str]) -> dict[str, int]:
        """Of these windows, the ones that already have a delta (not a correction): window start -> seq."""
        out: dict[str, int] = {}
        for start in set(window_starts):
            row = self._conn.execute(
                "SELECT seq FROM records WHERE relationship = ? AND window_start = ? AND kind = 'delta'", (rid, start)
            ).fetchone()
            if row is not None:
                out[start] = row[0]
        return out

    @_locked
    def close_seq(self, rid: str, period: str) -> int | None:
        row = self._conn.execute(
            "SELECT seq FROM records WHERE relationship = ? AND kind = 'close' AND period = ?", (rid, period)
        ).fetchone()
        return None if row is None else row[0]

    @_locked
    def usage_records(self, rid: str, period: str) -> list[tuple[int, bytes]]:
        """(seq, body) of the deltas and corrections of one period, in chain order."""
        return [(s, bytes(b)) for s, b in self._conn.execute(
            "SELECT seq, body FROM records WHERE relationship = ? AND period = ? AND kind IN ('delta', 'correction') "
            "ORDER BY seq", (rid, period))]

    @_locked
    def store_flush(self, records: list[StoredRecord], chains: list[Chain]) -> None:
        """Durably, at once: the sealed records, which record counts each event, and the advanced chains."""
        with write_transaction(self._conn) as conn:
            _insert_records(conn, records)
            counted = [(r.seq, rowid) for r in records for rowid in unpack_rowids(r.events)]
            before = conn.total_changes
            conn.executemany("UPDATE events SET seq = ? WHERE rowid = ? AND seq IS NULL", counted)
            if conn.total_changes - before != len(counted):
                # Another writer counted some of these events meanwhile: store nothing, count nothing twice.
                raise SpoolError("events planned by this flush were counted by another one; nothing was stored")
            for chain in chains:
                _save_chain(conn, chain)

    @_locked
    def unsent(self) -> list[StoredRecord]:
        """Records sealed and stored but not yet acknowledged, in chain order per relationship."""
        rows = self._conn.execute(
            "SELECT relationship, seq, kind, period, window_start, tag, blob, body, idx, events FROM records "
            "WHERE idx IS NULL ORDER BY relationship, seq"
        ).fetchall()
        return [_record(r) for r in rows]

    @_locked
    def mark_committed(self, indexes: list[tuple[str, int, int]]) -> None:
        """(relationship, seq, log index) of records the server acknowledged."""
        with write_transaction(self._conn) as conn:
            conn.executemany("UPDATE records SET idx = ? WHERE relationship = ? AND seq = ?",
                             [(index, rid, seq) for rid, seq, index in indexes])

    @_locked
    def record(self, rid: str, seq: int) -> StoredRecord | None:
        row = self._conn.execute(
            "SELECT relationship, seq, kind, period, window_start, tag, blob, body, idx, events FROM records "
            "WHERE relationship = ? AND seq = ?", (rid, seq)
        ).fetchone()
        return None if row is None else _record(row)

    @_locked
    def depth(self) -> tuple[int, int]:
        """(events ever spooled, events pending): cheap enough for every metrics scrape."""
        (total,) = self._conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()
        (pending,) = self._conn.execute(
            "SELECT count(*) FROM events WHERE seq IS NULL AND window_end <= ?", (_NO_END,)).fetchone()
        return total, pending

    @_locked
    def status(self) -> dict[str, int]:
        q = self._conn.execute
        return {
            "events": q("SELECT count(*) FROM events").fetchone()[0],
            "events_pending": q("SELECT count(*) FROM events WHERE seq IS NULL").fetchone()[0],
            "relationships": q("SELECT count(*) FROM chains").fetchone()[0],
            "deltas_committed": q("SELECT count(*) FROM records WHERE kind = 'delta' AND idx IS NOT NULL").fetchone()[0],
            "corrections_committed": q(
                "SELECT count(*) FROM records WHERE kind = 'correction' AND idx IS NOT NULL").fetchone()[0],
            "closes_committed": q("SELECT count(*) FROM records WHERE kind = 'close' AND idx IS NOT NULL").fetchone()[0],
            "records_unsent": q("SELECT count(*) FROM records WHERE idx IS NULL").fetchone()[0],
        }


def accept_op(
    events: Iterable[tuple[UsageEvent, str, tuple[str, str]]], received_at: str
) -> Callable[[sqlite3.Connection], tuple[int, int]]:
    """Spool.accept as one op of a larger transaction: (accepted, duplicates)."""
    rows = [
        (e.source, e.event_id, e.meter, rid, start, end, received_at, e.canonical())
        for e, rid, (start, end) in events
    ]

    def op(conn: sqlite3.Connection) -> tuple[int, int]:
        before = conn.total_changes
        conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)", rows)
        accepted = conn.total_changes - before
        return accepted, len(rows) - accepted

    return op


def _insert_records(conn: sqlite3.Connection, records: list[StoredRecord]) -> None:
    conn.executemany(
        "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(r.relationship, r.seq, r.kind, r.period, r.window_start, r.tag, r.blob, r.body, r.index, r.events)
         for r in records],
    )


def _save_chain(conn: sqlite3.Connection, chain: Chain) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO chains VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (chain.relationship, chain.secret, chain.next_seq, chain.head, json.dumps(chain.open_periods),
         json.dumps(chain.closed_periods), chain.covered_until, None if chain.rules is None else json.dumps(chain.rules)),
    )


def _record(row: tuple) -> StoredRecord:  # type: ignore[type-arg]
    return StoredRecord(row[0], row[1], row[2], row[3], row[4], bytes(row[5]), bytes(row[6]), bytes(row[7]), row[8],
                        bytes(row[9]))


def _event(body: bytes) -> UsageEvent:
    d = json.loads(body)
    return UsageEvent(d["source"], d["id"], d["customer"], d["meter"], d["unit"], d["quantity"], d["time"], d["dimensions"])
