"""The embedded default: one SQLite database in WAL mode in the data directory.

Schema (``log.db``):

- ``tiles(level, n, hashes, interior)``: every tile at its current width (the
  growth rule is in logtables.py). ``interior`` holds the tile's sub-levels 1..7
  (see tiles.py).
- ``bundles(n, data)``: entry bundles, same growth rule.
- ``checkpoints(size, note)``: every checkpoint the log signed.
- ``meta(key, value)``: schema version and origin.

The leaf index (proofs by hash) and the tag index (one entry per record tag) are
derived data, each in its own file (prefixindex.py).

Durability: ``synchronous=FULL`` in WAL mode makes SQLite fsync the WAL before
COMMIT returns, so a committed batch survives power loss and ``kill -9``; a
batch that did not reach COMMIT leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..durable import fsync_dir, fsync_file
from ..errors import CheckpointConflict, LogExists, LogNotFound, UntrustedState
from ..records.seal import record_tag
from .base import Batch
from .logtables import LogTables, TileRow, as_bytes
from .transaction import write_transaction
from .prefixindex import FLUSH_ENTRIES, MAX_PENDING, TAG_INDEX_NAME, PrefixIndex

log = logging.getLogger("pacspace.storage")

SCHEMA_VERSION = 1
DB_NAME = "log.db"
WAL_AUTOCHECKPOINT_PAGES = 20000
WAL_SIZE_LIMIT = 64 << 20

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tiles (
    level INTEGER NOT NULL,
    n INTEGER NOT NULL,
    hashes BLOB NOT NULL,
    interior BLOB NOT NULL,
    PRIMARY KEY (level, n)
);
CREATE TABLE bundles (n INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE checkpoints (size INTEGER PRIMARY KEY, note BLOB NOT NULL);
"""


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode={'ro' if readonly else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    if not readonly:
        # WAL: readers never block the writer and see only committed batches.
        conn.execute("PRAGMA journal_mode = WAL")
    # FULL: in WAL mode, COMMIT returns only after the WAL is fsynced (the durability contract).
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA cache_size = -32768")
    if not readonly:
        # Checkpoints normally run off the commit path (SqliteLog.maintain, from the
        # sequencer's maintenance thread); this larger automatic threshold is only a backstop.
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    return conn


class SqliteLog(LogTables):
    """A log's tables in ``<data>/log.db``; implements LogReader and LogWriter (shared logic: logtables.py).

    Reads go through one connection, writes through another; each connection is
    used by one thread at a time (reads by the event loop, the commit by the
    sequencer's worker thread).
    """

    engine = "sqlite"

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        super().__init__(writable=not readonly)
        self.path = path
        self._read = _connect(path, readonly=readonly)
        self._write = None if readonly else _connect(path)
        self._read_lock = threading.Lock()
        self._checkpointer: sqlite3.Connection | None = None
        version = self._meta("schema_version")
        if version != str(SCHEMA_VERSION):
            raise UntrustedState(f"{path}: unknown schema version {version!r}")
        self.origin = self._meta("origin") or ""
        self.index = PrefixIndex(path.parent, readonly=readonly)
        # Salted: tags are chosen by clients, who must not be able to make their prefixes collide.
        self.tags = PrefixIndex(path.parent, readonly=readonly, name=TAG_INDEX_NAME, salted=True)

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def create(cls, data_dir: Path, origin: str, first_checkpoint: bytes) -> SqliteLog:
        """Create the database with its size-0 checkpoint; refuses if one exists."""
        path = data_dir / DB_NAME
        if path.exists():
            raise LogExists(f"a log already exists at {data_dir}")
        tmp = data_dir / (DB_NAME + ".creating")
        for leftover in (tmp, Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm"), Path(str(tmp) + "-journal")):
            leftover.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN")
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("INSERT INTO meta VALUES ('origin', ?)", (origin,))
            conn.execute("INSERT INTO checkpoints VALUES (0, ?)", (first_checkpoint,))
            conn.execute("COMMIT")
        finally:
            conn.close()
        # Publish the database under its real name only once it is complete and durable.
        fsync_file(tmp)
        try:
            os.link(tmp, path)  # unlike rename, fails if a database appeared meanwhile
        finally:
            tmp.unlink()
        fsync_dir(data_dir)
        return cls(path)

    @classmethod
    def open(cls, data_dir: Path, *, readonly: bool = False) -> SqliteLog:
        path = data_dir / DB_NAME
        if not path.exists():
            raise LogNotFound(f"no log at {data_dir} (run `pacspace init --data {data_dir}`)")
        return cls(path, readonly=readonly)

    def close(self) -> None:
        for index in (self.index, self.tags):
            if self._write is not None:
                index.flush()
            index.close()
        self._read.close()
        if self._write is not None:
            self._write.close()
        if self._checkpointer is not None:
            self._checkpointer.close()

    def maintain(self) -> None:
        """Work kept off the commit path, for one maintenance thread: flush the leaf index when due,
        and copy committed WAL pages into the database file (a PASSIVE checkpoint never blocks the writer).
        """
        if self._write is None:
            return
        for index in (self.index, self.tags):
            if index.flush_due():
                index.flush()
        if self._checkpointer is None:
            self._checkpointer = _connect(self.path)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def catch_up_indexes(self, size: int) -> None:
        """The leaf and tag indexes are derived files a crash may have left behind the log: re-derived."""
        self.index.catch_up(size, self.read_leaf_hashes)
        behind = size - self.tags.size
        if behind > 100_000:
            log.info("indexing the tags of %d log entries (the tag index is new or behind the log)", behind)
        self.tags.catch_up(size, self.read_tags)

    def _meta(self, key: str) -> str | None:
        try:
            row = self._read.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise UntrustedState(f"{self.path}: not a pacspace log database ({exc})") from None
        return None if row is None else row[0]

    def _one(self, sql: str, args: tuple[object, ...] = ()) -> tuple[object, ...] | None:
        with self._read_lock:
            row: tuple[object, ...] | None = self._read.execute(sql, args).fetchone()
        return row

    def _all(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        with self._read_lock:
            return list(self._read.execute(sql, args).fetchall())

    # --- row reads (LogTables) ---------------------------------------------------------------------

    def _fetch_tile(self, level: int, n: int) -> TileRow | None:
        row = self._one("SELECT hashes, interior FROM tiles WHERE level = ? AND n = ?", (level, n))
        return None if row is None else (as_bytes(row[0]), as_bytes(row[1]))

    def read_bundle(self, n: int) -> bytes | None:
        row = self._one("SELECT data FROM bundles WHERE n = ?", (n,))
        return None if row is None else as_bytes(row[0])

    def _fetch_checkpoint(self, size: int | None) -> bytes | None:
        if size is None:
            row = self._one("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1")
        else:
            row = self._one("SELECT note FROM checkpoints WHERE size = ?", (size,))
        return None if row is None else as_bytes(row[0])

    def checkpoint_in(self, lo: int, hi: int) -> bool:
        return self._one("SELECT 1 FROM checkpoints WHERE size >= ? AND size < ? LIMIT 1", (lo, hi)) is not None

    def _checkpoint_page(self, bound: int, newest_first: bool, limit: int) -> list[tuple[int, bytes]]:
        sql = ("SELECT size, note FROM checkpoints WHERE size < ? ORDER BY size DESC LIMIT ?" if newest_first
               else "SELECT size, note FROM checkpoints WHERE size > ? ORDER BY size LIMIT ?")
        return [(int(str(size)), as_bytes(note)) for size, note in self._all(sql, (bound, limit))]

    def _tile_page(self, after: tuple[int, int], limit: int) -> list[tuple[int, int, bytes, bytes]]:
        rows = self._all("SELECT level, n, hashes, interior FROM tiles WHERE (level, n) > (?, ?) "
                         "ORDER BY level, n LIMIT ?", (*after, limit))
        return [(int(str(level)), int(str(n)), as_bytes(h), as_bytes(i)) for level, n, h, i in rows]

    def max_bundle(self) -> int | None:
        row = self._one("SELECT max(n) FROM bundles")
        return None if row is None or row[0] is None else int(str(row[0]))

    def checkpoint_count(self) -> int:
        row = self._one("SELECT count(*) FROM checkpoints")
        return int(str(row[0])) if row else 0

    def leaf_candidates(self, leaf_hash: bytes) -> list[int]:
        return self.index.candidates(leaf_hash)

    def tag_candidates(self, tags: Sequence[bytes]) -> dict[int, list[int]]:
        if self.tags.broken:
            raise UntrustedState("the tag index missed a committed batch; restart the server to rebuild it")
        return self.tags.candidates_many(tags)

    def index_coverage(self) -> tuple[int, int, int]:
        indexed, rows = self.index.stored_size_and_rows()
        return indexed, rows, self.tags.stored_size()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        with self._read_lock:
            self._read.execute("BEGIN")
        try:
            yield
        finally:
            with self._read_lock:
                self._read.execute("COMMIT")

    # --- writes (LogTables) ------------------------------------------------------------------------

    def replace_checkpoint(self, size: int, note: bytes) -> None:
        conn = self._write
        if conn is None:
            raise UntrustedState("this log was opened read-only")
        with write_transaction(conn):
            conn.execute("UPDATE checkpoints SET note = ? WHERE size = ?", (note, size))

    def _write_batch(self, batch: Batch) -> None:
        conn = self._write
        assert conn is not None  # LogTables.commit refuses a read-only log
        with write_transaction(conn):
            (stored,) = conn.execute("SELECT max(size) FROM checkpoints").fetchone()
            if stored != batch.old_size:
                raise CheckpointConflict(
                    f"stored checkpoint has size {stored}, the batch extends size {batch.old_size}"
                )
            conn.executemany(
                "INSERT OR REPLACE INTO tiles (level, n, hashes, interior) VALUES (?, ?, ?, ?)",
                [(level, n, hashes, interior) for (level, n), (hashes, interior) in batch.tiles.items()],
            )
            conn.executemany("INSERT OR REPLACE INTO bundles (n, data) VALUES (?, ?)", list(batch.bundles.items()))
            conn.execute("INSERT INTO checkpoints (size, note) VALUES (?, ?)", (batch.new_size, batch.checkpoint))
        # Durable from here: the WAL was fsynced inside COMMIT (synchronous=FULL).

    def _after_commit(self, batch: Batch) -> None:
        for index, keys in ((self.index, batch.leaf_hashes), (self.tags, [record_tag(e) for e in batch.entries])):
            try:
                index.add(batch.old_size, keys)
            except Exception:
                # The index is derived: the next start re-derives what is missing (PrefixIndex.catch_up).
                # Until then a lookup may miss entries, so the server stops admitting records (TagGuard).
                index.broken = True
                log.exception("%s update failed after a durable commit; lookups may miss entries until restart", index.name)
                continue
            if index.pending() > MAX_PENDING:
                # Back-pressure: the maintenance thread fell behind. Pay for one run here (a short
                # stall, not a flush of everything), so memory stays bounded.
                try:
                    index.flush(limit=FLUSH_ENTRIES)
                except Exception:
                    # The rows stay pending in memory, where lookups see them; the next flush retries.
                    log.exception("%s flush failed; it is retried", index.name)


if TYPE_CHECKING:  # SqliteLog implements both storage contracts: mypy checks it, as Sunlight's ``var _ Backend = ...``

    from .base import LogReader, LogWriter

    def _log_reader(store: SqliteLog) -> LogReader:
        return store

    def _log_writer(store: SqliteLog) -> LogWriter:
        return store
