"""The embedded default: one SQLite database in WAL mode in the data directory.

Schema (``log.db``):

- ``tiles(level, n, hashes, interior)``: every tile at its current width. A
  partial tile's row is rewritten as it grows; a partial of width W is always
  the first W hashes of the row, so every partial a checkpoint implied stays
  servable. ``interior`` holds the tile's sub-levels 1..7 (see tiles.py).
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
from collections import OrderedDict
from contextlib import contextmanager
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..durable import fsync_dir, fsync_file
from ..errors import CheckpointConflict, InvalidRange, LogExists, LogNotFound, UntrustedState
from ..merkle import HASH_SIZE, Node
from ..records.seal import record_tag
from ..tiles import TILE_WIDTH, full_tile_count, iter_bundle, locate, partial_width, read_tile_hash, tile_levels
from .base import Batch
from .transaction import write_transaction
from .prefixindex import FLUSH_ENTRIES, MAX_PENDING, TAG_INDEX_NAME, PrefixIndex

log = logging.getLogger("pacspace.storage")

SCHEMA_VERSION = 1
DB_NAME = "log.db"
# Full tiles never change, so they are cached; 1,024 tiles with interiors is ~16 MiB.
FULL_TILE_CACHE = 1024
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


class SqliteLog:
    """A log's tables in ``<data>/log.db``; implements LogReader and LogWriter.

    Reads go through one connection, writes through another; each connection is
    used by one thread at a time (reads by the event loop, the commit by the
    sequencer's worker thread).
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self._read = _connect(path, readonly=readonly)
        self._write = None if readonly else _connect(path)
        self._read_lock = threading.Lock()
        self._checkpointer: sqlite3.Connection | None = None
        # The partial tiles as of the last commit by this process: a tile only ever grows,
        # so the latest committed row answers for every node of every published size.
        self._edge_rows: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        self._full_tiles: OrderedDict[tuple[int, int], tuple[bytes, bytes]] = OrderedDict()
        # Read-only (another process commits): the partial tile last read at each level. Every hash
        # complete in it stays valid as the tile grows; a hash beyond it means a fresh read.
        self._partial_rows: dict[int, tuple[int, tuple[bytes, bytes]]] = {}
        version = self._meta("schema_version")
        if version != str(SCHEMA_VERSION):
            raise UntrustedState(f"{path}: unknown schema version {version!r}")
        self.origin = self._meta("origin") or ""
        self.index = PrefixIndex(path.parent, readonly=readonly)
        # Salted: tags are chosen by clients, who must not be able to make their prefixes collide.
        self.tags = PrefixIndex(path.parent, readonly=readonly, name=TAG_INDEX_NAME, salted=True)

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

    def _meta(self, key: str) -> str | None:
        try:
            row = self._read.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise UntrustedState(f"{self.path}: not a pacspace log database ({exc})") from None
        return None if row is None else row[0]

    # --- LogReader ---------------------------------------------------------

    def latest_checkpoint(self) -> bytes:
        with self._read_lock:
            row = self._read.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        if row is None:
            raise UntrustedState(f"{self.path}: the log has no checkpoint")
        return _as_bytes(row[0])

    def _tile_row(self, level: int, n: int) -> tuple[bytes, bytes] | None:
        key = (level, n)
        with self._read_lock:
            cached = self._full_tiles.get(key)
            if cached is not None:
                self._full_tiles.move_to_end(key)
                return cached
            edge = self._edge_rows.get(key)
            if edge is not None:
                return edge
            row = self._read.execute(
                "SELECT hashes, interior FROM tiles WHERE level = ? AND n = ?", (level, n)
            ).fetchone()
            if row is None:
                return None
            hashes, interior = bytes(row[0]), bytes(row[1])
            # Only full tiles are cached: they never change. Partial rows grow with each batch.
            if len(hashes) == TILE_WIDTH * HASH_SIZE:
                self._full_tiles[key] = (hashes, interior)
                if len(self._full_tiles) > FULL_TILE_CACHE:
                    self._full_tiles.popitem(last=False)
            return hashes, interior

    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        """One query per distinct tile that is neither cached nor on the right edge (the hot path of proofs)."""
        out = []
        rows: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        for node in nodes:
            loc = locate(node)
            key = (loc.tile_level, loc.tile_n)
            row = rows.get(key)
            if row is None:
                row = self._cached_partial(key) if self._write is None else None
                row = row or self._tile_row(*key)
                if row is None:
                    raise InvalidRange(f"node {node} is not stored")
                rows[key] = row
            try:
                out.append(read_tile_hash(row[0], row[1], loc.sublevel, loc.position))
            except InvalidRange:
                if self._write is not None:
                    raise  # this process commits: its edge rows are current
                row = self._tile_row(*key)  # the tile grew since we cached it
                if row is None:
                    raise
                rows[key] = row
                out.append(read_tile_hash(row[0], row[1], loc.sublevel, loc.position))
            if self._write is None and len(row[0]) < TILE_WIDTH * HASH_SIZE:
                with self._read_lock:
                    self._partial_rows[key[0]] = (key[1], row)
        return out

    def _cached_partial(self, key: tuple[int, int]) -> tuple[bytes, bytes] | None:
        with self._read_lock:
            cached = self._partial_rows.get(key[0])
        return cached[1] if cached is not None and cached[0] == key[1] else None

    def read_tile_row(self, level: int, n: int) -> tuple[bytes, bytes] | None:
        """The stored (hashes, interior) of tile (level, n)."""
        return self._tile_row(level, n)

    def read_tile(self, level: int, n: int) -> bytes | None:
        row = self._tile_row(level, n)
        return None if row is None else row[0]

    def read_bundle(self, n: int) -> bytes | None:
        with self._read_lock:
            row = self._read.execute("SELECT data FROM bundles WHERE n = ?", (n,)).fetchone()
        return None if row is None else bytes(row[0])

    def replace_checkpoint(self, size: int, note: bytes) -> None:
        """Store the same checkpoint with more signatures (the witnesses' cosignatures). Durable once it returns."""
        conn = self._write
        if conn is None:
            raise UntrustedState("this log was opened read-only")
        with write_transaction(conn):
            conn.execute("UPDATE checkpoints SET note = ? WHERE size = ?", (note, size))

    def checkpoint_at(self, size: int | None) -> bytes:
        """The checkpoint the log signed at exactly ``size``."""
        with self._read_lock:
            row = self._read.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        if row is None:
            raise UntrustedState(f"no checkpoint of size {size} is stored")
        return _as_bytes(row[0])

    def checkpoint_in(self, lo: int, hi: int) -> bool:
        with self._read_lock:
            row = self._read.execute(
                "SELECT 1 FROM checkpoints WHERE size >= ? AND size < ? LIMIT 1", (lo, hi)
            ).fetchone()
        return row is not None

    def find_leaf(self, leaf_hash: bytes, size: int) -> int | None:
        """The first index below ``size`` whose leaf hash is ``leaf_hash``."""
        for idx in self.index.candidates(leaf_hash):
            if idx >= size:
                break
            if self.read_hashes([(0, idx)])[0] == leaf_hash:
                return idx
        return None

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one committed state, however much a live writer commits meanwhile (fsck)."""
        with self._read_lock:
            self._read.execute("BEGIN")
        try:
            yield
        finally:
            with self._read_lock:
                self._read.execute("COMMIT")

    def read_leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        return self.read_hashes([(0, i) for i in range(start, stop)])

    def read_entries(self, start: int, stop: int) -> list[bytes]:
        """The committed entries in [start, stop), from their bundles."""
        out: list[bytes] = []
        for n in range(start // TILE_WIDTH, (stop + TILE_WIDTH - 1) // TILE_WIDTH):
            data = self.read_bundle(n)
            if data is None:
                raise InvalidRange(f"entry bundle {n} is not stored")
            lo = max(start, n * TILE_WIDTH) - n * TILE_WIDTH
            hi = min(stop, (n + 1) * TILE_WIDTH) - n * TILE_WIDTH
            entries = list(iter_bundle(data))[lo:hi]
            if len(entries) != hi - lo:
                raise InvalidRange(f"entry bundle {n} holds {len(entries)} entries, fewer than its leaves")
            out += entries
        return out

    def read_tags(self, start: int, stop: int) -> list[bytes | None]:
        """The record tag of each committed entry in [start, stop) (None for an entry that is not a record)."""
        return [record_tag(e) for e in self.read_entries(start, stop)]

    def tags_in_log(self, tags: Sequence[bytes]) -> list[bool]:
        """Whether each tag is a committed record entry's: one indexed query, then the log confirms each candidate."""
        if self.tags.broken:
            raise UntrustedState("the tag index missed a committed batch; restart the server to rebuild it")
        found = [False] * len(tags)
        for at, candidates in self.tags.candidates_many(tags).items():
            found[at] = any(record_tag(self.read_entries(i, i + 1)[0]) == tags[at] for i in candidates)
        return found

    def checkpoints(self) -> Iterator[bytes]:
        """Every committed checkpoint, by increasing size, read in pages (never all in memory)."""
        after = -1
        while True:
            with self._read_lock:
                rows = self._read.execute(
                    "SELECT size, note FROM checkpoints WHERE size > ? ORDER BY size LIMIT 1000", (after,)
                ).fetchall()
            if not rows:
                return
            for size, note in rows:
                yield _as_bytes(note)
            after = rows[-1][0]

    def checkpoints_newest_first(self) -> Iterator[bytes]:
        """Committed checkpoints, largest first, read in pages."""
        before = (1 << 63) - 1
        while True:
            with self._read_lock:
                rows = self._read.execute(
                    "SELECT size, note FROM checkpoints WHERE size < ? ORDER BY size DESC LIMIT 100", (before,)
                ).fetchall()
            if not rows:
                return
            for size, note in rows:
                yield _as_bytes(note)
            before = rows[-1][0]

    def checkpoint_count(self) -> int:
        with self._read_lock:
            return int(self._read.execute("SELECT count(*) FROM checkpoints").fetchone()[0])

    def tile_rows(self) -> Iterator[tuple[int, int, bytes, bytes]]:
        """Every stored tile row (fsck), in pages."""
        after = (-1, -1)
        while True:
            with self._read_lock:
                rows = self._read.execute(
                    "SELECT level, n, hashes, interior FROM tiles WHERE (level, n) > (?, ?) "
                    "ORDER BY level, n LIMIT 256",
                    after,
                ).fetchall()
            if not rows:
                return
            for level, n, hashes, interior in rows:
                yield int(level), int(n), bytes(hashes), bytes(interior)
            after = (rows[-1][0], rows[-1][1])

    def max_bundle(self) -> int | None:
        with self._read_lock:
            row = self._read.execute("SELECT max(n) FROM bundles").fetchone()
        return None if row[0] is None else int(row[0])

    # --- LogWriter ---------------------------------------------------------

    def edge_tiles(self, size: int) -> dict[int, list[bytes]]:
        """The right edge for ``size``; raises UntrustedState if a stored edge tile has another width."""
        edge: dict[int, list[bytes]] = {}
        for level in range(tile_levels(size) + 1):
            width = partial_width(size, level)
            if width == 0:
                edge[level] = []
                continue
            row = self._tile_row(level, full_tile_count(size, level))
            if row is None or len(row[0]) != width * HASH_SIZE:
                raise UntrustedState(
                    f"stored tile ({level}, {full_tile_count(size, level)}) does not have the width "
                    f"{width} that tree size {size} implies"
                )
            hashes = row[0]
            edge[level] = [hashes[i : i + HASH_SIZE] for i in range(0, len(hashes), HASH_SIZE)]
            with self._read_lock:
                self._edge_rows[(level, full_tile_count(size, level))] = row
        return edge

    def commit(self, batch: Batch) -> None:
        conn = self._write
        if conn is None:
            raise UntrustedState("this log was opened read-only")
        if len(batch.entries) != len(batch.leaf_hashes):
            raise UntrustedState(f"a batch of {len(batch.leaf_hashes)} leaves came with {len(batch.entries)} entries")
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
        # Nothing below may fail the batch: it is committed, and its submitters must hear so.
        with self._read_lock:
            for key, row in batch.tiles.items():
                if len(row[0]) == TILE_WIDTH * HASH_SIZE:
                    self._edge_rows.pop(key, None)
                else:
                    self._edge_rows[key] = row
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


def _as_bytes(value: object) -> bytes:
    """A stored blob; text in a blob column (a damaged or hand-edited database) becomes its UTF-8 bytes."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, memoryview, bytearray)):
        return bytes(value)
    raise UntrustedState(f"unexpected {type(value).__name__} where a blob is stored")


if TYPE_CHECKING:  # SqliteLog implements both storage contracts: mypy checks it, as Sunlight's ``var _ Backend = ...``

    from .base import LogReader, LogWriter

    def _log_reader(store: SqliteLog) -> LogReader:
        return store

    def _log_writer(store: SqliteLog) -> LogWriter:
        return store
