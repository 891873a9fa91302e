"""The recorder's spool, ``<data>/recorder.db``: accepted events, and each window's sealed delta.

Durable once a call returns (WAL, synchronous=FULL): an accepted event is never
lost, and a delta is sealed and stored *before* it is sent, so a flush that
dies anywhere resumes by sending the very same record again (same seq, same
ciphertext), which the server answers with the same receipt: never twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from ..storage.transaction import write_transaction
from .events import UsageEvent

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        source TEXT NOT NULL, event_id TEXT NOT NULL, meter TEXT NOT NULL,
        relationship TEXT NOT NULL, window_start TEXT NOT NULL, window_end TEXT NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (source, event_id, meter))""",
    "CREATE INDEX IF NOT EXISTS events_window ON events(relationship, window_start)",
    """CREATE TABLE IF NOT EXISTS deltas (
        relationship TEXT NOT NULL, window_start TEXT NOT NULL,
        seq INTEGER NOT NULL, tag BLOB NOT NULL, blob BLOB NOT NULL, body BLOB NOT NULL,
        idx INTEGER,
        PRIMARY KEY (relationship, window_start))""",
)


@dataclass(frozen=True)
class SealedDelta:
    relationship: str
    window_start: str
    seq: int
    tag: bytes
    blob: bytes
    body: bytes
    index: int | None


def _locked(method):  # type: ignore[no-untyped-def]
    def wrapper(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        with self._lock:
            return method(self, *args, **kwargs)

    wrapper.__doc__ = method.__doc__
    wrapper.__name__ = method.__name__
    return wrapper


class Spool:
    def __init__(self, data: Path) -> None:
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Used from the event loop and from worker threads; one lock serializes every call.
        self._conn = sqlite3.connect(data / "recorder.db", isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        for statement in _SCHEMA:
            self._conn.execute(statement)

    def close(self) -> None:
        self._conn.close()

    @_locked
    def accept(self, events: list[tuple[UsageEvent, str, tuple[str, str]]]) -> tuple[int, int, list[str]]:
        """Store new events in one durable transaction: (accepted, duplicates, reasons for refused ones).

        An event whose window already has a committed delta is refused: late
        events belong in a correction record, which the recorder does not write yet.
        """
        accepted = duplicates = 0
        refused: list[str] = []
        committed: dict[tuple[str, str], bool] = {}
        with write_transaction(self._conn) as conn:
            for event, rid, (start, end) in events:
                if (rid, start) not in committed:
                    committed[(rid, start)] = conn.execute(
                        "SELECT 1 FROM deltas WHERE relationship = ? AND window_start = ?", (rid, start)
                    ).fetchone() is not None
                if committed[(rid, start)]:
                    refused.append(f"{event.source}/{event.event_id}: window {start} of {rid} is already committed")
                    continue
                cur = conn.execute(
                    "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (event.source, event.event_id, event.meter, rid, start, end, event.canonical()),
                )
                if cur.rowcount:
                    accepted += 1
                else:
                    duplicates += 1
        return accepted, duplicates, refused

    @_locked
    def due(self, until: str) -> list[tuple[str, str, str]]:
        """(relationship, window start, window end) with events whose window ended by ``until``, oldest first."""
        rows = self._conn.execute(
            "SELECT e.relationship, e.window_start, max(e.window_end) FROM events e "
            "LEFT JOIN deltas d ON d.relationship = e.relationship AND d.window_start = e.window_start "
            "WHERE (d.idx IS NULL) GROUP BY e.relationship, e.window_start "
            "HAVING max(e.window_end) <= ? ORDER BY e.relationship, e.window_start",
            (until,),
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    @_locked
    def events_of(self, rid: str, start: str) -> list[UsageEvent]:
        rows = self._conn.execute(
            "SELECT body FROM events WHERE relationship = ? AND window_start = ?", (rid, start)
        ).fetchall()
        return [_event(body) for (body,) in rows]

    @_locked
    def sealed(self, rid: str, start: str) -> SealedDelta | None:
        row = self._conn.execute(
            "SELECT seq, tag, blob, body, idx FROM deltas WHERE relationship = ? AND window_start = ?", (rid, start)
        ).fetchone()
        return None if row is None else SealedDelta(rid, start, row[0], bytes(row[1]), bytes(row[2]), bytes(row[3]), row[4])

    @_locked
    def save_sealed(self, delta: SealedDelta) -> None:
        with write_transaction(self._conn) as conn:
            conn.execute(
                "INSERT INTO deltas VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (delta.relationship, delta.window_start, delta.seq, delta.tag, delta.blob, delta.body),
            )

    @_locked
    def mark_committed(self, rid: str, start: str, index: int) -> None:
        with write_transaction(self._conn) as conn:
            conn.execute("UPDATE deltas SET idx = ? WHERE relationship = ? AND window_start = ?", (index, rid, start))

    @_locked
    def find_event(self, event_id: str, source: str | None) -> list[tuple[str, str, UsageEvent]]:
        """(relationship, window start, event) for each meter of the source event with this id."""
        rows = self._conn.execute(
            "SELECT relationship, window_start, body FROM events WHERE event_id = ? AND (? IS NULL OR source = ?)",
            (event_id, source, source),
        ).fetchall()
        return [(r[0], r[1], _event(r[2])) for r in rows]

    @_locked
    def committed_periods(self) -> list[tuple[str, str]]:
        """(relationship, period) with at least one committed delta."""
        rows = self._conn.execute(
            "SELECT DISTINCT relationship, substr(window_start, 1, 7) FROM deltas WHERE idx IS NOT NULL ORDER BY 1, 2"
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    @_locked
    def status(self) -> dict[str, int]:
        q = self._conn.execute
        return {
            "events": q("SELECT count(*) FROM events").fetchone()[0],
            "deltas_committed": q("SELECT count(*) FROM deltas WHERE idx IS NOT NULL").fetchone()[0],
            "deltas_pending": q("SELECT count(*) FROM deltas WHERE idx IS NULL").fetchone()[0],
        }


def _event(body: bytes) -> UsageEvent:
    d = json.loads(body)
    return UsageEvent(d["source"], d["id"], d["customer"], d["meter"], d["unit"], d["quantity"], d["time"], d["dimensions"])
