"""records.db on its own: the bulk reserve, dropping, and the schema's versions and migration."""

from __future__ import annotations

import hashlib
import os
import sqlite3

import pytest

from pacspace.storage import record_ops, record_writes
from pacspace.errors import MalformedInput, NotFound, UntrustedState
from pacspace.storage.records import (
    AcceptanceConflict,
    InFlight,
    RecordStore,
    Relationship,
    RelationshipAccepted,
    RelationshipDeclined,
    SeqConflict,
    TagConflict,
)
from pacspace.storage.records_schema import PAGE_SIZE, SCHEMA_VERSION


def record(seq: int, tag: bytes | None = None) -> tuple[int, bytes, bytes, bytes]:
    blob = os.urandom(200)
    return (seq, tag or os.urandom(32), hashlib.sha256(blob).digest(), blob)


@pytest.fixture
def store(tmp_path):
    s = RecordStore(tmp_path)
    s.add_party("acme", "provider", "t1", 1)
    s.add_party("bob", "customer", "t2", 1)
    for i in range(4):
        s.add_relationship(Relationship(f"acme:r{i}", "acme", "bob", "daily", "monthly", 1), {"acme": b"w", "bob": b"w"})
    yield s
    s.close()


def test_a_bulk_reserve_stores_each_group_or_gives_its_error(store):
    first = [record(0)]
    (result,) = store.write([record_ops.ReserveMany([("acme:r0", first), ("acme:r1", [record(0), record(1)])])])
    assert result == [None, None]
    store.write([record_ops.settle("acme:r0", [(0, 0)], 1), record_ops.settle("acme:r1", [(0, 1), (1, 2)], 3)])
    store.write([record_ops.Reserve("acme:r1", [record(2)])])
    waiting = store.unsettled_of("acme:r1")[0].tag
    (result,) = store.write([record_ops.ReserveMany([
        ("acme:r0", first),                     # a retry: the stored row comes back
        ("acme:r1", [record(5)]),               # a gap
        ("acme:r2", [record(0, tag=waiting)]),  # the tag of a record waiting for the log
        ("acme:r3", [record(0)]),               # fine, and stored although its neighbours fail
    ])])  # fmt: skip
    assert [r.seq for r in result[0]] == [0]
    assert isinstance(result[1], SeqConflict) and result[1].expected == 3
    assert isinstance(result[2], TagConflict)
    assert result[3] is None
    assert store.records("acme:r2", -1, 10) == [] and store.unsettled_of("acme:r2") == []
    assert [r.seq for r in store.unsettled_of("acme:r3")] == [0]
    (result,) = store.write([record_ops.ReserveMany([("acme:r3", [record(1)])])])
    assert isinstance(result[0], InFlight)


def test_a_settled_records_tag_is_left_to_the_log_to_refuse(store):
    """records.db keeps tags unique only among records waiting for the log (appending.TagGuard does the rest)."""
    first = record(0)
    store.write([record_ops.Reserve("acme:r0", [first])])
    store.write([record_ops.settle("acme:r0", [(0, 0)], 1)])
    (result,) = store.write([record_ops.Reserve("acme:r1", [record(0, tag=first[1])])])
    assert result is None
    assert [r.tag for r in store.unsettled_of("acme:r1")] == [first[1]]


def test_reconcile_drops_a_copy_of_an_entry_another_record_holds(store):
    """A provider's copy of its own record (same entry, another relationship) that a crash left stored."""
    from pacspace.appending import reconcile
    from pacspace.merkle import leaf_hash

    original = record(0)
    store.write([record_ops.Reserve("acme:r0", [original])])
    store.write([record_ops.settle("acme:r0", [(0, 0)], 1)])
    store.write([record_ops.Reserve("acme:r1", [original])])
    copy = store.unsettled_of("acme:r1")[0]
    in_log = {leaf_hash(copy.entry): 0}
    assert reconcile(store, in_log.get, published_size=1) == (0, 1)
    assert store.unsettled() == [] and store.records("acme:r1", -1, 10) == []
    assert [(r.seq, r.index) for r in store.records("acme:r0", -1, 10)] == [(0, 0)]


def test_dropping_unacknowledged_records_frees_their_blobs(store):
    store.write([record_ops.Reserve("acme:r0", [record(0), record(1)])])
    store.write([record_ops.Drop("acme:r0", [1, 0])])
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] == 0


def test_blobs_live_in_segment_files_and_survive_a_reopen(store, tmp_path):
    rows = [record(0), record(1)]
    store.write([record_ops.Reserve("acme:r0", rows)])
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT count(*) FROM blobs").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] == 2
    conn.close()
    store.write([record_ops.settle("acme:r0", [(0, 0), (1, 1)], 2)])
    reopened = RecordStore(tmp_path, readonly=True)
    try:
        assert [r.blob for r in reopened.records("acme:r0", -1, 10)] == [rows[0][3], rows[1][3]]
        assert reopened.record("acme:r0", 1).blob == rows[1][3]
    finally:
        reopened.close()


def test_a_refused_reserve_leaves_bytes_that_nothing_names(store):
    """The blobs are appended before the transaction: when it stores nothing, the bytes stay unread."""
    store.write([record_ops.Reserve("acme:r0", [record(0)])])
    (refused,) = store.write([record_ops.Reserve("acme:r0", [record(5)])])
    assert isinstance(refused, SeqConflict)
    store.write([record_ops.settle("acme:r0", [(0, 0)], 1)])
    later = record(1)
    store.write([record_ops.Reserve("acme:r0", [later])])
    store.write([record_ops.settle("acme:r0", [(1, 1)], 2)])
    assert store.records("acme:r0", 0, 10)[0].blob == later[3]
    assert sum(p.stat().st_size for p in (store.path.parent / "blobs").iterdir()) == 3 * 200


def test_a_reserve_op_runs_only_through_write(store):
    op = record_ops.Reserve("acme:r0", [record(0)])
    with pytest.raises(RuntimeError, match="through RecordStore.write"):
        record_writes.compile_op(op)(sqlite3.connect(":memory:"))


def test_a_lost_segment_is_an_error_for_readers_and_a_missing_blob_for_fsck(store):
    store.write([record_ops.Reserve("acme:r0", [record(0)])])
    store.write([record_ops.settle("acme:r0", [(0, 0)], 1)])
    for path in (store.path.parent / "blobs").iterdir():
        path.unlink()
    reader = RecordStore(store.path.parent, readonly=True)
    try:
        with pytest.raises(UntrustedState, match="segment does not hold"):
            reader.records("acme:r0", -1, 10)
        assert [(r.seq, r.blob) for r in reader.iter_records()] == [(0, None)]
    finally:
        reader.close()


def test_a_version_3_file_keeps_its_blobs_and_writes_new_ones_to_segments(tmp_path):
    """Version 4 only adds ``spans``: a version-3 file is upgraded without copying a byte."""
    old = record(0)
    store = RecordStore(tmp_path)
    store.add_party("acme", "provider", "t1", 1)
    store.add_party("bob", "customer", "t2", 1)
    store.add_relationship(Relationship("acme:r", "acme", "bob", "daily", "monthly", 1), {"acme": b"w", "bob": b"w"})
    store.write([record_ops.Reserve("acme:r", [old])])
    store.write([record_ops.settle("acme:r", [(0, 0)], 1)])
    store.close()
    # Back to version 3's layout: the blob in the database, no spans, no segment files.
    conn = sqlite3.connect(tmp_path / "records.db")
    conn.execute("INSERT INTO blobs (id, blob) SELECT blob_id, ? FROM records", (old[3],))
    conn.execute("DROP TABLE spans")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    for path in (tmp_path / "blobs").iterdir():
        path.unlink()
    with pytest.raises(UntrustedState, match="start `pacspace serve` on it once"):
        RecordStore(tmp_path, readonly=True)
    store = RecordStore(tmp_path)
    try:
        new = record(1)
        store.write([record_ops.Reserve("acme:r", [new])])
        store.write([record_ops.settle("acme:r", [(1, 1)], 2)])
        assert [(r.seq, r.blob) for r in store.records("acme:r", -1, 10)] == [(0, old[3]), (1, new[3])]
        conn = sqlite3.connect(tmp_path / "records.db")
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        # The new record's id follows the old one's, and only it has a span.
        assert conn.execute("SELECT r.seq, p.blob_id - b.id FROM records r JOIN spans p ON p.blob_id = r.blob_id, blobs b").fetchall() == [(1, 1)]
        conn.close()
    finally:
        store.close()


def test_a_new_file_has_the_current_schema_and_page_size(tmp_path):
    RecordStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "records.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
    assert (tmp_path / "records.db.lock").stat().st_mode & 0o777 == 0o600


V1 = (
    "CREATE TABLE parties (name TEXT PRIMARY KEY, role TEXT NOT NULL, token_hash BLOB NOT NULL UNIQUE, "
    "created_at INTEGER NOT NULL, revoked_at INTEGER, x25519 BLOB, ed25519 BLOB)",
    "CREATE TABLE relationships (id TEXT PRIMARY KEY, provider TEXT NOT NULL, customer TEXT NOT NULL, "
    "cadence TEXT NOT NULL, billing_cycle TEXT NOT NULL, created_at INTEGER NOT NULL)",
    "CREATE TABLE wraps (relationship TEXT NOT NULL, reader TEXT NOT NULL, epoch INTEGER NOT NULL, wrap BLOB NOT NULL, "
    "PRIMARY KEY (relationship, reader, epoch))",
    "CREATE TABLE records (relationship TEXT NOT NULL, seq INTEGER NOT NULL, tag BLOB NOT NULL UNIQUE, "
    "ct_hash BLOB NOT NULL, idx INTEGER, checkpoint_size INTEGER, PRIMARY KEY (relationship, seq))",
    "CREATE TABLE blobs (relationship TEXT NOT NULL, seq INTEGER NOT NULL, blob BLOB NOT NULL, PRIMARY KEY (relationship, seq))",
    "CREATE INDEX records_unsettled ON records(relationship, seq) WHERE idx IS NULL",
)


def write_v1(path, rows, blobs) -> None:  # type: ignore[no-untyped-def]
    conn = sqlite3.connect(path)
    for statement in V1:
        conn.execute(statement)
    conn.execute("INSERT INTO parties VALUES ('acme', 'provider', x'01', 1, NULL, NULL, NULL)")
    conn.execute("INSERT INTO relationships VALUES ('acme:r', 'acme', 'bob', 'daily', 'monthly', 1)")
    conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.executemany("INSERT INTO blobs VALUES (?, ?, ?)", blobs)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_a_version_1_file_is_migrated_on_open_with_every_record_and_blob(tmp_path):
    records = [record(seq) for seq in range(3)]
    write_v1(
        tmp_path / "records.db",
        [("acme:r", seq, tag, h, 10 + seq if seq < 2 else None, 12 if seq < 2 else None) for seq, tag, h, _ in records],
        [("acme:r", seq, blob) for seq, _, _, blob in records],
    )
    with pytest.raises(UntrustedState, match="start `pacspace serve` on it once"):
        RecordStore(tmp_path, readonly=True)
    store = RecordStore(tmp_path)
    try:
        assert [(r.seq, r.index, r.blob) for r in store.records("acme:r", -1, 10)] == [
            (0, 10, records[0][3]), (1, 11, records[1][3])
        ]
        assert [(r.seq, r.tag) for r in store.unsettled()] == [(2, records[2][1])]
        assert store.record("acme:r", 2).blob == records[2][3]
        # From before consent: accepted, without a signature.
        rel = store.relationship("acme:r")
        assert (rel.state, rel.acceptance, rel.decided_at) == ("accepted", None, None)
        # The migrated file takes new records after the old ones.
        store.write([record_ops.settle("acme:r", [(2, 12)], 13)])
        (result,) = store.write([record_ops.Reserve("acme:r", [record(3)])])
        assert result is None and [r.seq for r in store.unsettled()] == [3]
    finally:
        store.close()
    assert sqlite3.connect(tmp_path / "records.db").execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    RecordStore(tmp_path, readonly=True).close()


V2 = (
    V1[0], V1[1], V1[2],
    "CREATE TABLE records (relationship TEXT NOT NULL REFERENCES relationships(id), seq INTEGER NOT NULL, "
    "tag BLOB NOT NULL UNIQUE, ct_hash BLOB NOT NULL, blob_id INTEGER NOT NULL, PRIMARY KEY (relationship, seq))",
    "CREATE TABLE blobs (id INTEGER PRIMARY KEY, blob BLOB NOT NULL)",
    "CREATE TABLE unsettled (blob_id INTEGER PRIMARY KEY, relationship TEXT NOT NULL, seq INTEGER NOT NULL, "
    "UNIQUE (relationship, seq))",
    "CREATE TABLE settled (blob_id INTEGER PRIMARY KEY, idx INTEGER NOT NULL, checkpoint_size INTEGER NOT NULL)",
)  # fmt: skip


def test_a_version_2_file_is_migrated_on_open_and_keeps_every_record(tmp_path):
    records = [record(seq) for seq in range(3)]
    conn = sqlite3.connect(tmp_path / "records.db")
    for statement in V2:
        conn.execute(statement)
    conn.execute("INSERT INTO relationships VALUES ('acme:r', 'acme', 'bob', 'daily', 'monthly', 1)")
    conn.executemany("INSERT INTO records VALUES ('acme:r', ?, ?, ?, ?)", [(q, t, h, 7 + q) for q, t, h, _ in records])
    conn.executemany("INSERT INTO blobs VALUES (?, ?)", [(7 + q, b) for q, _, _, b in records])
    conn.executemany("INSERT INTO settled VALUES (?, ?, 2)", [(7, 0), (8, 1)])
    conn.execute("INSERT INTO unsettled VALUES (9, 'acme:r', 2)")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with pytest.raises(UntrustedState, match="start `pacspace serve` on it once"):
        RecordStore(tmp_path, readonly=True)
    store = RecordStore(tmp_path)
    try:
        assert [(r.seq, r.index, r.blob) for r in store.records("acme:r", -1, 10)] == [
            (0, 0, records[0][3]), (1, 1, records[1][3])
        ]
        assert [(r.seq, r.tag) for r in store.unsettled()] == [(2, records[2][1])]
        store.write([record_ops.settle("acme:r", [(2, 2)], 3)])
        assert [r.index for r in store.records("acme:r", -1, 10)] == [0, 1, 2]
        # Two records can no longer claim one log index.
        (result,) = store.run([lambda c: c.execute("INSERT INTO settled VALUES (99, 1, 3)")])
        assert isinstance(result, sqlite3.IntegrityError)
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "records.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    def indexed_columns(table: str) -> list[list[str]]:
        return [
            [c[2] for c in conn.execute(f"PRAGMA index_info('{index[1]}')")]
            for index in conn.execute(f"PRAGMA index_list('{table}')")
        ]

    assert indexed_columns("records") == [["relationship", "seq"]]
    assert ["idx"] in indexed_columns("settled")
    assert indexed_columns("unsettled") == [["tag"]]


def test_a_version_1_file_with_a_record_missing_its_blob_is_refused_unchanged(tmp_path):
    seq, tag, h, _ = record(0)
    write_v1(tmp_path / "records.db", [("acme:r", seq, tag, h, 0, 1)], [])
    with pytest.raises(UntrustedState, match="have no blob"):
        RecordStore(tmp_path)
    conn = sqlite3.connect(tmp_path / "records.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == 1


def test_the_development_layout_of_version_2_is_refused_not_misread(tmp_path):
    conn = sqlite3.connect(tmp_path / "records.db")
    conn.execute("CREATE TABLE records (relationship TEXT, seq INTEGER, tag BLOB, ct_hash BLOB, idx INTEGER, "
                 "checkpoint_size INTEGER, blob_id INTEGER)")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    for readonly in (False, True):
        with pytest.raises(UntrustedState, match="development layout"):
            RecordStore(tmp_path, readonly=readonly)


def test_reconcile_settles_against_the_published_checkpoint_and_never_drops_a_committed_row(store):
    from pacspace.appending import reconcile
    from pacspace.merkle import leaf_hash

    rows = [record(0), record(1), record(2)]
    store.write([record_ops.Reserve("acme:r0", rows)])
    entries = {leaf_hash(r.entry): i for i, r in enumerate(store.unsettled())}
    in_log = {h: i for h, i in entries.items() if i < 2}  # seq 2 never reached the log
    # The log holds seqs 0 and 1 at indexes 0 and 1, but only a checkpoint of size 1 is published
    # (the witnesses have not cosigned the newer one).
    assert reconcile(store, in_log.get, published_size=1) == (1, 1)
    assert [(r.seq, r.index, r.checkpoint_size) for r in store.records("acme:r0", -1, 10)] == [(0, 0, 1)]
    assert [r.seq for r in store.unsettled_of("acme:r0")] == [1]  # committed: kept for a later checkpoint
    assert reconcile(store, in_log.get, published_size=2) == (1, 0)
    assert [(r.seq, r.index, r.checkpoint_size) for r in store.records("acme:r0", -1, 10)] == [(0, 0, 1), (1, 1, 2)]


def test_a_run_of_consecutive_indexes_settles_each_row_once(store):
    r0, r0b, r1 = record(0), record(1), record(0)
    store.write([record_ops.ReserveMany([("acme:r0", [r0, r0b]), ("acme:r1", [r1])])])
    run = [r1[1], r0[1], r0b[1]]  # the tags, in the order the log holds the entries
    store.write([record_ops.SettleRun(run, 40, 43)])
    assert [(r.index, r.checkpoint_size) for r in store.records("acme:r0", -1, 10)] == [(41, 43), (42, 43)]
    assert store.record("acme:r1", 0).index == 40
    assert store.unsettled_of("acme:r0") == [] and store.unsettled_of("acme:r1") == []
    store.write([record_ops.SettleRun(run, 90, 93)])  # settling again changes nothing
    assert store.record("acme:r0", 1).index == 42
    assert [r.index for r in store.records("acme:r1", -1, 10)] == [40]


def test_a_run_passes_over_tags_no_waiting_record_holds(store):
    """Only records waiting for the log are found by tag: another tag in the run settles nothing, and
    the others still get their own index."""
    a, b = record(0), record(1)
    store.write([record_ops.Reserve("acme:r0", [a, b])])
    store.write([record_ops.SettleRun([a[1], bytes(32), b[1]], 7, 10)])
    assert [(r.seq, r.index) for r in store.records("acme:r0", -1, 10)] == [(0, 7), (1, 9)]
    assert store.settled_indexes([7, 8, 9]) == {7, 9}
    with pytest.raises(MalformedInput):
        record_ops.SettleRun([b"short"], 0, 1)


def test_only_a_transaction_of_settles_alone_skips_its_fsync(store, monkeypatch):
    """Settles are re-derivable from the log (start-up reconciles them): alone, they commit without an
    fsync (synchronous=NORMAL); with any other op, or afterwards, the connection is FULL again."""
    import functools

    from pacspace.storage import record_writes

    seen = []
    real = record_writes.compile_op

    def probing(op):
        compiled = real(op)

        @functools.wraps(compiled)  # keeps the blobs the op stages
        def run(conn):
            seen.append(conn.execute("PRAGMA synchronous").fetchone()[0])
            return compiled(conn)

        return run

    monkeypatch.setattr(record_writes, "compile_op", probing)
    settle = record_ops.SettleRun([bytes(32)], 0, 1)
    store.write([settle])
    store.write([settle, record_ops.settle("acme:r0", [(0, 0)], 1)])
    store.write([settle, record_ops.Reserve("acme:r0", [record(0)])])
    store.write([record_ops.Drop("acme:r1", [0])])
    assert seen == [1, 1, 1, 2, 2, 2]  # 1 is NORMAL, 2 is FULL
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert [r.seq for r in store.unsettled_of("acme:r0")] == [0]


@pytest.mark.parametrize("alone", [True, False])
def test_an_op_that_fails_keeps_nothing_and_gives_its_error(store, alone):
    """Alone in its transaction (no savepoint) or beside others (each in a savepoint): a failing op's
    writes are undone, its error is its result, and the other ops' writes stay."""

    def half_then_fail(conn):
        conn.execute("UPDATE parties SET x25519 = x'01' WHERE name = 'acme'")
        raise InFlight("refused after writing")

    from pacspace.storage import record_writes

    ops = [half_then_fail] if alone else [record_writes.compile_op(record_ops.Reserve("acme:r0", [record(0)])), half_then_fail]
    results = store.run(ops)
    assert isinstance(results[-1], InFlight)
    assert store.party("acme").x25519 is None
    assert [r.seq for r in store.unsettled_of("acme:r0")] == ([] if alone else [0])
    store.run([lambda conn: conn.execute("UPDATE parties SET x25519 = x'02' WHERE name = 'bob'")])
    assert store.party("bob").x25519 == b"\x02"  # the connection is usable afterwards


V4_RELATIONSHIPS = (
    "CREATE TABLE relationships (id TEXT PRIMARY KEY, provider TEXT NOT NULL REFERENCES parties(name), "
    "customer TEXT NOT NULL REFERENCES parties(name), cadence TEXT NOT NULL, billing_cycle TEXT NOT NULL, "
    "created_at INTEGER NOT NULL)"
)


def test_a_version_4_file_gains_consent_and_its_relationships_read_back_accepted_without_a_signature(tmp_path):
    store = RecordStore(tmp_path)
    store.add_party("acme", "provider", "t1", 1)
    store.add_party("bob", "customer", "t2", 1)
    store.close()
    # Version 4's relationships table (the other tables are the same in both versions), with one relationship.
    conn = sqlite3.connect(tmp_path / "records.db")
    conn.execute("DROP TABLE relationships")
    conn.execute(V4_RELATIONSHIPS)
    conn.execute("INSERT INTO relationships VALUES ('acme:old', 'acme', 'bob', 'daily', 'monthly', 7)")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    with pytest.raises(UntrustedState, match="start `pacspace serve` on it once"):
        RecordStore(tmp_path, readonly=True)
    store = RecordStore(tmp_path)
    try:
        old = store.relationship("acme:old")
        assert old == Relationship("acme:old", "acme", "bob", "daily", "monthly", 7, "accepted", None, None)
        # New relationships start pending beside it.
        store.add_relationship(Relationship("acme:new", "acme", "bob", "daily", "monthly", 8), {"acme": b"w", "bob": b"w"})
        assert [(r.id, r.state) for r in store.relationships_of("bob")] == [("acme:old", "accepted"), ("acme:new", "pending")]
        assert [r.id for r in store.relationships_of("bob", "pending")] == ["acme:new"]
        # Its customer may sign it once.
        signed = store.write_one(record_ops.Accept("acme:old", b"s" * 64, 9))
        assert (signed.state, signed.acceptance, signed.decided_at) == ("accepted", b"s" * 64, 9)
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "records.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [c[1] for c in conn.execute("PRAGMA table_info(relationships)")][-3:] == ["state", "acceptance", "decided_at"]
    conn.close()
    RecordStore(tmp_path, readonly=True).close()


def test_consent_moves_from_pending_once_and_repeats_only_the_same_decision(store):
    assert store.relationship("acme:r0").state == "pending"
    accepted = store.write_one(record_ops.Accept("acme:r0", b"a" * 64, 10))
    assert store.relationship("acme:r0") == accepted
    assert (accepted.state, accepted.acceptance, accepted.decided_at) == ("accepted", b"a" * 64, 10)
    assert store.write_one(record_ops.Accept("acme:r0", b"a" * 64, 11)) == accepted  # a retry: unchanged
    with pytest.raises(AcceptanceConflict):
        store.write_one(record_ops.Accept("acme:r0", b"b" * 64, 12))
    with pytest.raises(RelationshipAccepted, match="cannot be declined"):
        store.write_one(record_ops.Decline("acme:r0", 13))
    declined = store.write_one(record_ops.Decline("acme:r1", 20))
    assert (declined.state, declined.acceptance, declined.decided_at) == ("declined", None, 20)
    assert store.write_one(record_ops.Decline("acme:r1", 21)) == declined
    with pytest.raises(RelationshipDeclined):
        store.write_one(record_ops.Accept("acme:r1", b"a" * 64, 22))
    with pytest.raises(NotFound):
        store.write_one(record_ops.Decline("acme:nope", 23))
    assert store.relationship("acme:r0") == accepted and store.relationship("acme:r1") == declined
    assert [r.id for r in store.relationships_of("bob", "pending")] == ["acme:r2", "acme:r3"]
    # The state column takes nothing else.
    (result,) = store.run([lambda c: c.execute("UPDATE relationships SET state = 'maybe' WHERE id = 'acme:r2'")])
    assert isinstance(result, sqlite3.IntegrityError)


def test_has_unsettled_sees_a_relationships_waiting_rows_only(store):
    store.write([record_ops.Reserve("acme:r0", [record(0), record(1)])])
    assert store.has_unsettled("acme:r0") and not store.has_unsettled("acme:r1")
    store.write([record_ops.settle("acme:r0", [(0, 0)], 1)])
    assert store.has_unsettled("acme:r0")
    store.write([record_ops.settle("acme:r0", [(1, 1)], 2)])
    assert not store.has_unsettled("acme:r0") and not store.has_unsettled("acme:nope")


def test_an_op_that_raises_unexpectedly_fails_alone_and_the_others_of_its_transaction_commit(store, caplog):
    from pacspace.errors import PacspaceError

    def broken(conn):  # type: ignore[no-untyped-def]
        conn.execute("INSERT INTO parties (name, role, token_hash, created_at) VALUES ('half', 'provider', x'00', 1)")
        return [][0]

    with caplog.at_level("ERROR", logger="pacspace.storage"):
        results = store.write([record_ops.Reserve("acme:r0", [record(0)]), broken, record_ops.Reserve("acme:r1", [record(0)])])
        (alone,) = store.write([broken])
    assert results[0] is None and results[2] is None
    for failed in (results[1], alone):
        assert isinstance(failed, PacspaceError) and failed.http_status == 500 and isinstance(failed.__cause__, IndexError)
    assert [r.seq for r in store.unsettled_of("acme:r0")] == [0] and [r.seq for r in store.unsettled_of("acme:r1")] == [0]
    assert store.party("half") is None  # the failed op's own write was rolled back
    assert caplog.text.count("IndexError") == 2  # logged once each


def test_an_empty_group_is_refused_as_malformed_and_its_neighbours_are_stored(store):
    (result,) = store.write([record_ops.ReserveMany([("acme:r0", []), ("acme:r1", [record(0)])])])
    assert isinstance(result[0], MalformedInput) and result[1] is None
    assert [r.seq for r in store.unsettled_of("acme:r1")] == [0]
