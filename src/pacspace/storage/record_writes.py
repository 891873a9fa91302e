"""records.db's statements for the write ops (storage/record_ops.py), built before the write lock that every
writing process queues on and run inside it (RecordStore.write).

:func:`compile_op` turns an op into a function of the connection; :func:`staged_blobs` says which blobs
RecordStore.write must append to the segment files before the lock.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import MalformedInput, PacspaceError
from ..merkle import HASH_SIZE
from . import consent, record_ops
from .record_ops import RecordOp
from .record_values import (
    RECORD_COLUMNS,
    RECORD_ROWS,
    RELATIONSHIP_COLUMNS,
    InFlight,
    KeysRegistered,
    Party,
    PartyExists,
    RecordConflict,
    Relationship,
    RelationshipExists,
    Role,
    SeqConflict,
    StoredRecord,
    TagConflict,
    UnknownParty,
    record_of,
    token_hash,
)
from .segments import Placed

T = TypeVar("T")
Records = Sequence[tuple[int, bytes, bytes, bytes]]


def stored_at(conn: Any, rid: str, records: Sequence[tuple[int, bytes, bytes, bytes]]) -> list[StoredRecord]:
    """The stored rows at ``records``' seqs (``conn``: sqlite3's, or one taking its ``?`` placeholders)."""
    first, count = records[0][0], len(records)
    rows = conn.execute(
        f"SELECT {RECORD_COLUMNS} FROM {RECORD_ROWS} WHERE r.relationship = ? AND r.seq >= ? AND r.seq < ? ORDER BY r.seq",
        (rid, first, first + count),
    ).fetchall()
    return [record_of(r) for r in rows]


def same_as_stored(stored: list[StoredRecord], records: Sequence[tuple[int, bytes, bytes, bytes]]) -> list[StoredRecord]:
    """A retry: every record must already be stored exactly as sent."""
    if len(stored) != len(records) or any((s.tag, s.ct_hash) != (r[1], r[2]) for s, r in zip(stored, records)):
        raise RecordConflict(f"seq {records[0][0]} already holds a different record")
    return stored


def _last_rows(conn: sqlite3.Connection, rids: str) -> list[tuple[int, bool] | None]:
    """Each relationship's last (seq, unsettled), or None if it has no record: one statement for all.

    ``rids`` is a JSON list of relationship ids."""
    rows = conn.execute(
        "SELECT (SELECT r.seq * 2 + EXISTS (SELECT 1 FROM unsettled u WHERE u.blob_id = r.blob_id) "
        "FROM records r WHERE r.relationship = w.value ORDER BY r.seq DESC LIMIT 1) "
        "FROM json_each(?) w ORDER BY w.key",
        (rids,),
    ).fetchall()
    return [None if v is None else (v >> 1, bool(v & 1)) for (v,) in rows]


def check_next(
    existing: Callable[[], list[StoredRecord]], records: Sequence[tuple[int, bytes, bytes, bytes]], last: tuple[int, bool] | None
) -> list[StoredRecord] | None:
    """None if ``records`` may be stored next in the relationship; the stored rows if they are a retry; else raises.

    ``last`` is the relationship's last row (seq, unsettled): unsettled rows are always a
    relationship's last ones, so it says both what seq comes next and whether one is in flight.
    ``existing`` reads the stored rows at ``records``' seqs (the same backend's query). Every record
    store runs this decision.
    """
    if not records:
        raise MalformedInput("a group of records holds at least one")
    first = records[0][0]
    if [r[0] for r in records] != list(range(first, first + len(records))):
        raise SeqConflict("the records of one relationship must have consecutive seqs", first)
    expected = 0 if last is None else last[0] + 1
    if first < expected:
        return same_as_stored(existing(), records)
    if first != expected:
        raise SeqConflict(f"the next seq of this relationship is {expected}, not {first}", expected)
    if last is not None and last[1]:
        raise InFlight(f"seq {first - 1} is still being committed; retry when it has its receipt")
    return None


def decide(
    groups: Sequence[tuple[str, Records]],
    lasts: Sequence[tuple[int, bool] | None],
    stored: Callable[[str, Records], list[StoredRecord]],
) -> tuple[list[list[StoredRecord] | None | PacspaceError], list[int]]:
    """Each group's reserve decision (:func:`check_next`, given its relationship's last row): its result (None to
    store it, the stored rows of a retry, or its error), and which groups to store. Every record store runs this."""
    results: list[list[StoredRecord] | None | PacspaceError] = [None] * len(groups)
    fresh: list[int] = []
    for k, ((rid, records), last) in enumerate(zip(groups, lasts)):
        try:
            results[k] = check_next(lambda: stored(rid, records), records, last)  # noqa: B023 (called at once)
            if results[k] is None:
                fresh.append(k)
        except PacspaceError as exc:
            results[k] = exc
    return results, fresh


# Integers handed to SQL as fixed-width decimal digits in a blob: ``substr`` of a blob is O(1), and
# the cast is a fraction of the cost of json_extract, which parses the row's JSON each call.
_DIGITS = 20


def _digits(values: Sequence[int]) -> bytes:
    return (f"%{_DIGITS}d" * len(values) % tuple(values)).encode()


def _nth(name: str) -> str:
    """SQL for the integer at row ``key`` of the _digits blob ``:name``."""
    return f"CAST(substr(:{name}, key * {_DIGITS} + 1, {_DIGITS}) AS INTEGER)"


def _insert_params(groups: Sequence[tuple[str, Sequence[tuple[int, bytes, bytes, bytes]]]], starts: Sequence[int]) -> dict[str, Any]:
    """The parameters of :func:`_insert` for these groups' records, built before the write lock is taken.

    ``starts[k]`` is where group k's first blob begins in the bytes appended for the op."""
    rids: list[str] = []
    seqs: list[int] = []
    offsets: list[int] = []
    lengths: list[int] = []
    tags: list[bytes] = []
    cts: list[bytes] = []
    for (rid, records), at in zip(groups, starts):
        for seq, tag, ct_hash, blob in records:
            if len(tag) != HASH_SIZE or len(ct_hash) != HASH_SIZE:
                raise MalformedInput(f"a record's tag and ct_hash are {HASH_SIZE} bytes")
            rids.append(rid)
            seqs.append(seq)
            offsets.append(at)
            lengths.append(len(blob))
            tags.append(tag)
            cts.append(ct_hash)
            at += len(blob)
    return {
        "rids": json.dumps(rids),
        "seqs": _digits(seqs),
        "offsets": _digits(offsets),
        "lengths": _digits(lengths),
        "tags": b"".join(tags),
        "cts": b"".join(cts),
    }


def _insert(conn: sqlite3.Connection, params: dict[str, Any], placed: Placed) -> None:
    """New records (:func:`_insert_params`) under the next sequential ids (the caller holds the write lock), unsettled;
    their blobs were appended at ``placed``.

    Ids follow arrival. One is used again only if the record that had it was the newest and was
    dropped (never acknowledged), so no two stored records ever share one.

    One statement per table, whatever the number of rows: Python's sqlite3 releases the GIL
    around every step of ``executemany``, and a step must win the GIL back before the next;
    while another thread of the process is in a long C call (parsing a request's JSON), each
    of thousands of steps waited for it, and every other process waited for our write lock.
    """
    (top,) = conn.execute(
        "SELECT max(coalesce((SELECT max(id) FROM blobs), 0), coalesce((SELECT max(blob_id) FROM spans), 0))"
    ).fetchone()
    params = {**params, "top": top, "segment": placed.segment, "base": placed.offset}
    tag, ct_hash = (f"substr(:{name}, key * {HASH_SIZE} + 1, {HASH_SIZE})" for name in ("tags", "cts"))
    conn.execute(
        "INSERT INTO records (relationship, seq, tag, ct_hash, blob_id) "
        f"SELECT value, {_nth('seqs')}, {tag}, {ct_hash}, :top + 1 + key FROM json_each(:rids)",
        params,
    )
    conn.execute(
        "INSERT INTO spans (blob_id, segment, start, length) "
        f"SELECT :top + 1 + key, :segment, :base + {_nth('offsets')}, {_nth('lengths')} FROM json_each(:rids)",
        params,
    )
    conn.execute(
        "INSERT INTO unsettled (blob_id, relationship, seq, tag) "
        f"SELECT :top + 1 + key, value, {_nth('seqs')}, {tag} FROM json_each(:rids)",
        params,
    )


def settle_rows(keyed: str, checkpoint_size: int) -> Callable[[sqlite3.Connection], None]:
    """The settle op over ``keyed``, a JSON list of rows [relationship, seq, log index]."""

    def op(conn: sqlite3.Connection) -> None:
        # Appended in the order the log sequenced them, which is close to the order of their ids.
        # One statement each, not one per row (see _insert).
        settling = (
            "SELECT r.blob_id, json_extract(j.value, '$[2]') AS idx FROM json_each(:rows) j JOIN records r "
            "ON r.relationship = json_extract(j.value, '$[0]') AND r.seq = json_extract(j.value, '$[1]') "
            "WHERE EXISTS (SELECT 1 FROM unsettled u WHERE u.blob_id = r.blob_id)"
        )
        params = {"rows": keyed, "size": checkpoint_size}
        conn.execute(f"INSERT INTO settled (blob_id, idx, checkpoint_size) SELECT blob_id, idx, :size FROM ({settling})", params)
        conn.execute(f"DELETE FROM unsettled WHERE blob_id IN (SELECT blob_id FROM ({settling}))", params)

    return op


def settle_run(tags: bytes, first: int, checkpoint_size: int) -> Callable[[sqlite3.Connection], None]:
    """The settle op for the records whose tags (``tags``, concatenated) the log holds at consecutive
    indexes from ``first``."""
    params = {"tags": tags, "n": len(tags) // HASH_SIZE, "first": first, "size": checkpoint_size}

    def op(conn: sqlite3.Connection) -> None:
        # A record waiting for the log is found by its tag, which is unique among them (the small
        # ``unsettled`` table's index, all in cache), and its tag is the one its entry carries. This
        # statement is most of the time the sequencing process holds the write lock that every
        # process waits on: finding the rows by (relationship, seq) through the large records
        # table, with a JSON list of them, took about twice as long (docs/performance.md).
        conn.execute(
            "INSERT INTO settled (blob_id, idx, checkpoint_size) "
            "WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < :n) "
            f"SELECT u.blob_id, :first + k.i, :size FROM k JOIN unsettled u ON u.tag = substr(:tags, k.i * {HASH_SIZE} + 1, {HASH_SIZE})",
            params,
        )
        # The rows just settled, found by their indexes (settled_idx) rather than by joining again.
        conn.execute(
            "DELETE FROM unsettled WHERE blob_id IN (SELECT blob_id FROM settled WHERE idx >= :first AND idx < :first + :n)",
            params,
        )

    return op


@dataclass
class Staged:
    """Blobs an op stores: RecordStore.write appends them to the segment files (``placed``) before the write lock."""

    data: bytes
    placed: Placed | None = None

    def placed_or_raise(self) -> Placed:
        if self.placed is None:
            raise RuntimeError("a reserve op must run through RecordStore.write, which stores its blobs first")
        return self.placed


_MARK_STAGED = "pacspace_staged"


def _staging(op: Callable[[sqlite3.Connection], T], staged: Staged) -> Callable[[sqlite3.Connection], T]:
    setattr(op, _MARK_STAGED, staged)
    return op


def staged_blobs(op: Callable[[sqlite3.Connection], Any]) -> Staged | None:
    """The blobs an op stores, which RecordStore.write appends to the segment files before the lock."""
    return getattr(op, _MARK_STAGED, None)


def reserve(
    rid: str, records: Records, before: Callable[[sqlite3.Connection], None] | None = None
) -> Callable[[sqlite3.Connection], list[StoredRecord] | None]:
    """record_ops.Reserve."""
    many = reserve_many([(rid, records)])

    def op(conn: sqlite3.Connection) -> list[StoredRecord] | None:
        if before is not None:
            before(conn)
        (result,) = many(conn)
        if isinstance(result, BaseException):
            raise result
        return result

    return _staging(op, getattr(many, _MARK_STAGED))


def reserve_many(
    groups: Sequence[tuple[str, Records]],
) -> Callable[[sqlite3.Connection], list[list[StoredRecord] | None | PacspaceError]]:
    """record_ops.ReserveMany."""
    # Built here, before the op takes the write lock every process waits on: usually every group is new.
    starts, at = [], 0
    for _, records in groups:
        starts.append(at)
        at += sum(len(r[3]) for r in records)
    everything = _insert_params(groups, starts)
    rids = json.dumps([rid for rid, _ in groups])
    staged = Staged(b"".join(r[3] for _, records in groups for r in records))

    def op(conn: sqlite3.Connection) -> list[list[StoredRecord] | None | PacspaceError]:
        placed = staged.placed_or_raise()
        results, fresh = decide(groups, _last_rows(conn, rids), lambda rid, records: stored_at(conn, rid, records))
        if not fresh:
            return results
        conn.execute("SAVEPOINT reserve_all")
        try:
            params = everything if len(fresh) == len(groups) else _insert_params([groups[k] for k in fresh], [starts[k] for k in fresh])
            _insert(conn, params, placed)
            conn.execute("RELEASE reserve_all")
            return results
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO reserve_all")
            conn.execute("RELEASE reserve_all")
        for k in fresh:
            conn.execute("SAVEPOINT reserve_one")
            try:
                _insert(conn, _insert_params([groups[k]], [starts[k]]), placed)
                conn.execute("RELEASE reserve_one")
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK TO reserve_one")
                conn.execute("RELEASE reserve_one")
                # (relationship, seq) cannot collide after the checks: the tag is what repeats.
                results[k] = TagConflict("a tag repeats a record that is being committed")
        return results

    return _staging(op, staged)


# --- ops over sqlite3's connection or one taking its ``?`` placeholders (PostgreSQL's, storage/pg_records.py) ---


def add_party(name: str, role: Role, token: str, now: int) -> Callable[[Any], Party]:
    def op(conn: Any) -> Party:
        if conn.execute("SELECT 1 FROM parties WHERE name = ?", (name,)).fetchone():
            raise PartyExists(f"a party named {name!r} already exists")
        conn.execute(
            "INSERT INTO parties (name, role, token_hash, created_at) VALUES (?, ?, ?, ?)",
            (name, role, token_hash(token), now),
        )
        return Party(name, role, now, None, None, None)

    return op


def revoke_party(name: str, now: int) -> Callable[[Any], None]:
    def op(conn: Any) -> None:
        cur = conn.execute("UPDATE parties SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now, name))
        if cur.rowcount == 0:
            raise UnknownParty(f"no active party named {name!r}")

    return op


def set_keys(name: str, x25519: bytes, ed25519: bytes) -> Callable[[Any], None]:
    """A party's public keys, registered once; the same keys again is a no-op, other keys a KeysRegistered."""

    def op(conn: Any) -> None:
        row = conn.execute("SELECT x25519, ed25519 FROM parties WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownParty(f"no party named {name!r}")
        if row[0] is not None and (bytes(row[0]), bytes(row[1])) != (x25519, ed25519):
            raise KeysRegistered("keys are already registered for this party; they cannot be replaced")
        conn.execute("UPDATE parties SET x25519 = ?, ed25519 = ? WHERE name = ?", (x25519, ed25519, name))

    return op


def add_relationship(rel: Relationship, wraps: Mapping[str, bytes], epoch: int) -> Callable[[Any], None]:
    """record_ops.AddRelationship, for sqlite3's connection or one taking its ``?`` placeholders (PostgreSQL's)."""

    def op(conn: Any) -> None:
        row = conn.execute("SELECT provider, customer FROM relationships WHERE id = ?", (rel.id,)).fetchone()
        if row is not None:
            if tuple(row) == (rel.provider, rel.customer):
                return  # a retry: the genesis reserve that follows returns the stored receipt
            raise RelationshipExists("that relationship id is taken; draw another")
        conn.execute(
            f"INSERT INTO relationships ({RELATIONSHIP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'pending', NULL, NULL)",
            (rel.id, rel.provider, rel.customer, rel.cadence, rel.billing_cycle, rel.created_at),
        )
        conn.executemany(
            "INSERT INTO wraps (relationship, reader, epoch, wrap) VALUES (?, ?, ?, ?)",
            [(rel.id, reader, epoch, wrap) for reader, wrap in wraps.items()],
        )

    return op


def drop_relationship(rid: str, blob_deletes: Sequence[str] = ()) -> Callable[[Any], None]:
    """record_ops.DropRelationship. ``blob_deletes``: the store's statements that remove the blobs of the
    relationship's records kept apart from their rows (records.db's), run first."""

    def op(conn: Any) -> None:
        if conn.execute(
            "SELECT 1 FROM records r JOIN settled s ON s.blob_id = r.blob_id WHERE r.relationship = ? LIMIT 1", (rid,)
        ).fetchone():
            return
        for statement in (*blob_deletes, *_RELATIONSHIP_DELETES):
            conn.execute(statement, (rid,))

    return op


_RELATIONSHIP_DELETES = (
    "DELETE FROM unsettled WHERE relationship = ?",
    "DELETE FROM records WHERE relationship = ?",
    "DELETE FROM wraps WHERE relationship = ?",
    "DELETE FROM relationships WHERE id = ?",
)
# records.db's blobs: in ``blobs`` before schema 4, in the segment files (where ``spans`` says) since.
_BLOB_DELETES = (
    "DELETE FROM blobs WHERE id IN (SELECT blob_id FROM records WHERE relationship = ?)",
    "DELETE FROM spans WHERE blob_id IN (SELECT blob_id FROM records WHERE relationship = ?)",
)


def _drop(rid: str, seqs: Sequence[int]) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        for seq in seqs:
            row = conn.execute(
                "DELETE FROM unsettled WHERE blob_id = (SELECT blob_id FROM records WHERE relationship = ? AND seq = ?) "
                "RETURNING blob_id",
                (rid, seq),
            ).fetchone()
            if row is not None:
                conn.execute("DELETE FROM records WHERE relationship = ? AND seq = ?", (rid, seq))
                conn.execute("DELETE FROM blobs WHERE id = ?", (row[0],))
                conn.execute("DELETE FROM spans WHERE blob_id = ?", (row[0],))

    return op


def compile_op(op: RecordOp | Callable[[sqlite3.Connection], Any]) -> Callable[[sqlite3.Connection], Any]:
    """The op as records.db runs it; its parameters are built here, before the write lock. A function of the
    connection is already one (a test's fault)."""
    if callable(op):
        return op
    match op:
        case record_ops.Reserve(rid, records, before):
            return reserve(rid, records, None if before is None else compile_op(before))
        case record_ops.ReserveMany(groups):
            return reserve_many(groups)
        case record_ops.SettleRun():
            return settle_run(op.joined, op.first_index, op.checkpoint_size)
        case record_ops.SettleRows(rows, size):
            return settle_rows(json.dumps([[rid, seq, index] for rid, seq, index in rows]), size)
        case record_ops.AddRelationship(rel, wraps, epoch):
            return add_relationship(rel, wraps, epoch)
        case record_ops.DropRelationship(rid):
            return drop_relationship(rid, _BLOB_DELETES)
        case record_ops.Drop(rid, seqs):
            return _drop(rid, seqs)
        case record_ops.Accept(rid, signature, now):
            return consent.accept(rid, signature, now)
        case record_ops.Decline(rid, now):
            return consent.decline(rid, now)
    raise TypeError(f"not a record op: {op!r}")
