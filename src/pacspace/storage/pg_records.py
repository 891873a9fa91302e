"""The recordation tables in PostgreSQL (``--database``): parties, relationships, wraps, and records with their
sealed blobs, beside the log's tables (schema versions 3 and 4, storage/migrations.py).

The same contract as records.db (storage/records.py), which the append protocol (appending.py) relies on:

- A write runs its ops in one transaction, each all or nothing (a savepoint), and is durable once it
  returns: the writer's connection commits with ``synchronous_commit`` on (pgconnect.require_durable). A
  transaction of settles only commits with it off: what it records the log holds durably, and a crash
  that loses it leaves rows unsettled, which start-up settles from the log (appending.reconcile).
- Writers in every process (the sequencing ``serve`` and its HTTP workers) lock, first, what their decisions
  read (_Locks): the records' lock, shared, then the lock of each relationship (or party) an op decides about
  (which seq is next, whether one is in flight, whether it is accepted), in one order for all. records.db's
  writers queue on one flock for all relationships; here writes of different relationships commit side by
  side. Settles lock no relationship: each moves the rows it names, and row locks order it with a drop.
  claim_epoch takes the records' lock exclusively, so it waits for every write under way and holds off new ones.
- A connection lost mid-write fails that write (DatabaseUnavailable), unless only COMMIT's answer was lost and
  PostgreSQL then says the transaction committed (txid_status): the write succeeded. The next write reconnects.
- The append path's writes are fenced by the sequencer's epoch (claim_epoch): a serve that no longer sequences
  stores nothing more (Deposed).

The sealed blob is a column of its record's row (a few KB, stored once): records.db keeps blobs in segment
files to keep them out of SQLite's write lock, which PostgreSQL's row locks do not need. With an object store
(``--objects``), a settled record's blob moves there (storage/blobs.py) and its row keeps NULL: reads fetch it
from the store, checked against the row's ``ct_hash``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from ..errors import DatabaseRefused, DatabaseUnavailable, PacspaceError, SequencerUnavailable, UntrustedState, WriteFailed
from . import consent, record_ops, record_writes
from .blobs import RECORD_WITH_PLACE, PostgresBlobs
from .database_url import redact
from .migrations import require_current
from .objects import RECORDED_MARK, RECORDED_STORE
from .pgconnect import Connection, connect, connect_reader, first_line, require_durable
from .record_ops import RecordOp
from .records import RecordStore
from .record_values import (
    PARTY_COLUMNS,
    RECORD_COLUMNS,
    RELATIONSHIP_COLUMNS,
    Party,
    Relationship,
    Role,
    StoredRecord,
    TagConflict,
    party_of,
    record_of,
    relationship_of,
    token_hash,
)

log = logging.getLogger("pacspace.storage")
T = TypeVar("T")
# (phase, done, total), as cli/progress.py draws it.
Progress = Callable[[str, int, int], None]

# pg_advisory_xact_lock key that every records writer takes first ("pacsrecs"), shared or exclusive (_Locks).
RECORDS_LOCK = 0x7061_6373_7265_6373
# The first half of the two-key advisory locks of relationships and parties ("pcsr").
KEY_LOCKS = 0x7063_7372
WRITER_NAME = "pacspace records"
LOCK_TIMEOUT_MS = 10_000
# How long a write whose COMMIT answer was lost waits for PostgreSQL to say whether it committed.
COMMIT_STATUS_WAIT = 5.0

_PARTY_ROW = "name, role, token_hash, created_at, revoked_at, x25519, ed25519"
_RECORD_ROWS = "records r LEFT JOIN settled s ON s.blob_id = r.blob_id"
_UNSETTLED = "unsettled u JOIN records r ON r.blob_id = u.blob_id LEFT JOIN settled s ON s.blob_id = u.blob_id"

Op = Callable[[Connection], Any]


class Qmark:
    """A psycopg connection taking sqlite3's ``?`` placeholders, for the ops both stores share (record_writes)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> psycopg.Cursor[tuple[Any, ...]]:
        return self._conn.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)


def _shared(op: Callable[[Any], T]) -> Callable[[Connection], T]:
    return lambda conn: op(Qmark(conn))


def _op_failure(exc: Exception) -> Exception:
    """As records.py's: a refusal as raised; anything unexpected logged once and returned as WriteFailed."""
    if isinstance(exc, PacspaceError):
        return exc
    log.error("a records write op failed; it alone is undone", exc_info=exc)
    failed = WriteFailed()
    failed.__cause__ = exc
    return failed


def _raised(results: Sequence[Any]) -> Any:
    (result,) = results
    if isinstance(result, BaseException):
        raise result
    return result


class PostgresRecordStore:
    """The recordation tables of the log in the PostgreSQL database at ``url`` (see the module's contract)."""

    engine = "postgresql"

    def __init__(self, url: str, *, readonly: bool = False, epoch: int | None = None) -> None:
        """``epoch``: the sequencer's epoch this store writes for (claim_epoch); None: not fenced (``admin``)."""
        self.url = url
        self.epoch = epoch
        self.path = redact(url)
        self._readonly = readonly
        self._write: Connection | None = None
        self._write_lock = threading.Lock()
        self._reader = connect_reader(url)
        self._read_lock = threading.Lock()
        self.blobs = PostgresBlobs(url, self.path, self._store_url, self._store_mark)
        try:
            require_current(self._reader, self.path)
            if not readonly:
                self._write = self._connect_writer()
        except BaseException:
            self.close()
            raise

    def _connect_writer(self) -> Connection:
        conn = connect(self.url, WRITER_NAME)
        try:
            require_durable(conn, self.path)
            # As records.db's busy timeout: a writer stuck holding the lock fails this write, not every write forever.
            conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
            # A transaction whose client went silent (a cut link) holds the locks its relationships' writers wait
            # for: PostgreSQL ends it after this long, not hours later.
            conn.execute("SET idle_in_transaction_session_timeout = '30s'")
            return conn
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self.blobs.close()
        for conn in (self._reader, self._write):
            if conn is not None and not conn.closed:
                conn.close()

    # --- writes ------------------------------------------------------------

    def write(self, ops: Sequence[RecordOp | Op]) -> list[Any]:
        """Run ops in one transaction; each op all or nothing, its error returned. Durable once it returns,
        unless every op is a settle (see the module's docstring)."""
        compiled = [_compile(op) for op in ops]
        keys = sorted({key for _, locked in compiled for key in locked})
        return self.run([fn for fn, _ in compiled], rederivable=record_ops.rederivable(ops), keys=keys)

    def run(self, ops: Sequence[Callable[[Connection], T]], *, rederivable: bool = False, keys: Sequence[str] = (),
            exclusive: bool = False) -> list[T | BaseException]:
        """Run functions of the connection as :meth:`write` runs ops, holding the locks of ``keys`` (relationship ids,
        or "party:NAME"), or, ``exclusive``, the records' lock alone (no other writer meanwhile)."""
        lock = _Locks(keys, exclusive)
        if self._readonly:
            raise UntrustedState(f"the records in {self.path} were opened read-only")
        with self._write_lock:
            for attempt in (1, 2):
                tried = _Attempt()
                try:
                    conn = self._write
                    if conn is None or conn.closed or conn.broken:
                        conn = self._write = self._connect_writer()
                    return self._transaction(conn, ops, rederivable, lock, tried)
                except psycopg.errors.LockNotAvailable:
                    raise DatabaseUnavailable(
                        f"another writer held the records' lock for {LOCK_TIMEOUT_MS // 1000} s; nothing was stored: retry"
                    ) from None
                except (psycopg.OperationalError, psycopg.InterfaceError, UntrustedState) as exc:
                    if self._write is not None and (self._write.broken or self._write.closed):
                        self._write.close()
                    if attempt == 1 and tried.xid is None:
                        continue  # a connection the server dropped while it was idle (a restart): nothing was sent
                    log.warning("a records write to %s failed: %s", self.path, first_line(exc))
                    message = "the log's database did not answer; the records were not stored: retry"
                    if tried.results is not None:  # only COMMIT was left: did it land before its answer was lost?
                        committed = self._committed(tried.xid)
                        if committed:
                            return tried.results
                        if committed is None:
                            message = "the log's database did not answer: retry (a record is stored once)"
                    raise DatabaseUnavailable(message) from None
            raise AssertionError("unreachable")

    def _committed(self, xid: str | None) -> bool | None:
        """Whether the transaction ``xid`` committed, asked on a new connection once the old one was lost: True,
        False (it was rolled back, so nothing of it is stored), or None (PostgreSQL cannot say now)."""
        if xid is None:
            return False
        deadline = time.monotonic() + COMMIT_STATUS_WAIT
        while True:
            try:
                if self._write is not None:
                    self._write.close()
                conn = self._write = self._connect_writer()
                row = conn.execute("SELECT txid_status(%s::bigint)", (xid,)).fetchone()
            except (psycopg.Error, UntrustedState):
                return None
            status = None if row is None else row[0]
            if status == "committed":
                return True
            if status == "aborted":
                return False
            if status != "in progress" or time.monotonic() > deadline:
                return None
            time.sleep(0.05)  # the old session is still finishing it

    def _transaction(
        self, conn: Connection, ops: Sequence[Callable[[Connection], T]], rederivable: bool, lock: _Locks, tried: _Attempt
    ) -> list[T | BaseException]:
        """The ops in one transaction. ``tried`` gets its id once the server answered its first statements, and its
        results just before COMMIT."""
        results: list[T | BaseException] = []
        if len(ops) == 1:
            # The transaction is the op's all-or-nothing: no savepoint.
            try:
                with conn.transaction():
                    tried.xid = _begin(conn, rederivable, self.epoch, lock)
                    results.append(ops[0](conn))
                    tried.results = results
            except (psycopg.OperationalError, psycopg.InterfaceError, Deposed):
                raise
            except Exception as exc:
                results = [_op_failure(exc)]
            return results
        with conn.transaction():
            tried.xid = _begin(conn, rederivable, self.epoch, lock)
            for op in ops:
                try:
                    with conn.transaction():  # a savepoint: undone alone, the other ops still commit
                        results.append(op(conn))
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise
                except Exception as exc:
                    results.append(_op_failure(exc))
            tried.results = results
        return results

    def claim_epoch(self) -> int:
        """Fence the records' writes for the serve that now sequences the log: bump the sequencer's epoch in the
        database, and from now on write only while it is still this one. Taken under the records' lock, so each
        write of the previous sequencer (its processes may still live: a lost session, a slow kill) committed
        before, or finds the epoch changed and stores nothing. Run before reconcile, which then sees every row
        the previous sequencer will ever have written."""

        def bump(conn: Connection) -> int:
            row = conn.execute(
                "INSERT INTO log_meta (key, value) VALUES ('sequencer_epoch', '1') ON CONFLICT (key) "
                "DO UPDATE SET value = (log_meta.value::bigint + 1)::text RETURNING value"
            ).fetchone()
            assert row is not None
            return int(row[0])

        self.epoch = None
        self.epoch = _raised(self.run([bump], exclusive=True))
        return self.epoch

    def write_one(self, op: RecordOp) -> Any:
        return _raised(self.write([op]))

    # --- reads -------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """A read; a connection the server dropped (a restart, a failover) is replaced once, then retried."""
        with self._read_lock:
            try:
                try:
                    return self._reader.execute(sql, params).fetchall()
                except psycopg.OperationalError:
                    if not self._reader.closed and not self._reader.broken:
                        raise
                    self._reader = connect_reader(self.url)
                    return self._reader.execute(sql, params).fetchall()
            except psycopg.errors.InsufficientPrivilege as exc:
                raise DatabaseRefused(f"{self.path}: the role may not read the records' tables ({first_line(exc)}); "
                                     "grant it SELECT on them, or use the role of the log's serve") from None
            except (psycopg.OperationalError, UntrustedState) as exc:
                log.warning("a records read from %s failed: %s", self.path, first_line(exc))
                raise DatabaseUnavailable("the log's database did not answer: retry") from None

    # --- parties -----------------------------------------------------------

    def add_party(self, name: str, role: Role, token: str, now: int) -> Party:
        return _raised(self.run([_shared(record_writes.add_party(name, role, token, now))], keys=[f"party:{name}"]))  # type: ignore[no-any-return]

    def revoke_party(self, name: str, now: int) -> None:
        _raised(self.run([_shared(record_writes.revoke_party(name, now))], keys=[f"party:{name}"]))

    def set_keys(self, name: str, x25519: bytes, ed25519: bytes) -> None:
        """Register a party's public keys once; the same keys again is a no-op, other keys a KeysRegistered."""
        _raised(self.run([_shared(record_writes.set_keys(name, x25519, ed25519))], keys=[f"party:{name}"]))

    def parties(self) -> list[Party]:
        return [party_of(r) for r in self._read(f"SELECT {PARTY_COLUMNS} FROM parties ORDER BY name")]

    def party(self, name: str) -> Party | None:
        rows = self._read(f"SELECT {PARTY_COLUMNS} FROM parties WHERE name = %s", (name,))
        return party_of(rows[0]) if rows else None

    def party_by_token(self, token: str) -> Party | None:
        """The active party holding ``token``; revoked parties are never returned."""
        rows = self._read(
            f"SELECT {PARTY_COLUMNS} FROM parties WHERE token_hash = %s AND revoked_at IS NULL", (token_hash(token),)
        )
        return party_of(rows[0]) if rows else None

    # --- relationships -----------------------------------------------------

    def add_relationship(self, rel: Relationship, wraps: dict[str, bytes], epoch: int = 0) -> None:
        self.write_one(record_ops.AddRelationship(rel, wraps, epoch))

    def relationship(self, rid: str) -> Relationship | None:
        rows = self._read(f"SELECT {RELATIONSHIP_COLUMNS} FROM relationships WHERE id = %s", (rid,))
        return relationship_of(rows[0]) if rows else None

    def relationships(self, rids: Sequence[str]) -> dict[str, Relationship]:
        """The relationships among ``rids`` that exist, by id, with one query."""
        rows = self._read(f"SELECT {RELATIONSHIP_COLUMNS} FROM relationships WHERE id = ANY(%b::text[])", (list(rids),))
        return {r[0]: relationship_of(r) for r in rows}

    def relationships_of(self, party: str, state: str | None = None) -> list[Relationship]:
        """The party's relationships (as provider or customer), all or those in ``state``."""
        rows = self._read(
            f"SELECT {RELATIONSHIP_COLUMNS} FROM relationships WHERE (provider = %s OR customer = %s) "
            "AND (%s::text IS NULL OR state = %s) ORDER BY created_at, id",
            (party, party, state, state),
        )
        return [relationship_of(r) for r in rows]

    def wrap(self, rid: str, reader: str, epoch: int = 0) -> bytes | None:
        rows = self._read("SELECT wrap FROM wraps WHERE relationship = %s AND reader = %s AND epoch = %s", (rid, reader, epoch))
        return bytes(rows[0][0]) if rows else None

    # --- records -----------------------------------------------------------

    def record(self, rid: str, seq: int, blob: bool = True) -> StoredRecord | None:
        columns = RECORD_WITH_PLACE if blob else RECORD_COLUMNS
        rows = self._read(f"SELECT {columns} FROM {_RECORD_ROWS} WHERE r.relationship = %s AND r.seq = %s", (rid, seq))
        if not rows:
            return None
        return self.blobs.fill(rows)[0] if blob else record_of(rows[0])

    def records(self, rid: str, after_seq: int, limit: int) -> list[StoredRecord]:
        """Settled records (with a log index) after ``after_seq``, in seq order."""
        rows = self._read(
            f"SELECT {RECORD_WITH_PLACE} FROM {_RECORD_ROWS} WHERE r.relationship = %s AND r.seq > %s AND s.idx IS NOT NULL "
            "ORDER BY r.seq LIMIT %s",
            (rid, after_seq, limit),
        )
        return self.blobs.fill(rows)

    def iter_records(self, page: int = 1000) -> Iterator[StoredRecord]:
        """Every record with its blob, by relationship and seq, read in pages (fsck): a blob in the object store as
        the store holds it, unchecked (None if it has none)."""
        after: tuple[str, int] = ("", -1)
        while True:
            rows = self._read(
                f"SELECT {RECORD_WITH_PLACE} FROM {_RECORD_ROWS} WHERE (r.relationship, r.seq) > (%s, %s) "
                "ORDER BY r.relationship, r.seq LIMIT %s",
                (*after, page),
            )
            if not rows:
                return
            yield from self.blobs.fill(rows, check=False)
            after = (rows[-1][0], rows[-1][1])

    # --- blobs in the object store (storage/blobs.py) -----------------------

    def mirror_blobs(self) -> None:
        self.blobs.start_mirror()

    def metrics_text(self) -> str:
        return self.blobs.metrics_text()

    def _store_url(self) -> str | None:
        rows = self._read(RECORDED_STORE)
        return str(rows[0][0]) if rows else None

    def _store_mark(self) -> str | None:
        rows = self._read(RECORDED_MARK)
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def unsettled_of(self, rid: str) -> list[StoredRecord]:
        """One relationship's rows still without a log index (its last ones), in seq order."""
        rows = self._read(f"SELECT {RECORD_COLUMNS} FROM {_UNSETTLED} WHERE u.relationship = %s ORDER BY r.seq", (rid,))
        return [record_of(r) for r in rows]

    def has_unsettled(self, rid: str) -> bool:
        """Whether the relationship has a row still without its log index."""
        rows = self._read("SELECT EXISTS (SELECT 1 FROM unsettled WHERE relationship = %s)", (rid,))
        return bool(rows[0][0])

    def unsettled(self) -> list[StoredRecord]:
        return [record_of(r) for r in self._read(f"SELECT {RECORD_COLUMNS} FROM {_UNSETTLED} ORDER BY r.relationship, r.seq")]

    def settled_indexes(self, indexes: Sequence[int]) -> set[int]:
        """Which of these log indexes a settled record already holds."""
        rows = self._read("SELECT idx FROM settled WHERE idx = ANY(%b::bigint[])", (list(indexes),))
        return {int(r[0]) for r in rows}

    @staticmethod
    def import_from(url: str, source: RecordStore, progress: Progress | None = None) -> int:
        """Copy every row of records.db (``source``) into the database, in one transaction; how many records.

        Step 2 of logmove.move_records: a database holding exactly as many parties and records already
        got this copy before (a crash before records.db was moved aside); any other non-empty one is refused.
        """
        parties = source.table("parties", _PARTY_ROW)
        total = source.record_count()
        conn = connect(url)
        try:
            require_durable(conn, redact(url))
            with conn.transaction(), conn.cursor() as cur:
                require_current(conn, redact(url))
                _begin(conn, rederivable=False, epoch=None, lock=_Locks((), exclusive=True))
                held = conn.execute("SELECT (SELECT count(*) FROM parties), (SELECT count(*) FROM records)").fetchone()
                assert held is not None
                if tuple(held) == (len(parties), total) and total + len(parties) > 0:
                    return total
                if tuple(held) != (0, 0):
                    raise UntrustedState(
                        f"{redact(url)} holds {held[0]} parties and {held[1]} records already, and {source.path} "
                        f"holds {len(parties)} and {total}: pacspace will not merge them"
                    )
                for table, columns in (("parties", _PARTY_ROW), ("relationships", RELATIONSHIP_COLUMNS),
                                       ("wraps", "relationship, reader, epoch, wrap")):
                    rows = parties if table == "parties" else source.table(table, columns)
                    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                done = 0
                with cur.copy("COPY records (relationship, seq, tag, ct_hash, blob_id, blob) FROM STDIN") as copy:
                    waiting, settled = [], []
                    for done, rec in enumerate(source.iter_records(), 1):
                        if rec.blob is None or hashlib.sha256(rec.blob).digest() != rec.ct_hash:
                            raise UntrustedState(f"{source.path}: record {rec.seq} of {rec.relationship} has no "
                                                 "blob, or one that does not match its ct_hash (see `pacspace fsck`)")
                        copy.write_row((rec.relationship, rec.seq, rec.tag, rec.ct_hash, done, rec.blob))
                        if rec.index is None:
                            waiting.append((done, rec.relationship, rec.seq, rec.tag))
                        else:
                            settled.append((done, rec.index, rec.checkpoint_size))
                        if progress and done % 1000 == 0:
                            progress("records", done, total)
                for table, columns, rows in (("unsettled", "blob_id, relationship, seq, tag", waiting),
                                             ("settled", "blob_id, idx, checkpoint_size", settled)):
                    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                if done:
                    conn.execute("SELECT setval(pg_get_serial_sequence('records', 'blob_id'), %s)", (done,))
                if progress:
                    progress("records", done, total)
                return done
        finally:
            conn.close()


@dataclass
class _Attempt:
    """One write transaction as far as it got: its id once begun, its results once only COMMIT was left."""

    xid: str | None = None
    results: list[Any] | None = None


class Deposed(SequencerUnavailable):
    """Another serve sequences the log since this store's epoch: the append path's writes here are refused."""


@dataclass(frozen=True)
class _Locks:
    """What a write transaction locks first: the records' lock, shared (writers of other relationships go on
    beside it) or exclusive (claim_epoch, import_from: nobody else writes meanwhile); then, shared, the key of each
    relationship (or party) it decides about, in one order for all, so two writers never wait for each other."""

    keys: Sequence[str]
    exclusive: bool = False


def _begin(conn: Connection, rederivable: bool, epoch: int | None, lock: _Locks) -> str:
    """The locks, then (a statement of its own, so that it reads what committed while we waited for them) the
    transaction's id and the sequencer's epoch, which must be ``epoch`` if given."""
    take = "pg_advisory_xact_lock" if lock.exclusive else "pg_advisory_xact_lock_shared"
    conn.execute(f"SELECT {take}(%s)", (RECORDS_LOCK,))
    if lock.keys:
        # hashtext: two keys that share a hash only wait for each other. Taken in the hashes' order.
        conn.execute(
            "SELECT count(pg_advisory_xact_lock(%s::int4, h)) FROM "
            "(SELECT DISTINCT hashtext(k) AS h FROM unnest(%b::text[]) AS k ORDER BY h) AS ordered",
            (KEY_LOCKS, list(lock.keys)),
        )
    row = conn.execute("SELECT txid_current()::text, (SELECT value FROM log_meta WHERE key = 'sequencer_epoch')").fetchone()
    assert row is not None
    if epoch is not None and row[1] != str(epoch):
        raise Deposed("this serve no longer sequences the log (another one took over): retry")
    if rederivable:
        conn.execute("SET LOCAL synchronous_commit = off")
    return str(row[0])


# --- the ops' statements ------------------------------------------------------------------------


def _compile(op: RecordOp | Op) -> tuple[Op, list[str]]:
    """The op as PostgreSQL runs it, and the relationships it decides about (their locks, _Locks). A function of
    the connection is already one (a test's fault)."""
    if callable(op):
        return op, []
    match op:
        case record_ops.Reserve(rid, records, before):
            many = _reserve_many([(rid, records)])
            first = None if before is None else _compile(before)[0]

            def reserve(conn: Connection) -> list[StoredRecord] | None:
                if first is not None:
                    first(conn)
                (result,) = many(conn)
                if isinstance(result, BaseException):
                    raise result
                return result  # type: ignore[no-any-return]

            return reserve, [rid]
        case record_ops.ReserveMany(groups):
            return _reserve_many(groups), [rid for rid, _ in groups]
        case record_ops.SettleRun():
            # A settle decides nothing: it moves the rows it names from waiting to settled, row by row (and
            # PostgreSQL's row locks order it with a drop of the same row), so it locks no relationship.
            return _settle_run(op), []
        case record_ops.SettleRows(rows, size):
            return _settle_rows(rows, size), []
        case record_ops.AddRelationship(rel, wraps, epoch):
            return _shared(record_writes.add_relationship(rel, wraps, epoch)), [rel.id]
        case record_ops.DropRelationship(rid):
            return _shared(record_writes.drop_relationship(rid)), [rid]
        case record_ops.Drop(rid, seqs):
            return _drop(rid, list(seqs)), [rid]
        case record_ops.Accept(rid, signature, now):
            return _shared(consent.accept(rid, signature, now)), [rid]
        case record_ops.Decline(rid, now):
            return _shared(consent.decline(rid, now)), [rid]
    raise TypeError(f"not a record op: {op!r}")


def _last_rows(conn: Connection, rids: list[str]) -> list[tuple[int, bool] | None]:
    """Each relationship's last (seq, unsettled), or None if it has no record: one statement for all."""
    rows = conn.execute(
        "SELECT (SELECT r.seq * 2 + (EXISTS (SELECT 1 FROM unsettled u WHERE u.blob_id = r.blob_id))::int "
        "FROM records r WHERE r.relationship = w.rid ORDER BY r.seq DESC LIMIT 1) "
        "FROM unnest(%b::text[]) WITH ORDINALITY AS w(rid, k) ORDER BY w.k",
        (rids,),
    ).fetchall()
    return [None if v is None else (int(v) >> 1, bool(v & 1)) for (v,) in rows]


def _insert(conn: Connection, groups: Sequence[tuple[str, Sequence[record_ops.Record]]]) -> None:
    """New records, waiting for the log: their ids drawn at once, then the rows with their blobs, and their waiting
    rows, copied in (COPY, binary: an array of a few MB of blobs cost PostgreSQL several times as long)."""
    rows = [(rid, *record) for rid, records in groups for record in records]
    ids = [int(r[0]) for r in conn.execute(
        "SELECT nextval(pg_get_serial_sequence('records', 'blob_id')) FROM generate_series(1, %s)", (len(rows),)
    )]
    with conn.cursor() as cur:
        with cur.copy("COPY records (relationship, seq, tag, ct_hash, blob_id, blob) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["text", "int8", "bytea", "bytea", "int8", "bytea"])
            for (rid, seq, tag, ct_hash, blob), blob_id in zip(rows, ids):
                copy.write_row((rid, seq, tag, ct_hash, blob_id, blob))
        with cur.copy("COPY unsettled (blob_id, relationship, seq, tag) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", "int8", "bytea"])
            for (rid, seq, tag, _, _), blob_id in zip(rows, ids):
                copy.write_row((blob_id, rid, seq, tag))


# A tag that a record waiting for the log holds: found at once, or, if that record's transaction has not committed,
# after waiting for it, which two transactions holding each other's tags turn into a deadlock, or a lock timeout.
_TAG_CLASH = (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable)


def _reserve_many(groups: Sequence[tuple[str, Sequence[record_ops.Record]]]) -> Callable[[Connection], list[Any]]:
    rids = [rid for rid, _ in groups]

    def op(conn: Connection) -> list[Any]:
        results, fresh = record_writes.decide(
            groups, _last_rows(conn, rids), lambda rid, records: record_writes.stored_at(Qmark(conn), rid, records)
        )
        if not fresh:
            return results
        try:
            with conn.transaction():
                _insert(conn, [groups[k] for k in fresh])
            return results
        except _TAG_CLASH:
            pass
        for k in fresh:
            try:
                with conn.transaction():
                    _insert(conn, [groups[k]])
            except _TAG_CLASH:
                # (relationship, seq) cannot collide after the checks, under the writers' lock: the tag is what repeats.
                results[k] = TagConflict("a tag repeats a record that is being committed")
        return results

    return op


# Settled rows go from ``unsettled`` to ``settled``; a row not waiting any more (settled before, or dropped) is
# passed over, so settling twice is harmless.
_SETTLE = (
    "{found}, moved AS (DELETE FROM unsettled u USING found f WHERE u.blob_id = f.blob_id RETURNING u.blob_id, f.idx) "
    "INSERT INTO settled (blob_id, idx, checkpoint_size) SELECT blob_id, idx, %(size)s FROM moved "
    "ON CONFLICT (blob_id) DO NOTHING"
)


def _settle_run(op: record_ops.SettleRun) -> Op:
    found = (
        "WITH found AS (SELECT u.blob_id, %(first)s + t.k - 1 AS idx FROM unnest(%(tags)b::bytea[]) WITH ORDINALITY "
        "AS t(tag, k) JOIN unsettled u ON u.tag = t.tag)"
    )
    return _settling(found, {"tags": list(op.tags), "first": op.first_index, "size": op.checkpoint_size})


def _settle_rows(rows: Sequence[tuple[str, int, int]], size: int) -> Op:
    found = (
        "WITH found AS (SELECT u.blob_id, j.idx FROM unnest(%(rids)b::text[], %(seqs)b::bigint[], %(idxs)b::bigint[]) "
        "AS j(rid, seq, idx) JOIN unsettled u ON u.relationship = j.rid AND u.seq = j.seq)"
    )
    rids, seqs, idxs = ([list(c) for c in zip(*rows)] if rows else ([], [], []))
    return _settling(found, {"rids": rids, "seqs": seqs, "idxs": idxs, "size": size})


def _settling(found: str, params: dict[str, Any]) -> Op:
    def op(conn: Connection) -> None:
        conn.execute(_SETTLE.format(found=found), params)

    return op


def _drop(rid: str, seqs: list[int]) -> Op:
    def op(conn: Connection) -> None:
        conn.execute(
            "WITH gone AS (DELETE FROM unsettled WHERE relationship = %s AND seq = ANY(%s::bigint[]) RETURNING blob_id) "
            "DELETE FROM records WHERE blob_id IN (SELECT blob_id FROM gone)",
            (rid, seqs),
        )

    return op


if TYPE_CHECKING:
    from .base import RecordTables

    def _implements(store: PostgresRecordStore) -> None:
        _tables: RecordTables = store
