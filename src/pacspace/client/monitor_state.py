"""The monitor's own verified copy, in ``<PACSPACE_HOME>/monitor.db``.

Only what passed every check is written, in one transaction per poll: the
checkpoints verified (each consistent with the one before), and for each of
the party's relationships every record with its ciphertext, plaintext body,
index and the checkpoint it was verified under. The copy needs no server.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..storage.transaction import write_transaction

MONITOR_NAME = "monitor.db"

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
        secret BLOB NOT NULL
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

    def close(self) -> None:
        self._conn.close()

    def latest_checkpoint(self) -> bytes | None:
        row = self._conn.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        return None if row is None else bytes(row[0])

    def relationship(self, rid: str) -> tuple[str, str, str, bytes] | None:
        row = self._conn.execute(
            "SELECT provider, customer, provider_fingerprint, secret FROM relationships WHERE id = ?", (rid,)
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2], bytes(row[3]))

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

    def checkpoint(self, size: int) -> bytes | None:
        row = self._conn.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        return None if row is None else bytes(row[0])

    def save_poll(
        self,
        checkpoint: tuple[int, bytes],
        relationships: list[tuple[str, str, str, str, bytes]],
        copies: list[StoredCopy],
        now: int,
    ) -> None:
        """Everything one poll verified, in one transaction."""
        with write_transaction(self._conn) as conn:
            conn.execute("INSERT OR IGNORE INTO checkpoints VALUES (?, ?, ?)", (checkpoint[0], checkpoint[1], now))
            conn.executemany("INSERT OR IGNORE INTO relationships VALUES (?, ?, ?, ?, ?)", relationships)
            conn.executemany(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (c.relationship, c.seq, c.index, c.tag, c.blob, c.body, c.signature, c.checkpoint_size, c.proof)
                    for c in copies
                ],
            )
