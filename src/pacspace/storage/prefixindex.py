"""A prefix index: 32-byte key -> the log indexes that hold it. Derived data, kept off the commit path.

Two are kept, each in its own SQLite file: the leaf index (``leaves.db``, leaf
hash -> index, for proofs by hash) and the tag index (``tags.db``, a record
entry's tag -> index, so no tag enters the log twice).

Each lives apart from log.db because every insert lands on a random B-tree page:
written inside the log's commit, it would dominate the commit at 10^7 leaves.
Instead the log hands each committed batch's keys to :meth:`PrefixIndex.add`,
which holds them in memory (lookups see them at once) until :meth:`flush`
writes many batches as one sorted run, from the maintenance thread, on the
other core.

Durability: none needed. ``indexed_size`` is committed with the rows; after a
crash, :meth:`catch_up` re-reads the entry bundles from there to the log's size.
Pending entries are bounded (``MAX_PENDING``), which bounds that catch-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .transaction import write_transaction

LEAF_INDEX_NAME = "leaves.db"
TAG_INDEX_NAME = "tags.db"
# Flush once this many hashes wait, or once the oldest waited FLUSH_AFTER seconds.
FLUSH_ENTRIES = 65536
FLUSH_AFTER = 1.0
# The sequencer flushes inline beyond this, so memory and crash catch-up stay bounded.
MAX_PENDING = 262_144
_PREFIX = struct.Struct(">q")
# Salted prefixes kept between a lookup and its commit (PrefixIndex._looked_up), at most.
_MEMO_LIMIT = 65_536

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS leaves (prefix INTEGER NOT NULL, idx INTEGER NOT NULL, "
    "PRIMARY KEY (prefix, idx)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


def key_prefix(key: bytes, salt: bytes = b"") -> int:
    """The stored key: 8 bytes of a key (of SHA-256(salt || key) when salted) as a signed 64-bit integer.

    Candidates are confirmed against the log itself, so a colliding prefix
    costs a read, never a wrong answer; the small key keeps the B-tree small.
    A key a client chooses (a record's tag) is salted with a secret of the
    index, so nobody can make many keys share a prefix and every lookup slow.
    """
    if salt:
        key = hashlib.sha256(salt + key).digest()
    return _PREFIX.unpack_from(key)[0]  # type: ignore[no-any-return]


def key_prefixes(keys: Sequence[bytes], salt: bytes = b"") -> list[int]:
    """:func:`key_prefix` of each key, for many at once (the keys of a committed batch)."""
    if salt:
        sha256 = hashlib.sha256
        keys = [sha256(salt + key).digest() for key in keys]
    if any(len(key) != 32 for key in keys):
        return [key_prefix(key) for key in keys]
    # The joined keys as 64-bit words, big-endian like key_prefix; the first of each key's four.
    words = array("q", b"".join(keys))
    if sys.byteorder == "little":
        words.byteswap()
    return words[::4].tolist()


class PrefixIndex:
    def __init__(self, data_dir: Path, *, readonly: bool = False, name: str = LEAF_INDEX_NAME, salted: bool = False) -> None:
        path = data_dir / name
        self.name = name
        self._salted = salted
        # Set when a committed batch could not be added: lookups may miss it until catch_up at the next start.
        self.broken = False
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
        # Owned under _lock: keys not yet flushed, by prefix: the first index with it, and (rare: two
        # keys that share a prefix) the others in _pending_more.
        self._pending: dict[int, int] = {}
        self._pending_more: dict[int, list[int]] = {}
        self._pending_rows: list[tuple[int, int]] = []
        self._pending_since = 0.0
        self._salt = self._load_salt()
        # Salted prefixes that candidates_many computed, by key: the commit that follows a lookup indexes the same
        # keys, and SHA-256 per key is most of the index's cost. A memo, cleared when full.
        self._looked_up: dict[bytes, int] = {}
        # Leaves [0, _size) are indexed (in memory or on disk); [0, _stored) on disk.
        self._size = self._stored = self._stored_size()

    def _load_salt(self) -> bytes:
        """A salted index's secret, drawn when the file is new (or emptied)."""
        if not self._salted or self._conn is None:
            return b""
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()
        except sqlite3.OperationalError:
            row = None  # read-only, and the file has no tables yet
        if row is not None:
            return _PREFIX.pack(int(row[0]))
        if self._readonly:
            return b""
        with write_transaction(self._conn) as conn:
            # Rows without their salt cannot be looked up: start the index afresh; catch_up refills it.
            conn.execute("DELETE FROM leaves")
            conn.execute("DELETE FROM meta")
            salt = os.urandom(8)
            conn.execute("INSERT INTO meta VALUES ('salt', ?)", _PREFIX.unpack(salt))
        return salt

    def _prefix(self, key: bytes) -> int:
        return key_prefix(key, self._salt)

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
        """(indexed_size, row count) from one snapshot of the index file."""
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

    def add(self, start: int, keys: Iterable[bytes | None]) -> None:
        """Index leaves ``start, start+1, ...`` by their keys (None: a leaf without one); ``start`` must
        be the current size. Memory only."""
        keys = list(keys)
        if None in keys:
            rows = self._rows([k for k in keys if k is not None], [i for i, k in enumerate(keys, start) if k is not None])
        else:
            rows = self._rows(keys, range(start, start + len(keys)))  # type: ignore[arg-type]
        with self._lock:
            if start != self._size:
                raise AssertionError(f"leaf index at {self._size} was handed leaves from {start}")
            if not self._pending_rows and rows:
                self._pending_since = time.monotonic()
            self._remember(rows)
            self._pending_rows.extend(rows)
            self._size = start + len(keys)

    def _rows(self, keys: Sequence[bytes], indexes: Sequence[int]) -> list[tuple[int, int]]:
        return list(zip(self._prefixes(keys), indexes))

    def _prefixes(self, keys: Sequence[bytes]) -> list[int]:
        """key_prefixes of ``keys``, taken from the lookups' memo where it holds them."""
        memo = self._looked_up
        if not memo:
            return key_prefixes(keys, self._salt)
        known = [memo.pop(key, None) for key in keys]
        missing = [key for key, prefix in zip(keys, known) if prefix is None]
        if not missing:
            return known  # type: ignore[return-value]
        computed = iter(key_prefixes(missing, self._salt))
        return [next(computed) if prefix is None else prefix for prefix in known]

    def _remember(self, rows: list[tuple[int, int]]) -> None:
        """Put rows (in index order) in the pending map; the caller holds _lock."""
        fresh = dict(rows)
        if len(fresh) == len(rows) and self._pending.keys().isdisjoint(fresh):
            self._pending.update(fresh)  # the usual case: no prefix repeats
            return
        for prefix, i in rows:
            if prefix in self._pending:
                self._pending_more.setdefault(prefix, []).append(i)
            else:
                self._pending[prefix] = i

    def _pending_of(self, prefix: int) -> list[int]:
        """Pending indexes of a prefix; the caller holds _lock."""
        first = self._pending.get(prefix)
        if first is None:
            return []
        return [first, *self._pending_more.get(prefix, ())]

    def pending(self) -> int:
        with self._lock:
            return len(self._pending_rows)

    def flush_due(self) -> bool:
        with self._lock:
            n = len(self._pending_rows)
            if n == 0:
                # Only keyless leaves since the last flush: record how far the index reaches, now and then.
                return self._size - self._stored >= FLUSH_ENTRIES
            return n >= FLUSH_ENTRIES or time.monotonic() - self._pending_since >= FLUSH_AFTER

    def flush(self, limit: int | None = None) -> None:
        """Write the oldest pending rows (at most ``limit``) as one sorted run, with the size they reach."""
        if self._conn is None or self._readonly:
            return
        with self._flush_lock:
            with self._lock:
                # A copy: the commit thread may add rows while these are written.
                everything = limit is None or limit >= len(self._pending_rows)
                rows = list(self._pending_rows) if everything else self._pending_rows[:limit]
                if (not rows and not everything) or (everything and not rows and self._size <= self._stored):
                    return
                # Rows are pending in index order, so a run of all of them reaches the indexed size
                # (leaves without a key included), and a shorter one ends where its last row is.
                size = self._size if everything else rows[-1][1] + 1
            with write_transaction(self._conn) as conn:
                # One statement for the run: executemany would hand the GIL back and forth once per row.
                # SQLite sorts the run (in key order the inserts touch each B-tree page once), without the GIL.
                conn.execute(
                    "INSERT OR IGNORE INTO leaves (prefix, idx) "
                    "SELECT json_extract(value, '$[0]') AS p, json_extract(value, '$[1]') AS i FROM json_each(?) "
                    "ORDER BY p, i",
                    (json.dumps(rows),),
                )
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('indexed_size', ?)", (size,))
            with self._lock:
                self._stored = size
                self._pending_rows = self._pending_rows[len(rows) :]
                self._pending, self._pending_more = {}, {}
                self._remember(self._pending_rows)
                if self._pending_rows:
                    self._pending_since = time.monotonic()

    def candidates(self, key: bytes) -> list[int]:
        """Indexes whose key may be ``key``, ascending (confirm each against the log)."""
        prefix = self._prefix(key)
        with self._lock:
            pending = self._pending_of(prefix)
        stored: list[int] = []
        if self._reader is not None:
            with self._reader_lock:
                stored = [
                    int(r[0])
                    for r in self._reader.execute("SELECT idx FROM leaves WHERE prefix = ? ORDER BY idx", (prefix,))
                ]
        return sorted(set(stored + pending))

    def candidates_many(self, keys: Sequence[bytes]) -> dict[int, list[int]]:
        """:meth:`candidates` of each key that has any, by the key's position, with one query for all of them."""
        prefixes = key_prefixes(keys, self._salt)
        if self._salt and not self._readonly:
            if len(self._looked_up) > _MEMO_LIMIT:
                self._looked_up = {}
            self._looked_up.update(zip(keys, prefixes))
        found: dict[int, set[int]] = {}
        with self._lock:
            for prefix in prefixes:
                if prefix in self._pending:
                    found[prefix] = set(self._pending_of(prefix))
        if self._reader is not None and prefixes:
            with self._reader_lock:
                rows = self._reader.execute(
                    "SELECT prefix, idx FROM leaves WHERE prefix IN (SELECT value FROM json_each(?))",
                    (json.dumps(prefixes),),
                ).fetchall()
            for prefix, idx in rows:
                found.setdefault(int(prefix), set()).add(int(idx))
        if not found:
            return {}
        return {i: sorted(found[prefix]) for i, prefix in enumerate(prefixes) if prefix in found}

    def catch_up(self, log_size: int, read_keys: Callable[[int, int], Sequence[bytes | None]]) -> int:
        """Bring the index to ``log_size`` after a crash or restore; returns how many leaves were re-read.

        ``read_keys(start, stop)`` returns the keys of the committed leaves in [start, stop).
        An index ahead of the log (a restored older log.db) is rebuilt from scratch.
        """
        if self._size > log_size:
            self._reset()
        start = self._size
        step = FLUSH_ENTRIES
        for lo in range(start, log_size, step):
            self.add(lo, read_keys(lo, min(log_size, lo + step)))
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
            conn.execute("DELETE FROM meta WHERE key = 'indexed_size'")
        with self._lock:
            self._pending, self._pending_more, self._pending_rows = {}, {}, []
            self._size = self._stored = 0
