"""The recordation tables: parties, relationships, wraps and sealed records, in ``<data>/records.db``.

The log (log.db) is the source of truth for what was committed; this file holds
what the log does not: who may write and read, the HPKE wraps, and the sealed
blobs the 65-byte entries commit to (their bytes in append-only segment files
beside it, storage/segments.py). A record row is written (durably) before
its entry is submitted to the sequencer, and gets its log index after: a crash
in between leaves a row without an index, which start-up settles from the log
itself (found: index it; not found: it was never acknowledged, so drop it).
The order of these steps and what a crash between them leaves are the append
protocol's, in appending.py; this module offers the ops it runs.

All writes go through :meth:`RecordStore.write`, one transaction at a time;
the server batches concurrent requests into one transaction (group commit).
The values and errors live in record_values, the SQL of the record write ops in
record_writes; this module is the store around them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import PacspaceError, UntrustedState, WriteFailed
from . import record_ops, record_writes
from .record_ops import AddRelationship, RecordOp
from .record_values import (
    PARTY_COLUMNS,
    RECORD_COLUMNS,
    RECORD_ROWS,
    RELATIONSHIP_COLUMNS,
    STATES,
    AcceptanceConflict,
    InFlight,
    KeysRegistered,
    Party,
    PartyExists,
    RecordConflict,
    RecordError,
    Relationship,
    RelationshipAccepted,
    RelationshipDeclined,
    RelationshipExists,
    Role,
    SeqConflict,
    StoredRecord,
    TagConflict,
    UnknownParty,
    party_of,
    record_of,
    relationship_of,
    token_hash,
)
from .records_schema import SCHEMA_VERSION, check_readable, prepare
from .segments import Placed, Segments
from .transaction import write_transaction

# The values and errors are defined in record_values, the write ops' SQL in record_writes; callers
# import them from here, with the store.
__all__ = [
    "SCHEMA_VERSION", "RecordStore", "RECORDS_NAME", "Party", "Relationship", "StoredRecord", "Role", "token_hash",
    "RecordError", "PartyExists", "UnknownParty", "KeysRegistered", "RelationshipExists", "SeqConflict",
    "TagConflict", "InFlight", "RecordConflict", "STATES", "RelationshipDeclined", "RelationshipAccepted",
    "AcceptanceConflict",
]

log = logging.getLogger("pacspace.storage")

RECORDS_NAME = "records.db"
T = TypeVar("T")

WAL_AUTOCHECKPOINT_PAGES = 20000
WAL_SIZE_LIMIT = 64 << 20
# Least time between two WAL checkpoints started by one process's writes.
CHECKPOINT_INTERVAL = 0.5


# A record row and its blob: the bytes (before schema 4), or where they lie in the segment files.
_REC_BLOB = "r.relationship, r.seq, r.tag, r.ct_hash, b.blob, s.idx, s.checkpoint_size, p.segment, p.start, p.length"
_BLOBS = RECORD_ROWS + " LEFT JOIN blobs b ON b.id = r.blob_id LEFT JOIN spans p ON p.blob_id = r.blob_id"
_HAS_BLOB = "(b.id IS NOT NULL OR p.blob_id IS NOT NULL)"
_UNSETTLED = (
    "unsettled u JOIN records r ON r.relationship = u.relationship AND r.seq = u.seq "
    "LEFT JOIN settled s ON s.blob_id = u.blob_id"
)


def _op_failure(exc: Exception) -> Exception:
    """An op's result when it raised: a refusal as raised; anything unexpected logged here, once, and
    returned as WriteFailed (its cause attached), which its request answers as an internal error."""
    if isinstance(exc, (PacspaceError, sqlite3.IntegrityError)):
        return exc
    log.error("a records.db write op failed; it alone is undone", exc_info=exc)
    failed = WriteFailed()
    failed.__cause__ = exc
    return failed


def _raised(results: Sequence[T | BaseException]) -> T:
    (result,) = results
    if isinstance(result, BaseException):
        raise result
    return result


class RecordStore:
    """records.db. Durable once a write returns (WAL, synchronous=FULL)."""

    def __init__(self, data_dir: Path, *, readonly: bool = False) -> None:
        path = data_dir / RECORDS_NAME
        self.path = path
        mode = "ro" if readonly else "rwc"
        self._conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 10000")
        try:
            if readonly:
                check_readable(self._conn, path)
            else:
                prepare(self._conn, path)
                self._conn.execute("PRAGMA synchronous = FULL")
                # The (relationship, seq) index takes keys from every relationship at once: keep as much of
                # it as we can in memory (128 MiB).
                self._conn.execute("PRAGMA cache_size = -131072")
                # WAL checkpoints run beside the writers (_maintain_soon), never inside a COMMIT, where
                # copying a large transaction's pages into the database file doubled its commit time.
                # This higher automatic threshold is only a backstop.
                self._conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
                self._conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        except BaseException:
            self._conn.close()
            raise
        self._segments = Segments(data_dir, readonly=readonly)
        self._lock = threading.Lock()
        # Writers in several processes (serve --workers) queue on this lock in the kernel, which wakes
        # the next one the moment the last commits; SQLite's own busy handler would sleep 1-100 ms.
        self._process_lock = None if readonly else os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._checkpointer: sqlite3.Connection | None = None
        self._maintenance = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacspace-records-maintenance")
        self._maintenance_run: Future[None] | None = None
        self._checkpointed_at = 0.0
        # Reads use their own connection: WAL lets them proceed while a write transaction (and its
        # fsync) holds the writer, so request handlers never wait behind a commit.
        self._reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        self._reader.execute("PRAGMA busy_timeout = 10000")
        self._read_lock = threading.Lock()

    def close(self) -> None:
        # After any transaction another thread is running: sqlite3 must not close a connection in use.
        with self._lock:
            self._maintenance.shutdown(wait=True)
            if self._checkpointer is not None:
                self._checkpointer.close()
            self._reader.close()
            self._conn.close()
            self._segments.close()
            if self._process_lock is not None:
                os.close(self._process_lock)
                self._process_lock = None

    @contextmanager
    def _writer_turn(self, synchronous: str = "FULL") -> Iterator[None]:
        """This process's write lock, then the lock shared by every process that writes records.db.

        The connection's ``synchronous`` is set in between, not while the shared lock is held: every
        statement there costs the lock's holder a wait for the interpreter lock, which a busy event
        loop in the same process may keep up to the switch interval.
        """
        with self._lock:
            if self._process_lock is None:
                raise UntrustedState(f"{self.path} was opened read-only")
            if synchronous != "FULL":
                self._conn.execute(f"PRAGMA synchronous = {synchronous}")
            try:
                fcntl.flock(self._process_lock, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(self._process_lock, fcntl.LOCK_UN)
            finally:
                if synchronous != "FULL":
                    self._conn.execute("PRAGMA synchronous = FULL")

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:  # type: ignore[type-arg]
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def write(self, ops: Sequence[RecordOp | Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        """Run ops in one transaction; each op all-or-nothing (a savepoint), its error returned (one that
        nobody raised on purpose as WriteFailed, see _op_failure).

        Durable once it returns, unless every op is a settle (:data:`record_ops.REDERIVABLE`): a
        transaction of settles only is committed without its own fsync. What it records, a
        row's log index, the log already holds durably; a crash that loses it leaves the rows
        unsettled, and start-up settles them from the log (appending.reconcile). Its WAL frames become
        durable with the next durable commit of any process (one fsync covers the whole WAL).
        """
        return self.run([record_writes.compile_op(op) for op in ops], rederivable=record_ops.rederivable(ops))

    def run(self, ops: Sequence[Callable[[sqlite3.Connection], T]], *, rederivable: bool = False) -> list[T | BaseException]:
        """Run functions of the connection as :meth:`write` runs ops (the party ops, and ops compiled before the lock)."""
        results: list[T | BaseException] = []
        staged = [s for s in map(record_writes.staged_blobs, ops) if s is not None]
        if staged:
            self._store_blobs(staged)
        with self._writer_turn("NORMAL" if rederivable else "FULL"), write_transaction(self._conn) as conn:
            if len(ops) == 1:
                # The transaction is the op's all-or-nothing: no savepoint (two statements fewer in the lock).
                try:
                    results.append(ops[0](conn))
                except Exception as exc:
                    if conn.in_transaction:  # SQLite itself rolls back after some faults (a full disk)
                        conn.execute("ROLLBACK")
                    results.append(_op_failure(exc))
            else:
                for op in ops:
                    conn.execute("SAVEPOINT op")
                    try:
                        results.append(op(conn))
                        conn.execute("RELEASE op")
                    except Exception as exc:
                        # Undone alone: the other ops of the transaction still commit.
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        results.append(_op_failure(exc))
        self._maintain_soon()
        return results

    def _store_blobs(self, staged: Sequence[record_writes.Staged]) -> None:
        """The ops' blobs, appended to this process's segment and durable before the write lock is taken
        (one write, one fdatasync): a record row committed later never names bytes a crash could lose.
        Bytes whose rows are then not written (a conflict, a failed transaction) are never read."""
        placed = self._segments.append(b"".join(s.data for s in staged))
        at = placed.offset
        for s in staged:
            s.placed = Placed(placed.segment, at)
            at += len(s.data)

    def _maintain_soon(self) -> None:
        """Start a PASSIVE WAL checkpoint in the maintenance thread, at most every CHECKPOINT_INTERVAL.

        PASSIVE never blocks a writer or a reader; with several writing processes
        one of them gets to run it and the others' attempts return at once.
        """
        now = time.monotonic()
        idle = self._maintenance_run is None or self._maintenance_run.done()
        if idle and now - self._checkpointed_at >= CHECKPOINT_INTERVAL:
            self._checkpointed_at = now
            try:
                self._maintenance_run = self._maintenance.submit(self._checkpoint)
            except RuntimeError:
                pass  # closing: the transaction is committed, and its checkpoint can wait for the next start

    def _checkpoint(self) -> None:
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self._checkpointer.execute("PRAGMA busy_timeout = 0")
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            # Recoverable: the WAL only grows until the next checkpoint (or SQLite's backstop) runs.
            log.warning("records.db checkpoint failed: %s", exc)

    def claim_epoch(self) -> None:
        """Nothing to fence: records.db has one directory's serve, whose lock (``DIR/lock``) keeps out any other."""
        return None

    def mirror_blobs(self) -> None:
        """Nothing to move: records.db's log has no object store (``--objects`` needs ``--database``)."""

    def metrics_text(self) -> str:
        return ""

    def write_one(self, op: RecordOp) -> Any:
        return _raised(self.write([op]))

    def _run_one(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return _raised(self.run([op]))

    # --- parties -----------------------------------------------------------

    def add_party(self, name: str, role: Role, token: str, now: int) -> Party:
        return self._run_one(record_writes.add_party(name, role, token, now))

    def revoke_party(self, name: str, now: int) -> None:
        self._run_one(record_writes.revoke_party(name, now))

    def parties(self) -> list[Party]:
        return [party_of(r) for r in self._read(f"SELECT {PARTY_COLUMNS} FROM parties ORDER BY name")]

    def party(self, name: str) -> Party | None:
        rows = self._read(f"SELECT {PARTY_COLUMNS} FROM parties WHERE name = ?", (name,))
        return party_of(rows[0]) if rows else None

    def party_by_token(self, token: str) -> Party | None:
        """The active party holding ``token``; revoked parties are never returned."""
        rows = self._read(
            f"SELECT {PARTY_COLUMNS} FROM parties WHERE token_hash = ? AND revoked_at IS NULL", (token_hash(token),)
        )
        return party_of(rows[0]) if rows else None

    def set_keys(self, name: str, x25519: bytes, ed25519: bytes) -> None:
        """Register a party's public keys once; the same keys again is a no-op, other keys a KeysRegistered."""
        self._run_one(record_writes.set_keys(name, x25519, ed25519))

    # --- relationships -----------------------------------------------------

    def add_relationship(self, rel: Relationship, wraps: dict[str, bytes], epoch: int = 0) -> None:
        self.write_one(AddRelationship(rel, wraps, epoch))

    def relationship(self, rid: str) -> Relationship | None:
        rows = self._read(f"SELECT {RELATIONSHIP_COLUMNS} FROM relationships WHERE id = ?", (rid,))
        return relationship_of(rows[0]) if rows else None

    def relationships(self, rids: Sequence[str]) -> dict[str, Relationship]:
        """The relationships among ``rids`` that exist, by id, with one query."""
        rows = self._read(
            f"SELECT {RELATIONSHIP_COLUMNS} FROM relationships WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(list(rids)),)
        )
        return {r[0]: relationship_of(r) for r in rows}

    def relationships_of(self, party: str, state: str | None = None) -> list[Relationship]:
        """The party's relationships (as provider or customer), all or those in ``state``."""
        rows = self._read(
            f"SELECT {RELATIONSHIP_COLUMNS} FROM relationships WHERE (provider = ? OR customer = ?) "
            "AND (? IS NULL OR state = ?) ORDER BY created_at, id",
            (party, party, state, state),
        )
        return [relationship_of(r) for r in rows]

    def wrap(self, rid: str, reader: str, epoch: int = 0) -> bytes | None:
        rows = self._read(
            "SELECT wrap FROM wraps WHERE relationship = ? AND reader = ? AND epoch = ?", (rid, reader, epoch)
        )
        return bytes(rows[0][0]) if rows else None

    # --- records -----------------------------------------------------------

    def record(self, rid: str, seq: int, blob: bool = True) -> StoredRecord | None:
        # The blob is read either way: it is a local read of a few KB.
        rows = self._read(f"SELECT {_REC_BLOB} FROM {_BLOBS} WHERE r.relationship = ? AND r.seq = ? AND {_HAS_BLOB}", (rid, seq))
        return self._with_blob(rows[0]) if rows else None

    def records(self, rid: str, after_seq: int, limit: int) -> list[StoredRecord]:
        """Settled records (with a log index) after ``after_seq``, in seq order."""
        rows = self._read(
            f"SELECT {_REC_BLOB} FROM {_BLOBS} WHERE r.relationship = ? AND r.seq > ? AND s.idx IS NOT NULL "
            f"AND {_HAS_BLOB} ORDER BY r.seq LIMIT ?",
            (rid, after_seq, limit),
        )
        return [self._with_blob(r) for r in rows]

    def iter_records(self, page: int = 1000) -> Iterator[StoredRecord]:
        """Every record with its blob (None if missing), by relationship and seq, read in pages (fsck)."""
        after = ("", -1)
        while True:
            rows = self._read(
                f"SELECT {_REC_BLOB} FROM {_BLOBS} WHERE (r.relationship, r.seq) > (?, ?) "
                "ORDER BY r.relationship, r.seq LIMIT ?",
                (*after, page),
            )
            if not rows:
                return
            for row in rows:
                yield self._with_blob(row, missing_ok=True)
            after = (rows[-1][0], rows[-1][1])

    def _with_blob(self, row: tuple, *, missing_ok: bool = False) -> StoredRecord:  # type: ignore[type-arg]
        """A _REC_BLOB row as a record whose blob is read from its segment if records.db does not hold it."""
        rec = record_of(row)
        if rec.blob is not None or row[7] is None:
            return rec
        blob = self._segments.read(row[7], row[8], row[9])
        if blob is None and not missing_ok:
            raise UntrustedState(
                f"record {rec.seq} of a relationship names bytes that its blob segment does not hold (see `pacspace fsck`)"
            )
        return replace(rec, blob=blob)

    def unsettled_of(self, rid: str) -> list[StoredRecord]:
        """One relationship's rows still without a log index (its last ones), in seq order."""
        rows = self._read(f"SELECT {RECORD_COLUMNS} FROM {_UNSETTLED} WHERE u.relationship = ? ORDER BY r.seq", (rid,))
        return [record_of(r) for r in rows]

    def has_unsettled(self, rid: str) -> bool:
        """Whether the relationship has a row still without its log index: one indexed lookup (unsettled rows
        are always a relationship's last ones, so its last record says)."""
        rows = self._read(
            "SELECT EXISTS (SELECT 1 FROM unsettled WHERE blob_id = "
            "(SELECT blob_id FROM records WHERE relationship = ? ORDER BY seq DESC LIMIT 1))",
            (rid,),
        )
        return bool(rows[0][0])

    def unsettled(self) -> list[StoredRecord]:
        return [record_of(r) for r in self._read(f"SELECT {RECORD_COLUMNS} FROM {_UNSETTLED} ORDER BY r.relationship, r.seq")]

    def table(self, name: str, columns: str) -> list[tuple]:  # type: ignore[type-arg]
        """Every row of a small table (parties, relationships, wraps), for a copy (logmove.move_records)."""
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in self._read(f"SELECT {columns} FROM {name}")]

    def record_count(self) -> int:
        return int(self._read("SELECT count(*) FROM records")[0][0])

    def settled_indexes(self, indexes: Sequence[int]) -> set[int]:
        """Which of these log indexes a settled record already holds."""
        rows = self._read(
            "SELECT idx FROM settled WHERE idx IN (SELECT value FROM json_each(?))", (json.dumps(list(indexes)),)
        )
        return {int(r[0]) for r in rows}


if TYPE_CHECKING:
    from .base import RecordTables

    def _implements(store: RecordStore) -> None:
        _tables: RecordTables = store
