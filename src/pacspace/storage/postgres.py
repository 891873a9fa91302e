"""The log's tables in PostgreSQL (``--database postgresql://...``), for a log that outgrows one machine.

The same tables as SqliteLog (storage/sqlite.py), created by storage/migrations.py, read and cached by
logtables.py. What differs, and why it is safe:

- **Durability.** A commit is durable once COMMIT returns: the server's ``fsync`` must be on (checked when
  a writer connects, which refuses otherwise) and the session's ``synchronous_commit`` is never ``off``
  (set to ``on`` if the server's default is ``off``).
- **One writer at a time.** The writer holds a session advisory lock (``pgconnect.WRITER_LOCK``) from the moment it
  opens: a second one is refused (LogLocked), and the lock goes with the writer's connection when its
  process dies. Behind that fence, a commit compare-and-swaps the one row of ``log_head`` from the batch's old
  size to its new one, inside the transaction that writes the batch. Two sequencers that both extend size
  N serialise on that row: the second finds the size moved, writes nothing and gets CheckpointConflict,
  so two checkpoints of one size can never both be stored.
- **A lost connection is not a lost log.** If PostgreSQL drops the writer's connection (a restart, a
  failover), its lock went with it: the writer connects again (waiting up to RECONNECT_WAIT for the server to
  take connections) and must take the lock again before it writes (LogLocked if another process took it
  meanwhile). If its own earlier session still holds the lock (a link cut on the writer's side only), that
  session is ended, by pid and start time, never another's. A batch whose COMMIT was sent when the
  connection died is looked for first (the head at its size, with its checkpoint) and written again only if
  it is not there, so it is neither lost nor written twice.
- **Lookups are transactional.** The leaf-hash and tag lookups are tables written in the batch's own
  transaction, not derived files: a committed leaf is findable at once, and nothing needs re-deriving at
  start (``catch_up_indexes`` has nothing to do).
- **An object store** (``--objects s3://...``, storage/objects.py) takes the entry bundles once a round of the
  mirror has copied them there; a bundle that is no longer in ``bundles`` is read from the store and checked
  against the level-0 tile before anything uses it.
- **Reads** go through one connection in autocommit mode (each query sees everything committed before
  it), the commit through another; each is used by one thread at a time, under its lock.

Uses psycopg 3 (LGPL-3.0, imported, unmodified, as a separate package): its synchronous API has the shape
of sqlite3's, which is what the sequencer's commit thread and the storage layer call, and COPY writes a
batch's index rows in one round trip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg

from ..errors import CheckpointConflict, LogExists, LogLocked, ObjectCorrupt, ObjectStoreFailed, UntrustedState
from ..merkle import leaf_hash
from ..records.seal import record_tag
from ..tiles import TILE_WIDTH, TileRef, iter_bundle
from .base import Batch
from .database_url import redact
from .logtables import LogTables, TileRow, as_bytes
from .migrations import migrate, require_current, schema_version
from .pgconnect import RECONNECT_PAUSE, RECONNECT_WAIT, Connection, Session, connect, connect_reader, first_line, \
    connect_writer, require_durable
from .objects import RECORDED_MARK, RECORDED_STORE, ObjectMirror, blame_the_store, check_bundle, check_mark, check_store, kept_store
from .s3 import S3Bucket, S3Location, open_bucket

log = logging.getLogger("pacspace.storage")

# (phase, done, total), as cli/progress.py draws it.
Progress = Callable[[str, int, int], None]
# Bytes of full bundles read back from the object store and checked, kept: they never change.
STORE_BUNDLE_CACHE = 32 << 20


class PostgresLog(LogTables):
    """A log's tables in a PostgreSQL database; implements LogReader and LogWriter."""

    engine = "postgresql"
    network_reads = True

    def __init__(self, url: str, *, readonly: bool = False, objects: str | None = None, mirror: bool = True) -> None:
        """``objects``: the object store (s3://...) to keep the log's tiles and bundles in from now on; once a log
        has one, every process uses it without being told, and another one is refused. ``mirror``: the writer
        brings the store up to the log in a thread (not for ``migrate``, which only records the store)."""
        super().__init__(writable=not readonly)
        self.url = url
        self.objects: S3Bucket | None = None
        self._mirror: ObjectMirror | None = None
        self._store_bundles: OrderedDict[int, bytes] = OrderedDict()
        self._store_bytes = 0
        self._closed = False
        self._head_size = 0  # the writer's committed size, for the mirror's lag
        self._read = connect_reader(url)
        self._read_lock = threading.Lock()
        self._in_snapshot = False
        self._write: Connection | None = None
        self._session: Session | None = None  # the writer's (pid, backend_start)
        self._write_lock = threading.Lock()
        try:
            if not readonly:
                self._write, self._session = connect_writer(url)
                # The writer brings an older pacspace schema up to date, in one transaction, before anything
                # reads it (as records.db is at start); a database pacspace never initialised is left alone.
                if schema_version(self._write):
                    with self._write.transaction():
                        for step in migrate(self._write):
                            log.info("migrated %s to schema version %d: %s", redact(url), step.version, step.description)
            require_current(self._read, redact(url))
            origin = self._read.execute("SELECT value FROM log_meta WHERE key = 'origin'").fetchone()
            if origin is None:
                raise UntrustedState(f"{redact(url)}: the database has the schema but no log (run `pacspace init`)")
            self.origin = str(origin[0])
            self._open_objects(objects, mirror)
        except psycopg.errors.InsufficientPrivilege as exc:
            self.close()
            raise UntrustedState(f"{redact(url)}: the role may not read the log's tables ({first_line(exc)}); grant it "
                                 "SELECT on them (docs/operations.md)") from None
        except BaseException:
            self.close()
            raise

    def _open_objects(self, wanted: str | None, mirror: bool) -> None:
        """The log's object store: the one it has, or ``wanted``, which the writer records for every process."""
        held = self.object_store()
        if wanted is not None:
            wanted = kept_store(held, wanted)
            if held is None:
                if self._write is None:
                    raise UntrustedState(f"the log has no object store yet: start `pacspace serve --objects {wanted}` "
                                         "(its writer records it) first")
                self.objects = S3Bucket.from_env(S3Location.parse(wanted))
                self.objects.check()  # a bucket that is missing or refuses these credentials is not recorded
                self._write.execute("INSERT INTO objects (url, size) VALUES (%s, 0) ON CONFLICT DO NOTHING", (wanted,))
                held = wanted
        # A reader opens the store when it first needs a bundle from it (_bucket): one that never does (fsck of
        # a log the store has not taken a bundle of, init, migrate) needs no credentials.
        if held is not None and self._write is not None and mirror:
            head = self._one("SELECT size FROM log_head")
            self._head_size = 0 if head is None else int(head[0])
            self.objects = self.objects or S3Bucket.from_env(S3Location.parse(held))
            self._mirror = ObjectMirror(self.objects, self)
            self._mirror.start()

    def _bucket(self) -> S3Bucket | None:
        """The log's object store, if it has one: looked up again while this process knows of none, since a
        writer may have given the log one after this process opened it."""
        if self.objects is None:
            url = self.object_store()
            if url is not None:
                self.objects = open_bucket(url)
        return self.objects

    def object_store(self) -> str | None:
        row = self._one(RECORDED_STORE)
        return None if row is None else str(row[0])

    def metrics_text(self) -> str:
        if self._mirror is None:
            return ""
        return self._mirror.metrics_text(self._head_size)

    def object_store_problem(self) -> str | None:
        try:
            bucket = self._bucket()
            if bucket is not None:
                bucket.check()
        except ObjectStoreFailed as exc:
            return str(exc)
        return None
    def __str__(self) -> str:
        return redact(self.url)

    @classmethod
    def create(cls, url: str, origin: str, first_checkpoint: bytes) -> PostgresLog:
        """Bring the schema up to date, then store the log with its size-0 checkpoint in one transaction;
        refuses (LogExists, storing nothing) if the database already holds a log."""
        conn = connect(url)
        try:
            require_durable(conn, redact(url))
            # The schema first, in a transaction of its own: a database that holds a log (refused below) still
            # keeps the migrations it was brought up to date with.
            with conn.transaction():
                migrate(conn)
            with conn.transaction():
                held = conn.execute("SELECT value FROM log_meta WHERE key = 'origin'").fetchone()
                if held is not None:
                    raise LogExists(f"{redact(url)} already holds the log {held[0]}")
                conn.execute("INSERT INTO log_meta VALUES ('origin', %s)", (origin,))
                conn.execute("INSERT INTO log_head (size) VALUES (0)")
                conn.execute("INSERT INTO checkpoints VALUES (0, %s)", (first_checkpoint,))
        finally:
            conn.close()
        return cls(url)

    @classmethod
    def import_from(cls, url: str, source: LogTables, size: int, progress: Progress | None = None) -> None:
        """Copy ``source``'s log up to ``size`` (its verified latest checkpoint) into an empty database, in one
        transaction: all of it or none of it. Refuses (LogExists) a database that holds a log already.

        Tiles, bundles and checkpoints are copied byte for byte; the lookups are rebuilt from the entries.
        """
        conn = connect(url)
        try:
            require_durable(conn, redact(url))
            with conn.transaction(), conn.cursor() as cur:
                migrate(conn)
                held = conn.execute("SELECT value FROM log_meta WHERE key = 'origin'").fetchone()
                if held is not None:
                    raise LogExists(f"{redact(url)} already holds the log {held[0]}")
                conn.execute("INSERT INTO log_meta VALUES ('origin', %s)", (source.origin,))
                conn.execute("INSERT INTO log_head (size) VALUES (%s)", (size,))
                with cur.copy("COPY checkpoints (size, note) FROM STDIN") as copy:
                    for note in source.checkpoints():
                        checkpoint_size = int(note.split(b"\n", 2)[1])
                        if checkpoint_size <= size:
                            copy.write_row((checkpoint_size, note))
                with cur.copy("COPY tiles (level, n, hashes, interior) FROM STDIN") as copy:
                    for row in source.tile_rows():
                        copy.write_row(row)
                bundles = (size + TILE_WIDTH - 1) // TILE_WIDTH
                for n in range(bundles):
                    data = source.read_bundle(n)
                    if data is None:
                        raise UntrustedState(f"entry bundle {n} is missing from the source")
                    entries = list(iter_bundle(data))
                    cur.execute("INSERT INTO bundles (n, data) VALUES (%s, %s)", (n, data))
                    with cur.copy("COPY leaf_index (leaf_hash, idx) FROM STDIN") as copy:
                        for i, entry in enumerate(entries, n * TILE_WIDTH):
                            copy.write_row((leaf_hash(entry), i))
                    with cur.copy("COPY tag_index (tag, idx) FROM STDIN") as copy:
                        for i, entry in enumerate(entries, n * TILE_WIDTH):
                            tag = record_tag(entry)
                            if tag is not None:
                                copy.write_row((tag, i))
                    if progress:
                        progress("bundles", n + 1, bundles)
        finally:
            conn.close()

    def close(self) -> None:
        self._closed = True  # a mirror round that outlives this never connects again (_writing)
        if self._mirror is not None:
            self._mirror.stop()
        for conn in (self._read, self._write):
            if conn is not None and not conn.closed:
                conn.close()

    def maintain(self) -> None:
        """Nothing to do: PostgreSQL checkpoints and vacuums by itself, the lookups are tables, and the object
        store's mirror runs in its own thread."""

    def _after_commit(self, batch: Batch) -> None:
        self._head_size = batch.new_size
        if self._mirror is not None:
            self._mirror.notify()

    def catch_up_indexes(self, size: int) -> None:
        """Nothing to do: the lookups are written in each batch's own transaction."""

    def _query(self, sql: str, args: Sequence[object]) -> psycopg.Cursor[tuple[Any, ...]]:
        """Run a read; a connection the server dropped (a restart, a failover) is replaced once, then retried."""
        try:
            return self._read.execute(sql, args)
        except psycopg.OperationalError:
            # Inside a snapshot, a new connection would silently read another state: fail instead.
            if self._in_snapshot or (not self._read.closed and not self._read.broken):
                raise
            self._read = connect_reader(self.url)
            return self._read.execute(sql, args)

    def _one(self, sql: str, args: Sequence[object] = ()) -> tuple[Any, ...] | None:
        with self._read_lock:
            return self._query(sql, args).fetchone()

    def _all(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._query(sql, args).fetchall()

    # --- row reads (LogTables) ---------------------------------------------------------------------

    def _fetch_tile(self, level: int, n: int) -> TileRow | None:
        row = self._one("SELECT hashes, interior FROM tiles WHERE level = %s AND n = %s", (level, n))
        return None if row is None else (as_bytes(row[0]), as_bytes(row[1]))

    def read_bundle(self, n: int) -> bytes | None:
        """From the database, else (a full bundle the mirror moved) from the object store, checked."""
        held = self.stored_bundle(n)
        if held is not None:
            return held
        with self._cache_lock:
            cached = self._store_bundles.get(n)
        if cached is not None:
            return cached
        bucket = self._bucket()
        if bucket is None:
            return None
        data = bucket.get(TileRef(None, n).path())
        if data is None:
            blame_the_store(bucket, self.store_mark())
            return None
        try:
            check_bundle(data, n, self.read_tile(0, n), str(bucket))
        except ObjectCorrupt:
            blame_the_store(bucket, self.store_mark())
            raise
        with self._cache_lock:
            self._store_bundles[n] = data
            self._store_bytes += len(data)
            while self._store_bytes > STORE_BUNDLE_CACHE:
                self._store_bytes -= len(self._store_bundles.popitem(last=False)[1])
        return data

    def stored_bundle(self, n: int) -> bytes | None:
        row = self._one("SELECT data FROM bundles WHERE n = %s", (n,))
        return None if row is None else as_bytes(row[0])

    def _fetch_checkpoint(self, size: int | None) -> bytes | None:
        if size is None:
            row = self._one("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1")
        else:
            row = self._one("SELECT note FROM checkpoints WHERE size = %s", (size,))
        return None if row is None else as_bytes(row[0])

    def checkpoint_in(self, lo: int, hi: int) -> bool:
        return self._one("SELECT 1 FROM checkpoints WHERE size >= %s AND size < %s LIMIT 1", (lo, hi)) is not None

    def _checkpoint_page(self, bound: int, newest_first: bool, limit: int) -> list[tuple[int, bytes]]:
        sql = ("SELECT size, note FROM checkpoints WHERE size < %s ORDER BY size DESC LIMIT %s" if newest_first
               else "SELECT size, note FROM checkpoints WHERE size > %s ORDER BY size LIMIT %s")
        return [(int(size), as_bytes(note)) for size, note in self._all(sql, (bound, limit))]

    def _tile_page(self, after: tuple[int, int], limit: int) -> list[tuple[int, int, bytes, bytes]]:
        rows = self._all("SELECT level, n, hashes, interior FROM tiles WHERE (level, n) > (%s, %s) "
                         "ORDER BY level, n LIMIT %s", (*after, limit))
        return [(int(level), int(n), as_bytes(h), as_bytes(i)) for level, n, h, i in rows]

    def max_bundle(self) -> int | None:
        row = self._one("SELECT max(n) FROM bundles")
        held = -1 if row is None or row[0] is None else int(row[0])
        moved = self.mirrored_size() // TILE_WIDTH - 1  # the full bundles the object store took
        top = max(held, moved)
        return None if top < 0 else top

    def record_keys(self, vkey: str, timestamp_vkey: str, witness_policy: str) -> None:
        def record(conn: Connection) -> None:
            with conn.transaction():
                conn.execute("INSERT INTO log_meta (key, value) VALUES ('vkey', %s), ('timestamp_vkey', %s), "
                             "('witness_policy', %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                             (vkey, timestamp_vkey, witness_policy))

        self._writing(record, lambda conn: False)

    def check_writer(self) -> None:
        """A round trip on the writer's connection: if PostgreSQL ended its session (a restart, a cut link, an
        operator), the lock went with it, and taking it back fails (WriterElsewhere) when another serve holds it."""
        def ping(conn: Connection) -> None:
            conn.execute("SELECT 1")

        self._writing(ping, lambda conn: True)

    def record_sequencer(self, url: str) -> None:
        """Where the other serves forward writes to (server/standby.py): recorded by each sequencer as it starts."""

        def record(conn: Connection) -> None:
            conn.execute("INSERT INTO log_meta (key, value) VALUES ('sequencer_url', %s) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (url,))

        self._writing(record, lambda conn: False)

    def sequencer_url(self) -> str | None:
        row = self._one("SELECT value FROM log_meta WHERE key = 'sequencer_url'")
        return str(row[0]) if row is not None and row[0] else None

    def private_tables_readable(self) -> list[str]:
        """The recordation tables this connection's role may read: none, for a frontend's role as docs/operations.md
        grants it; a role granted every table (or default privileges from before schema 3) reads them all."""
        rows = self._all("SELECT t FROM unnest(ARRAY['parties', 'relationships', 'wraps', 'records']) AS t "
                         "WHERE has_table_privilege(t, 'SELECT')", ())
        return [str(r[0]) for r in rows]

    def log_keys(self) -> tuple[str, str, str] | None:
        rows = dict(self._all("SELECT key, value FROM log_meta WHERE key IN ('vkey', 'timestamp_vkey', "
                              "'witness_policy')", ()))
        if len(rows) != 3:
            return None
        return str(rows["vkey"]), str(rows["timestamp_vkey"]), str(rows["witness_policy"])

    def check_objects(self, head: int, open_note: Callable[[bytes], int]) -> tuple[list[str], list[str]]:
        bucket = self._bucket()
        if bucket is None:
            return [], []
        mark = self.store_mark()
        if mark is not None:  # another store at this endpoint proves nothing about the log's: not a fault of it
            check_mark(bucket, mark)
        return check_store(bucket, self, self.mirrored_size(), head, open_note)

    def committed_tile(self, level: int, n: int) -> bytes | None:
        with self._cache_lock:
            cached = self._full_tiles.get((level, n))
        row = cached or self._fetch_tile(level, n)
        return None if row is None else row[0]

    # --- the object store's mirror (objects.MirrorRows) -----------------------------------------------

    def store_mark(self) -> str | None:
        row = self._one(RECORDED_MARK)
        return None if row is None or row[0] is None else str(row[0])

    def record_store_mark(self, mark: str) -> None:
        def record(conn: Connection) -> None:
            conn.execute("UPDATE objects SET mark = %s WHERE mark IS NULL", (mark,))

        self._writing(record, lambda conn: self.store_mark() is not None)

    def mirrored_size(self) -> int:
        row = self._one("SELECT size FROM objects")
        return 0 if row is None else int(row[0])

    def checkpoint_sizes(self, after: int, limit: int) -> list[int]:
        return [int(r[0]) for r in self._all("SELECT size FROM checkpoints WHERE size > %s ORDER BY size LIMIT %s",
                                             (after, limit))]

    def advance_mirror(self, mirrored: int, target: int) -> bool:
        moved = False

        def advance(conn: Connection) -> None:
            nonlocal moved
            with conn.transaction():
                cas = conn.execute("UPDATE objects SET size = %s WHERE size = %s", (target, mirrored))
                moved = cas.rowcount == 1
                if moved:
                    conn.execute("DELETE FROM bundles WHERE n < %s", (target // TILE_WIDTH,))

        def done(conn: Connection) -> bool:
            nonlocal moved
            row = conn.execute("SELECT size FROM objects").fetchone()
            moved = row is not None and int(row[0]) == target
            return moved

        self._writing(advance, done)
        return moved

    def checkpoint_count(self) -> int:
        row = self._one("SELECT count(*) FROM checkpoints")
        return int(row[0]) if row else 0

    def leaf_candidates(self, leaf_hash: bytes) -> list[int]:
        return [int(r[0]) for r in self._all("SELECT idx FROM leaf_index WHERE leaf_hash = %s ORDER BY idx",
                                             (leaf_hash,))]

    def tag_candidates(self, tags: Sequence[bytes]) -> dict[int, list[int]]:
        if not tags:
            return {}
        by_tag: dict[bytes, list[int]] = {}
        for tag, idx in self._all("SELECT tag, idx FROM tag_index WHERE tag = ANY(%s) ORDER BY idx", (list(tags),)):
            by_tag.setdefault(as_bytes(tag), []).append(int(idx))
        return {at: by_tag[tag] for at, tag in enumerate(tags) if tag in by_tag}

    def index_coverage(self) -> tuple[int, int, int]:
        """Both lookups are written with each batch, so they cover the whole committed log."""
        # They claim the whole log, so fsck checks every entry against them: a missing row is a fault.
        rows = self._one("SELECT count(*) FROM leaf_index")
        head = self._one("SELECT size FROM log_head")
        assert rows is not None and head is not None
        return int(head[0]), int(rows[0]), int(head[0])

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        with self._read_lock:
            self._read.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            self._in_snapshot = True
        try:
            yield
        finally:
            with self._read_lock:
                self._in_snapshot = False
                if not self._read.closed and not self._read.broken:
                    self._read.execute("COMMIT")

    # --- writes (LogTables) ------------------------------------------------------------------------

    def _writer(self) -> Connection:
        if self._write is None:
            raise UntrustedState("this log was opened read-only")
        return self._write

    def _writing(self, work: Callable[[Connection], None], done: Callable[[Connection], bool]) -> None:
        """``work`` in the writer's connection. If PostgreSQL drops that connection (a restart, a failover, a cut
        link), the writer's lock went with its session: connect again and take the lock again (LogLocked if
        another process took it meanwhile, and nothing is written), then, unless ``done`` finds that the lost
        COMMIT took effect before its answer was lost, do ``work`` once more. A second failure is raised."""
        with self._write_lock:
            if self._closed:
                raise UntrustedState("this log was closed")
            conn = self._writer()
            try:
                work(conn)
                return
            except psycopg.OperationalError as exc:
                if not (conn.closed or conn.broken):
                    raise
                log.warning("the connection of the log's writer to %s was lost (%s): connecting again",
                            redact(self.url), type(exc).__name__)
            conn.close()
            if self._closed:
                raise UntrustedState("this log was closed")
            conn = self._write = self._reconnect_writer()
            if not done(conn):
                work(conn)

    def _reconnect_writer(self) -> Connection:
        """The writer's connection again, waiting up to RECONNECT_WAIT for PostgreSQL to come back (a restart or a
        failover takes seconds); meanwhile the sequencer's commit waits, and its submitters with it."""
        deadline = time.monotonic() + RECONNECT_WAIT
        while True:
            try:
                conn, self._session = connect_writer(self.url, self._session)
                return conn
            except LogLocked:
                raise
            except (UntrustedState, psycopg.OperationalError):  # no server yet, or one that went away again
                if time.monotonic() >= deadline:
                    raise
                time.sleep(RECONNECT_PAUSE)

    def replace_checkpoint(self, size: int, note: bytes) -> None:
        def replace(conn: Connection) -> None:
            with conn.transaction():
                conn.execute("UPDATE checkpoints SET note = %s WHERE size = %s", (note, size))

        self._writing(replace, lambda conn: False)  # the same UPDATE again changes nothing more

    def _write_batch(self, batch: Batch) -> None:
        self._writing(lambda conn: self._write_batch_in(conn, batch), lambda conn: _committed(conn, batch))

    @staticmethod
    def _write_batch_in(conn: Connection, batch: Batch) -> None:
        with conn.transaction():
            # The compare-and-swap: holds the head row until COMMIT, so a second writer waits here, then
            # finds the size moved.
            moved = conn.execute("UPDATE log_head SET size = %s WHERE size = %s", (batch.new_size, batch.old_size))
            if moved.rowcount != 1:
                stored = conn.execute("SELECT size FROM log_head").fetchone()
                raise CheckpointConflict(f"stored checkpoint has size {stored[0] if stored else None}, "
                                         f"the batch extends size {batch.old_size}")
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO tiles (level, n, hashes, interior) VALUES (%s, %s, %s, %s) ON CONFLICT (level, n) "
                    "DO UPDATE SET hashes = excluded.hashes, interior = excluded.interior",
                    [(level, n, hashes, interior) for (level, n), (hashes, interior) in batch.tiles.items()],
                )
                cur.executemany("INSERT INTO bundles (n, data) VALUES (%s, %s) ON CONFLICT (n) DO UPDATE SET "
                                "data = excluded.data", list(batch.bundles.items()))
                cur.execute("INSERT INTO checkpoints (size, note) VALUES (%s, %s)", (batch.new_size, batch.checkpoint))
                with cur.copy("COPY leaf_index (leaf_hash, idx) FROM STDIN") as copy:
                    for i, h in enumerate(batch.leaf_hashes, batch.old_size):
                        copy.write_row((h, i))
                with cur.copy("COPY tag_index (tag, idx) FROM STDIN") as copy:
                    for i, entry in enumerate(batch.entries, batch.old_size):
                        tag = record_tag(entry)
                        if tag is not None:
                            copy.write_row((tag, i))
        # Durable from here: COMMIT returned with fsync on and synchronous_commit not off.


def _committed(conn: Connection, batch: Batch) -> bool:
    """Whether ``batch`` is the log's head already (its COMMIT took effect, and only its answer was lost); False if
    the head is still the size it extends. Raises CheckpointConflict if the head is anything else."""
    head = conn.execute("SELECT size FROM log_head").fetchone()
    size = None if head is None else int(head[0])
    if size == batch.old_size:
        return False
    stored = conn.execute("SELECT note FROM checkpoints WHERE size = %s", (batch.new_size,)).fetchone()
    if size == batch.new_size and stored is not None and bytes(stored[0]) == batch.checkpoint:
        return True
    raise CheckpointConflict(f"stored checkpoint has size {size}, the batch extends size {batch.old_size}")


if TYPE_CHECKING:  # PostgresLog implements both storage contracts: mypy checks it here.

    from .base import LogReader, LogWriter

    def _log_reader(store: PostgresLog) -> LogReader:
        return store

    def _log_writer(store: PostgresLog) -> LogWriter:
        return store
