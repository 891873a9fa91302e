"""The leaf index: leaf hash prefix -> index, for proofs by hash. Derived data, kept off the commit path.

It lives in its own SQLite file (``leaves.db``) because every insert lands on a
random B-tree page: written inside the log's commit, it would dominate the
commit at 10^7 leaves. Instead the sequencer hands each committed batch's
hashes to :meth:`LeafIndex.add`, which holds them in memory (lookups see them at
once) until :meth:`flush` writes many batches as one sorted run, from the
maintenance thread, on the other core.

Durability: none needed. ``indexed_size`` is committed with the rows; after a
crash, :meth:`catch_up` re-reads the entry bundles from there to the log's size.
Pending entries are bounded (``MAX_PENDING``), which bounds that catch-up.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .transaction import write_transaction

INDEX_NAME = "leaves.db"
# Flush once this many hashes wait, or once the oldest waited FLUSH_AFTER seconds.
FLUSH_ENTRIES = 65536
FLUSH_AFTER = 1.0
# The sequencer flushes inline beyond this, so memory and crash catch-up stay bounded.
MAX_PENDING = 262_144

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS leaves (prefix INTEGER NOT NULL, idx INTEGER NOT NULL, "
    "PRIMARY KEY (prefix, idx)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


def leaf_prefix(leaf_hash: bytes) -> int:
    """The index key: the hash's first 8 bytes as a signed 64-bit integer (SQLite's INTEGER).

    Candidates are confirmed against the stored leaf hash, so a colliding prefix
    costs a read, never a wrong answer; the small key keeps the B-tree small.
    """
    return int.from_bytes(leaf_hash[:8], "big", signed=True)


class LeafIndex:
    def __init__(self, data_dir: Path, *, readonly: bool = False) -> None:
        path = data_dir / INDEX_NAME
        self._readonly = readonly
        if readonly and not path.exists():
            self._conn: sqlite3.Connection | None = None
        else:
            uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 10000")
            if not readonly:
                self._conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL: a crash may lose the last flush; catch_up re-derives it from the log.
                self._conn.execute("PRAGMA synchronous = NORMAL")
                for statement in _SCHEMA:
                    self._conn.execute(statement)
        # Lookups use their own connection: the writing one may be mid-transaction in another thread.
        self._reader: sqlite3.Connection | None = None
        if self._conn is not None:
            self._reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        self._reader_lock = threading.Lock()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        # Owned under _lock: hashes not yet flushed, by prefix; the size they extend to.
        self._pending: dict[int, list[int]] = {}
        self._pending_rows: list[tuple[int, int]] = []
        self._pending_since = 0.0
        self._size = self._stored_size()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._conn is not None:
            self._conn.close()

    def _stored_size(self) -> int:
        if self._conn is None:
            return 0
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'indexed_size'").fetchone()
        except sqlite3.OperationalError:
            return 0
        return 0 if row is None else int(row[0])

    @property
    def size(self) -> int:
        """Leaves [0, size) are findable (flushed or pending)."""
        return self._size

    def stored_size(self) -> int:
        return self._stored_size()

    def stored_size_and_rows(self) -> tuple[int, int]:
        """(indexed_size, row count) from one snapshot of leaves.db."""
        if self._reader is None:
            return 0, 0
        with self._reader_lock:
            self._reader.execute("BEGIN")
            try:
                row = self._reader.execute("SELECT value FROM meta WHERE key = 'indexed_size'").fetchone()
                count = self._reader.execute("SELECT count(*) FROM leaves").fetchone()[0]
            finally:
                self._reader.execute("COMMIT")
        return (0 if row is None else int(row[0])), int(count)

    def add(self, start: int, hashes: Iterable[bytes]) -> None:
        """Index leaves ``start, start+1, ...``; ``start`` must be the current size. Memory only."""
        with self._lock:
            if start != self._size:
                raise AssertionError(f"leaf index at {self._size} was handed leaves from {start}")
            if not self._pending_rows:
                self._pending_since = time.monotonic()
            count = 0
            for i, h in enumerate(hashes, start):
                prefix = leaf_prefix(h)
                self._pending.setdefault(prefix, []).append(i)
                self._pending_rows.append((prefix, i))
                count += 1
            self._size = start + count

    def pending(self) -> int:
        with self._lock:
            return len(self._pending_rows)

    def flush_due(self) -> bool:
        with self._lock:
            n = len(self._pending_rows)
            return n >= FLUSH_ENTRIES or (n > 0 and time.monotonic() - self._pending_since >= FLUSH_AFTER)

    def flush(self, limit: int | None = None) -> None:
        """Write the oldest pending rows (at most ``limit``) as one sorted run, with the size they reach."""
        if self._conn is None or self._readonly:
            return
        with self._flush_lock:
            with self._lock:
                # A copy: the commit thread may add rows while these are written.
                rows = self._pending_rows[:limit] if limit is not None else list(self._pending_rows)
                if not rows:
                    return
                # Rows are pending in index order, so the run ends where the indexed prefix ends.
                size = rows[-1][1] + 1
            with write_transaction(self._conn) as conn:
                conn.executemany("INSERT OR IGNORE INTO leaves (prefix, idx) VALUES (?, ?)", sorted(rows))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('indexed_size', ?)", (size,))
            with self._lock:
                self._pending_rows = self._pending_rows[len(rows) :]
                self._pending = {}
                for prefix, i in self._pending_rows:
                    self._pending.setdefault(prefix, []).append(i)
                if self._pending_rows:
                    self._pending_since = time.monotonic()

    def candidates(self, leaf_hash: bytes) -> list[int]:
        """Indexes whose leaf hash may be ``leaf_hash``, ascending (confirm each against the tree)."""
        prefix = leaf_prefix(leaf_hash)
        with self._lock:
            pending = list(self._pending.get(prefix, ()))
        stored: list[int] = []
        if self._reader is not None:
            with self._reader_lock:
                stored = [
                    int(r[0])
                    for r in self._reader.execute("SELECT idx FROM leaves WHERE prefix = ? ORDER BY idx", (prefix,))
                ]
        return sorted(set(stored + pending))

    def catch_up(self, log_size: int, read_leaf_hashes: Callable[[int, int], list[bytes]]) -> int:
        """Bring the index to ``log_size`` after a crash or restore; returns how many leaves were re-read.

        ``read_leaf_hashes(start, stop)`` returns the committed leaf hashes in [start, stop).
        An index ahead of the log (a restored older log.db) is rebuilt from scratch.
        """
        if self._size > log_size:
            self._reset()
        start = self._size
        step = FLUSH_ENTRIES
        for lo in range(start, log_size, step):
            self.add(lo, read_leaf_hashes(lo, min(log_size, lo + step)))
            # A crash leaves at most MAX_PENDING behind: those wait in memory for the maintenance
            # thread, so start-up stays fast. Only a lost or much older index is written here.
            if self.pending() > MAX_PENDING:
                self.flush()
        return log_size - start

    def _reset(self) -> None:
        if self._conn is None:
            return
        with write_transaction(self._conn) as conn:
            conn.execute("DELETE FROM leaves")
            conn.execute("DELETE FROM meta")
        with self._lock:
            self._pending, self._pending_rows, self._size = {}, [], 0
