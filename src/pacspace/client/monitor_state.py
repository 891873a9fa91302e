"""The monitor's own verified copy, in ``<PACSPACE_HOME>/monitor.db``.

Only what passed every check is written: the checkpoints verified (each
consistent with the one before), and for each relationship the party follows
every record with its ciphertext, plaintext body, index and the checkpoint it
was verified under. A poll writes the checkpoint first, then each
relationship's new records in a transaction of their own, so one relationship
that fails verification never holds back another. The copy needs no server.

Beside the copy: the log's full tiles that a verified proof used (client.tile_reader), so a poll
fetches only what is new; the findings (authentic records that break a protocol rule,
records.rules) and the detections (what failed verification), each with the
path of its evidence file, so that a detection repeated at every poll is saved
once and the console and ``bill verify`` can show them.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import PacspaceError
from ..storage.transaction import write_transaction

MONITOR_NAME = "monitor.db"


class MonitorBusy(PacspaceError):
    """Another monitor holds this home's copy."""

    code = "monitor_busy"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note BLOB NOT NULL, verified_at INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS records (
        relationship TEXT NOT NULL,
        seq INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        tag BLOB NOT NULL,
        blob BLOB NOT NULL,
        body BLOB NOT NULL,
        signature BLOB NOT NULL,
        checkpoint_size INTEGER NOT NULL,
        proof BLOB NOT NULL,
        PRIMARY KEY (relationship, seq)
    )""",
    """CREATE TABLE IF NOT EXISTS relationships (
        id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        customer TEXT NOT NULL,
        provider_fingerprint TEXT NOT NULL,
        secret BLOB NOT NULL,
        next_seq INTEGER,
        head TEXT,
        rules TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS findings (
        relationship TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        period TEXT NOT NULL,
        message TEXT NOT NULL,
        fix TEXT NOT NULL,
        evidence TEXT NOT NULL,
        found_at INTEGER NOT NULL,
        PRIMARY KEY (relationship, seq, kind)
    )""",
    # Full tiles only: they never change once the log has them.
    "CREATE TABLE IF NOT EXISTS tiles (level INTEGER NOT NULL, n INTEGER NOT NULL, hashes BLOB NOT NULL, "
    "PRIMARY KEY (level, n)) WITHOUT ROWID",
    # scope: a relationship id, or '' for the log itself; seq -1 where no record is concerned.
    """CREATE TABLE IF NOT EXISTS detections (
        scope TEXT NOT NULL,
        kind TEXT NOT NULL,
        seq INTEGER NOT NULL,
        message TEXT NOT NULL,
        evidence TEXT NOT NULL,
        first_at INTEGER NOT NULL,
        last_at INTEGER NOT NULL,
        times INTEGER NOT NULL,
        PRIMARY KEY (scope, kind, seq)
    )""",
)


@dataclass(frozen=True)
class StoredCopy:
    relationship: str
    seq: int
    index: int
    tag: bytes
    blob: bytes
    body: bytes
    signature: bytes
    checkpoint_size: int
    proof: bytes  # the inclusion path at checkpoint_size, hashes concatenated


@dataclass(frozen=True)
class Followed:
    """A relationship the monitor follows: who its parties are, the provider key first verified, the secret."""

    id: str
    provider: str
    customer: str
    provider_fingerprint: str
    secret: bytes


@dataclass(frozen=True)
class Progress:
    """How far the copy of a relationship goes: the next seq, the last body's hash, the rules' view (JSON).

    Kept with the records it follows, so a poll reads three values instead of the whole copy. A copy from
    before this was kept has none (``Progress`` is then rebuilt once from the records).
    """

    next_seq: int
    head: str
    rules: str


@dataclass(frozen=True)
class StoredFinding:
    relationship: str
    seq: int
    kind: str
    period: str
    message: str
    fix: str
    evidence: str
    found_at: int


@dataclass(frozen=True)
class StoredDetection:
    scope: str
    kind: str
    seq: int
    message: str
    evidence: str
    first_at: int
    last_at: int
    times: int


class MonitorState:
    """Durable once a write returns (WAL, synchronous=FULL); the file is created 0600 (it holds secrets)."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = home / MONITOR_NAME
        if not path.exists():
            path.touch(mode=0o600)
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        for statement in _SCHEMA:
            self._conn.execute(statement)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(relationships)")}
        for column, kind in (("next_seq", "INTEGER"), ("head", "TEXT"), ("rules", "TEXT")):
            if column not in columns:  # a copy from before they were kept
                self._conn.execute(f"ALTER TABLE relationships ADD COLUMN {column} {kind}")
        self._lock_path = home / (MONITOR_NAME + ".lock")

    def close(self) -> None:
        self._conn.close()

    @asynccontextmanager
    async def polling(self, wait: float = 60.0) -> AsyncIterator[None]:
        """Hold the copy for one poll: two monitors on one home (a cron job beside a running one) take turns.

        Raises MonitorBusy if the other does not finish within ``wait`` seconds."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise MonitorBusy(f"another monitor has been polling {self._lock_path.parent} for {wait:g} s") from None
                    await asyncio.sleep(0.1)
            yield
        finally:
            os.close(fd)

    def progress(self, rid: str) -> Progress | None:
        row = self._conn.execute("SELECT next_seq, head, rules FROM relationships WHERE id = ?", (rid,)).fetchone()
        if row is None or row[0] is None:
            return None
        return Progress(row[0], row[1], row[2])

    def last_poll(self) -> int | None:
        """When the last poll that got as far as the log's checkpoint ran (seconds since the epoch)."""
        row = self._conn.execute("SELECT max(verified_at) FROM checkpoints").fetchone()
        return None if row is None else row[0]

    def finding_count(self, rid: str) -> int:
        return int(self._conn.execute("SELECT count(*) FROM findings WHERE relationship = ?", (rid,)).fetchone()[0])

    def latest_checkpoint(self) -> bytes | None:
        row = self._conn.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        return None if row is None else bytes(row[0])

    def checkpoint(self, size: int) -> bytes | None:
        row = self._conn.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        return None if row is None else bytes(row[0])

    def relationship(self, rid: str) -> Followed | None:
        row = self._conn.execute(
            "SELECT id, provider, customer, provider_fingerprint, secret FROM relationships WHERE id = ?", (rid,)
        ).fetchone()
        return None if row is None else Followed(row[0], row[1], row[2], row[3], bytes(row[4]))

    def relationship_ids(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT id FROM relationships ORDER BY id")]

    def copies(self, rid: str) -> list[StoredCopy]:
        rows = self._conn.execute(
            "SELECT relationship, seq, idx, tag, blob, body, signature, checkpoint_size, proof FROM records "
            "WHERE relationship = ? ORDER BY seq",
            (rid,),
        ).fetchall()
        return [
            StoredCopy(r[0], r[1], r[2], bytes(r[3]), bytes(r[4]), bytes(r[5]), bytes(r[6]), r[7], bytes(r[8]))
            for r in rows
        ]

    def findings(self, rid: str | None = None) -> list[StoredFinding]:
        sql = "SELECT relationship, seq, kind, period, message, fix, evidence, found_at FROM findings"
        rows = self._conn.execute(sql + " WHERE relationship = ? ORDER BY seq, kind", (rid,)) if rid is not None \
            else self._conn.execute(sql + " ORDER BY relationship, seq, kind")
        return [StoredFinding(*r) for r in rows]

    def detections(self, scope: str | None = None) -> list[StoredDetection]:
        sql = "SELECT scope, kind, seq, message, evidence, first_at, last_at, times FROM detections"
        rows = self._conn.execute(sql + " WHERE scope = ? ORDER BY seq, kind", (scope,)) if scope is not None \
            else self._conn.execute(sql + " ORDER BY scope, seq, kind")
        return [StoredDetection(*r) for r in rows]

    def detection(self, scope: str, kind: str, seq: int) -> StoredDetection | None:
        found = [d for d in self.detections(scope) if (d.kind, d.seq) == (kind, seq)]
        return found[0] if found else None

    def tiles(self, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """The full tiles held of these (level, n)."""
        out: dict[tuple[int, int], bytes] = {}
        for level, n in keys:
            row = self._conn.execute("SELECT hashes FROM tiles WHERE level = ? AND n = ?", (level, n)).fetchone()
            if row is not None:
                out[(level, n)] = bytes(row[0])
        return out

    def save_tiles(self, tiles: list[tuple[int, int, bytes]]) -> None:
        """Full tiles that a verified proof used: the log's own, for good."""
        if tiles:
            with write_transaction(self._conn) as conn:
                conn.executemany("INSERT OR IGNORE INTO tiles VALUES (?, ?, ?)", tiles)

    def save_checkpoint(self, size: int, note: bytes, now: int) -> None:
        """A checkpoint verified against the pinned key and consistent with the latest one stored."""
        with write_transaction(self._conn) as conn:
            conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?) ON CONFLICT (size) DO UPDATE SET verified_at = "
                         "excluded.verified_at", (size, note, now))

    def save_relationship(
        self, followed: Followed | None, copies: list[StoredCopy], findings: list[StoredFinding], progress: Progress,
        rid: str,
    ) -> None:
        """One step of a relationship in one transaction: a newly followed relationship, the records verified
        (under checkpoints already stored), the findings among them, and how far the copy now goes."""
        with write_transaction(self._conn) as conn:
            if followed is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO relationships (id, provider, customer, provider_fingerprint, secret) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (followed.id, followed.provider, followed.customer, followed.provider_fingerprint, followed.secret),
                )
            conn.execute("UPDATE relationships SET next_seq = ?, head = ?, rules = ? WHERE id = ?",
                         (progress.next_seq, progress.head, progress.rules, rid))
            conn.executemany(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (c.relationship, c.seq, c.index, c.tag, c.blob, c.body, c.signature, c.checkpoint_size, c.proof)
                    for c in copies
                ],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO findings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(f.relationship, f.seq, f.kind, f.period, f.message, f.fix, f.evidence, f.found_at) for f in findings],
            )

    def note_detection(self, scope: str, kind: str, seq: int, message: str, evidence: str, now: int) -> None:
        """Remember a detection: the first time with its evidence file, after that only when and how often."""
        with write_transaction(self._conn) as conn:
            conn.execute(
                "INSERT INTO detections VALUES (?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (scope, kind, seq) "
                "DO UPDATE SET last_at = excluded.last_at, times = times + 1",
                (scope, kind, seq, message, evidence, now, now),
            )
