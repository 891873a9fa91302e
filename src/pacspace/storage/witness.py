"""The witness's state: per log origin, the latest checkpoint it cosigned, in ``<data>/witness.db``, or in
PostgreSQL (``witness serve --database``, storage/pg_witness.py), where several witness processes of one key can
share it."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..witness import Latest
from .transaction import write_transaction

WITNESS_DB = "witness.db"


class WitnessState(Protocol):
    def close(self) -> None: ...

    def latest(self, origin: str) -> Latest | None: ...

    def advance(self, origin: str, check: Callable[[Latest | None], Latest]) -> Latest:
        """Read the origin's state, let ``check`` decide (raising to refuse), and store its answer: atomically,
        and durably before it returns (the witness answers only after)."""
        ...

    def rewrite(self, update: Callable[[str, Latest], bytes | None]) -> int:
        """Replace each origin's stored note by ``update(origin, latest)`` where it returns one; how many changed."""
        ...


class WitnessStore:
    """Durable once ``advance`` returns (WAL, synchronous=FULL): the witness answers only after that."""

    def __init__(self, data_dir: Path) -> None:
        self._conn = sqlite3.connect(data_dir / WITNESS_DB, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS latest (origin TEXT PRIMARY KEY, size INTEGER NOT NULL, "
            "root BLOB NOT NULL, note BLOB NOT NULL)"
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        self._conn.close()

    def latest(self, origin: str) -> Latest | None:
        with self._lock:
            row = self._conn.execute("SELECT size, root, note FROM latest WHERE origin = ?", (origin,)).fetchone()
        return None if row is None else Latest(row[0], bytes(row[1]), bytes(row[2]))

    def advance(self, origin: str, check: Callable[[Latest | None], Latest]) -> Latest:
        """Read the origin's state, let ``check`` decide (raising to refuse), and store its answer: atomically.

        The read and the write happen in one write transaction, so two concurrent
        requests can never roll the state back (C2SP tlog-witness's race).
        """
        with self._lock, write_transaction(self._conn) as conn:
            row = conn.execute("SELECT size, root, note FROM latest WHERE origin = ?", (origin,)).fetchone()
            current = None if row is None else Latest(row[0], bytes(row[1]), bytes(row[2]))
            new = check(current)
            conn.execute(
                "INSERT OR REPLACE INTO latest (origin, size, root, note) VALUES (?, ?, ?, ?)",
                (origin, new.size, new.root_hash, new.note),
            )
        return new

    def rewrite(self, update: Callable[[str, Latest], bytes | None]) -> int:
        """Replace each origin's stored note by ``update(origin, latest)`` where it returns one; how many changed."""
        changed = 0
        with self._lock, write_transaction(self._conn) as conn:
            rows = conn.execute("SELECT origin, size, root, note FROM latest").fetchall()
            for origin, size, root, note in rows:
                new = update(origin, Latest(size, bytes(root), bytes(note)))
                if new is not None:
                    conn.execute("UPDATE latest SET note = ? WHERE origin = ?", (new, origin))
                    changed += 1
        return changed


if TYPE_CHECKING:
    def _implements(sqlite: WitnessStore) -> None:
        _state: WitnessState = sqlite
