"""A log's tables, whichever engine holds them: the reads, caches and checks every backend shares.

SqliteLog (storage/sqlite.py, the embedded default) and PostgresLog (storage/postgres.py) hold the same
tables: tiles, entry bundles, checkpoints, and lookups by leaf hash and by record tag. They differ only in
how a row is fetched and how a batch is committed; the rest is here, written once:

- Full tiles never change, so they are cached (``FULL_TILE_CACHE``). A partial tile's row is rewritten as it
  grows, and a partial of width W is always the first W hashes of the row, so the latest row answers for
  every node of every published size.
- The writer keeps the right edge of its last commit in memory. A read-only copy (an HTTP worker, a
  frontend) remembers the partial tile it last read at each level and reads again when a hash is beyond it.
- A commit is checked before it is written (entries and leaves agree) and the edge is updated only after
  the backend's commit returned, when the batch is durable: nothing after that may fail it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager

from ..errors import InvalidRange, UntrustedState
from ..merkle import HASH_SIZE, Node
from ..records.seal import record_tag
from ..tiles import TILE_WIDTH, full_tile_count, iter_bundle, locate, partial_width, read_tile_hash, tile_levels
from .base import Batch

# Full tiles never change, so they are cached; 1,024 tiles with interiors is ~16 MiB.
FULL_TILE_CACHE = 1024
TileRow = tuple[bytes, bytes]


class LogTables(ABC):
    """LogReader and LogWriter (storage/base.py) over a backend's row reads and atomic batch commits."""

    origin: str
    # Which engine holds the tables ("sqlite", "postgresql"): for /health and the operator.
    engine: str
    # Whether a read may wait on a network (a database server, an object store): the read API then reads in a
    # thread, so a slow one never stalls the requests its event loop serves meanwhile.
    network_reads: bool = False

    def __init__(self, *, writable: bool) -> None:
        self.writable = writable
        self._cache_lock = threading.Lock()
        # The partial tiles as of the last commit by this process (the writer).
        self._edge_rows: dict[tuple[int, int], TileRow] = {}
        self._full_tiles: OrderedDict[tuple[int, int], TileRow] = OrderedDict()
        # Read-only (another process commits): the partial tile last read at each level, by its n.
        self._partial_rows: dict[int, tuple[int, TileRow]] = {}

    # --- what a backend provides --------------------------------------------------------------------

    @abstractmethod
    def _fetch_tile(self, level: int, n: int) -> TileRow | None:
        """The committed (hashes, interior) row of tile (level, n), or None."""

    @abstractmethod
    def read_bundle(self, n: int) -> bytes | None:
        """The committed entry bundle n at its current width, or None."""

    @abstractmethod
    def _fetch_checkpoint(self, size: int | None) -> bytes | None:
        """The committed checkpoint note of exactly ``size`` (None: the largest), or None."""

    @abstractmethod
    def checkpoint_in(self, lo: int, hi: int) -> bool:
        """Whether a checkpoint with lo <= size < hi was committed."""

    @abstractmethod
    def _checkpoint_page(self, bound: int, newest_first: bool, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` (size, note) beyond ``bound``: sizes above it ascending, or below it descending."""

    @abstractmethod
    def _tile_page(self, after: tuple[int, int], limit: int) -> list[tuple[int, int, bytes, bytes]]:
        """Up to ``limit`` tile rows (level, n, hashes, interior) after ``after``, in (level, n) order."""

    @abstractmethod
    def max_bundle(self) -> int | None:
        """The largest stored bundle number, or None."""

    @abstractmethod
    def checkpoint_count(self) -> int: ...

    @abstractmethod
    def leaf_candidates(self, leaf_hash: bytes) -> list[int]:
        """Indexes, ascending, that may hold ``leaf_hash`` (a superset of those that do)."""

    @abstractmethod
    def tag_candidates(self, tags: Sequence[bytes]) -> dict[int, list[int]]:
        """For each position in ``tags`` that may be in the log, the indexes that may hold it."""

    @abstractmethod
    def index_coverage(self) -> tuple[int, int, int]:
        """For fsck: (leaves the leaf-hash lookup covers, its rows, leaves the tag lookup covers)."""

    @abstractmethod
    def _write_batch(self, batch: Batch) -> None:
        """Write ``batch`` atomically; durable once it returns. CheckpointConflict, writing nothing, unless
        the latest stored checkpoint has size ``batch.old_size``; the new leaves and tags are findable."""

    @abstractmethod
    def replace_checkpoint(self, size: int, note: bytes) -> None:
        """Store the same checkpoint with more signatures (cosignatures); durable once it returns."""

    @abstractmethod
    def snapshot(self) -> AbstractContextManager[None]:
        """Reads inside see one committed state, however much a live writer commits meanwhile (fsck)."""

    @abstractmethod
    def catch_up_indexes(self, size: int) -> None:
        """Before serving: the lookups by leaf hash and by tag cover every entry below ``size``."""

    @abstractmethod
    def maintain(self) -> None:
        """Maintenance kept off the commit path; safe to run in another thread during a commit."""

    @abstractmethod
    def close(self) -> None: ...

    # --- LogReader --------------------------------------------------------------------------------

    def latest_checkpoint(self) -> bytes:
        note = self._fetch_checkpoint(None)
        if note is None:
            raise UntrustedState(f"{self}: the log has no checkpoint")
        return note

    def checkpoint_at(self, size: int | None) -> bytes:
        """The checkpoint the log signed at exactly ``size`` (a record's; None, an unsettled one's, has none)."""
        note = None if size is None else self._fetch_checkpoint(size)
        if note is None:
            raise UntrustedState(f"no checkpoint of size {size} is stored")
        return note

    def _tile_row(self, level: int, n: int) -> TileRow | None:
        key = (level, n)
        with self._cache_lock:
            cached = self._full_tiles.get(key)
            if cached is not None:
                self._full_tiles.move_to_end(key)
                return cached
            edge = self._edge_rows.get(key)
            if edge is not None:
                return edge
        row = self._fetch_tile(level, n)
        # Only full tiles are cached: they never change. Partial rows grow with each batch.
        if row is not None and len(row[0]) == TILE_WIDTH * HASH_SIZE:
            with self._cache_lock:
                self._full_tiles[key] = row
                if len(self._full_tiles) > FULL_TILE_CACHE:
                    self._full_tiles.popitem(last=False)
        return row

    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        """One fetch per distinct tile that is neither cached nor on the right edge (the hot path of proofs)."""
        out = []
        rows: dict[tuple[int, int], TileRow] = {}
        for node in nodes:
            loc = locate(node)
            key = (loc.tile_level, loc.tile_n)
            row = rows.get(key)
            if row is None:
                row = None if self.writable else self._cached_partial(key)
                row = row or self._tile_row(*key)
                if row is None:
                    raise InvalidRange(f"node {node} is not stored")
                rows[key] = row
            try:
                out.append(read_tile_hash(row[0], row[1], loc.sublevel, loc.position))
            except InvalidRange:
                if self.writable:
                    raise  # this process commits: its edge rows are current
                row = self._tile_row(*key)  # the tile grew since we cached it
                if row is None:
                    raise
                rows[key] = row
                out.append(read_tile_hash(row[0], row[1], loc.sublevel, loc.position))
            if not self.writable and len(row[0]) < TILE_WIDTH * HASH_SIZE:
                with self._cache_lock:
                    self._partial_rows[key[0]] = (key[1], row)
        return out

    def _cached_partial(self, key: tuple[int, int]) -> TileRow | None:
        with self._cache_lock:
            cached = self._partial_rows.get(key[0])
        return cached[1] if cached is not None and cached[0] == key[1] else None

    def read_tile_row(self, level: int, n: int) -> TileRow | None:
        """The stored (hashes, interior) of tile (level, n)."""
        return self._tile_row(level, n)

    def read_tile(self, level: int, n: int) -> bytes | None:
        row = self._tile_row(level, n)
        return None if row is None else row[0]

    def find_leaf(self, leaf_hash: bytes, size: int) -> int | None:
        """The first index below ``size`` whose leaf hash is ``leaf_hash``."""
        for idx in self.leaf_candidates(leaf_hash):
            if idx >= size:
                break
            if self.read_hashes([(0, idx)])[0] == leaf_hash:
                return idx
        return None

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
        """Whether each tag is a committed record entry's: one lookup, then the log confirms each candidate."""
        found = [False] * len(tags)
        for at, candidates in self.tag_candidates(tags).items():
            found[at] = any(record_tag(self.read_entries(i, i + 1)[0]) == tags[at] for i in candidates)
        return found

    def checkpoints(self) -> Iterator[bytes]:
        """Every committed checkpoint, by increasing size, read in pages (never all in memory)."""
        after = -1
        while rows := self._checkpoint_page(after, False, 1000):
            for _, note in rows:
                yield note
            after = rows[-1][0]

    def checkpoints_newest_first(self) -> Iterator[bytes]:
        """Committed checkpoints, largest first, read in pages."""
        before = (1 << 63) - 1
        while rows := self._checkpoint_page(before, True, 100):
            for _, note in rows:
                yield note
            before = rows[-1][0]

    def tile_rows(self) -> Iterator[tuple[int, int, bytes, bytes]]:
        """Every stored tile row (fsck), in pages."""
        after = (-1, -1)
        while rows := self._tile_page(after, 256):
            yield from rows
            after = (rows[-1][0], rows[-1][1])

    # --- LogWriter --------------------------------------------------------------------------------

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
            if self.writable:  # a reader's edge rows would go stale as the writer, elsewhere, commits
                with self._cache_lock:
                    self._edge_rows[(level, full_tile_count(size, level))] = row
        return edge

    def commit(self, batch: Batch) -> None:
        if not self.writable:
            raise UntrustedState("this log was opened read-only")
        if len(batch.entries) != len(batch.leaf_hashes):
            raise UntrustedState(f"a batch of {len(batch.leaf_hashes)} leaves came with {len(batch.entries)} entries")
        self._write_batch(batch)
        # Durable from here. Nothing below may fail the batch: it is committed, and its submitters must hear so.
        with self._cache_lock:
            for key, row in batch.tiles.items():
                if len(row[0]) == TILE_WIDTH * HASH_SIZE:
                    self._edge_rows.pop(key, None)
                else:
                    self._edge_rows[key] = row
        self._after_commit(batch)

    def object_store(self) -> str | None:
        """The log's object store (s3://...), if it has one."""
        return None

    def metrics_text(self) -> str:
        return ""

    def object_store_problem(self) -> str | None:
        """Why this process cannot use the log's object store (credentials, the bucket), if it has one and cannot."""
        return None

    def record_keys(self, vkey: str, timestamp_vkey: str, witness_policy: str) -> None:
        """The writer stores the log's public keys and its witness policy ("" for none) beside its tables, for
        frontends (server/frontend.py), which have no data directory; a log in SQLite has none but its workers."""

    def log_keys(self) -> tuple[str, str, str] | None:
        """The log's (vkey, timestamp_vkey, witness policy) as its writer recorded them, if it did."""
        return None

    def check_writer(self) -> None:
        """The writer: raise (WriterElsewhere) if it is no longer the log's writer. Nothing to check for a log in
        SQLite: the directory's flock cannot be lost."""

    def record_sequencer(self, url: str) -> None:
        """The writer records where the other serves of the log reach it (server/standby.py); a log in SQLite
        has no other serve."""

    def sequencer_url(self) -> str | None:
        """Where the log's sequencer said it is reached, if it did."""
        return None

    def check_objects(self, head: int, open_note: Callable[[bytes], int]) -> tuple[list[str], list[str]]:
        """For fsck: the faults and warnings of the log's object store, if it has one (objects.check_store)."""
        return [], []

    def _after_commit(self, batch: Batch) -> None:
        """Backend work once ``batch`` is durable (derived indexes kept outside the transaction); must not raise."""


def as_bytes(value: object) -> bytes:
    """A stored blob; text in a blob column (a damaged or hand-edited database) becomes its UTF-8 bytes."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, memoryview, bytearray)):
        return bytes(value)
    raise UntrustedState(f"unexpected {type(value).__name__} where a blob is stored")
