"""records.db's schema, its version (``PRAGMA user_version``) and the migrations between versions.

Version 2 gives each record a sequential id as it arrives, files its sealed
blob under that id, and never updates a record row: settling (recording the
record's log index) appends to ``settled`` by id and deletes from the small
``unsettled`` table. Version 1 keyed blobs by (relationship, seq) and rewrote
each record row to settle it: with a thousand relationships writing at once,
every insert and every settle landed on a different B-tree page, and a batch
of 2,000 records rewrote thousands of pages. Files of versions 2 and 3 used 8 KiB pages (a 1.4 KB blob
per 4 KiB page wasted most of each page).

Version 3 drops the unique index on all records' tags, whose random keys put a
page write per record into every transaction: the log's tag index keeps tags
unique now, off the write path (appending.TagGuard). Only the few records waiting
for the log keep a tag index (in ``unsettled``), and a unique index on the
settled log index, whose keys arrive in order, means no two records can claim
one entry. Measured in docs/performance.md.

Version 4 writes new blobs to append-only segment files (storage/segments.py),
not into the database: ``spans`` says where each lies. Blobs written before stay
in ``blobs``, so upgrading from 3 copies nothing. With the blobs out, new files
go back to 4 KiB pages: a transaction rewrites one page of the (relationship,
seq) index for each relationship it touches, and a smaller page is fewer bytes
written per record (docs/performance.md).

Version 5 adds a customer's consent to each relationship: ``state`` (pending,
accepted, declined), ``acceptance`` (the customer's Ed25519 signature over the
genesis entry, records/acceptance.py) and ``decided_at``. A provider can name
any customer; until that customer accepts, the relationship is an invitation
its monitor never follows, so a rogue provider's genesis cannot break it. New
relationships start pending. The columns are added in place: relationships
from before consent read as accepted, without a signature, and nothing is
copied.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from ..errors import UntrustedState
from .transaction import write_transaction

log = logging.getLogger("pacspace.storage")

SCHEMA_VERSION = 5
PAGE_SIZE = 4096

# Written once, never updated: the record's id (``blob_id``) is its arrival number and its blob's key.
_RECORDS = """CREATE TABLE IF NOT EXISTS {name} (
        relationship TEXT NOT NULL REFERENCES relationships(id),
        seq INTEGER NOT NULL,
        tag BLOB NOT NULL,
        ct_hash BLOB NOT NULL,
        blob_id INTEGER NOT NULL,
        PRIMARY KEY (relationship, seq)
    )"""
_BLOBS = "CREATE TABLE IF NOT EXISTS {name} (id INTEGER PRIMARY KEY, blob BLOB NOT NULL)"
# Records stored but not yet given their log index: a relationship's last ones while they await the
# log, so the table stays small. Settling moves a record from here to ``settled``. Found by id
# (through ``records``), or by scanning the few rows of one relationship. Two records waiting for
# the log never share a tag (the small table keeps its tag index in a few hot pages), so a
# crash can never leave two rows matching one entry.
_UNSETTLED = """CREATE TABLE IF NOT EXISTS {name} (
        blob_id INTEGER PRIMARY KEY,
        relationship TEXT NOT NULL,
        seq INTEGER NOT NULL,
        tag BLOB NOT NULL UNIQUE
    )"""
# Each settled record's log index and the size of the first checkpoint covering it, appended in
# the order the log sequenced them.
_SETTLED = """CREATE TABLE IF NOT EXISTS settled (
        blob_id INTEGER PRIMARY KEY,
        idx INTEGER NOT NULL,
        checkpoint_size INTEGER NOT NULL
    )"""
# Where each blob written since version 4 lies in the segment files: appended in blob_id order.
_SPANS = """CREATE TABLE IF NOT EXISTS spans (
        blob_id INTEGER PRIMARY KEY,
        segment INTEGER NOT NULL,
        start INTEGER NOT NULL,
        length INTEGER NOT NULL
    )"""
# A relationship's consent (version 5). The default makes every relationship from before consent accepted.
_CONSENT_COLUMNS = (
    "state TEXT NOT NULL DEFAULT 'accepted' CHECK (state IN ('pending', 'accepted', 'declined'))",
    "acceptance BLOB",
    "decided_at INTEGER",
)
_SETTLED_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS settled_idx ON settled(idx)"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS parties (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('provider', 'customer')),
        token_hash BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER,
        x25519 BLOB,
        ed25519 BLOB
    )""",
    """CREATE TABLE IF NOT EXISTS relationships (
        id TEXT PRIMARY KEY,
        provider TEXT NOT NULL REFERENCES parties(name),
        customer TEXT NOT NULL REFERENCES parties(name),
        cadence TEXT NOT NULL,
        billing_cycle TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        """ + ",\n        ".join(_CONSENT_COLUMNS) + """
    )""",
    "CREATE INDEX IF NOT EXISTS relationships_provider ON relationships(provider)",
    "CREATE INDEX IF NOT EXISTS relationships_customer ON relationships(customer)",
    """CREATE TABLE IF NOT EXISTS wraps (
        relationship TEXT NOT NULL REFERENCES relationships(id),
        reader TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        wrap BLOB NOT NULL,
        PRIMARY KEY (relationship, reader, epoch)
    )""",
    # Small rows, written once; the sealed blobs live apart, in arrival order: in ``blobs`` before version 4,
    # since then in the segment files (``spans``).
    _RECORDS.format(name="records"),
    _BLOBS.format(name="blobs"),
    _UNSETTLED.format(name="unsettled"),
    _SETTLED,
    _SETTLED_INDEX,
    _SPANS,
)


def stored_version(conn: sqlite3.Connection) -> int:
    """The file's schema version: 0 for a new file; files from before versioning (tables, user_version 0) are 1."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]:
        return 1
    if version == 2 and any(row[1] == "idx" for row in conn.execute("PRAGMA table_info(records)")):
        # A layout that existed only between two development commits (blob ids, but record rows
        # rewritten to settle); no release wrote it. Refused rather than misread.
        raise UntrustedState("records.db has a development layout of schema version 2 that this pacspace cannot read")
    return version


def check_readable(conn: sqlite3.Connection, path: Path) -> int:
    """The version of a file opened read-only; refuses one this pacspace cannot read as it is."""
    version = stored_version(conn)
    if version not in (0, SCHEMA_VERSION):
        raise UntrustedState(_mismatch(path, version))
    return version


def prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Bring a file opened for writing to SCHEMA_VERSION: create it, or migrate it, in one transaction."""
    version = stored_version(conn)
    if version > SCHEMA_VERSION:
        raise UntrustedState(_mismatch(path, version))
    if version == 0:
        # Only possible before the first table exists; an existing file keeps its page size.
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode = WAL")
    with write_transaction(conn):
        # Re-read under the write lock: another process may have migrated it.
        version = stored_version(conn)
        if version in (1, 2):
            (count,) = conn.execute("SELECT count(*) FROM records").fetchone()
            log.info(
                "upgrading %s from schema %d to %d (%d records); it is copied once, in one transaction",
                path, version, SCHEMA_VERSION, count,
            )
            started = time.monotonic()
            (_migrate_from_1 if version == 1 else _migrate_from_2)(conn)
            log.info("upgraded %s to schema %d in %.1f s", path, SCHEMA_VERSION, time.monotonic() - started)
        elif version == 3:
            log.info("upgrading %s from schema 3 to %d: new blobs go to segment files; nothing is copied", path, SCHEMA_VERSION)
        elif version == 4:
            log.info("upgrading %s from schema 4 to %d: relationships gain their consent; nothing is copied", path, SCHEMA_VERSION)
        for statement in SCHEMA:
            conn.execute(statement)
        if 0 < version < 5:
            _add_consent(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate_from_1(conn: sqlite3.Connection) -> None:
    """Blobs move from (relationship, seq) keys to sequential ids that the record rows point at."""
    conn.execute(_RECORDS.format(name="records_new"))
    conn.execute(_BLOBS.format(name="blobs_new"))
    conn.execute(_UNSETTLED.format(name="unsettled"))
    conn.execute(_SETTLED)
    conn.execute(
        "INSERT INTO blobs_new (id, blob) SELECT r.rowid, b.blob FROM records r "
        "JOIN blobs b ON b.relationship = r.relationship AND b.seq = r.seq ORDER BY r.rowid"
    )
    conn.execute(
        "INSERT INTO records_new (relationship, seq, tag, ct_hash, blob_id) "
        "SELECT relationship, seq, tag, ct_hash, rowid FROM records ORDER BY rowid"
    )
    conn.execute(
        "INSERT INTO settled (blob_id, idx, checkpoint_size) "
        "SELECT rowid, idx, checkpoint_size FROM records WHERE idx IS NOT NULL ORDER BY rowid"
    )
    conn.execute(
        "INSERT INTO unsettled (blob_id, relationship, seq, tag) "
        "SELECT rowid, relationship, seq, tag FROM records WHERE idx IS NULL"
    )
    (orphans,) = conn.execute("SELECT count(*) FROM records_new WHERE blob_id NOT IN (SELECT id FROM blobs_new)").fetchone()
    if orphans:
        # Never written by pacspace (a record and its blob were stored and dropped together): refuse, change nothing.
        raise UntrustedState(f"{orphans} records in records.db have no blob; nothing was migrated (see `pacspace fsck`)")
    conn.execute("DROP TABLE records")
    conn.execute("DROP TABLE blobs")
    conn.execute("ALTER TABLE records_new RENAME TO records")
    conn.execute("ALTER TABLE blobs_new RENAME TO blobs")
    _index_settled(conn)


def _migrate_from_2(conn: sqlite3.Connection) -> None:
    """The record and unsettled rows are copied into tables without the random-keyed unique indexes."""
    conn.execute(_RECORDS.format(name="records_new"))
    conn.execute(
        "INSERT INTO records_new (relationship, seq, tag, ct_hash, blob_id) "
        "SELECT relationship, seq, tag, ct_hash, blob_id FROM records ORDER BY rowid"
    )
    conn.execute(_UNSETTLED.format(name="unsettled_new"))
    conn.execute(
        "INSERT INTO unsettled_new (blob_id, relationship, seq, tag) SELECT u.blob_id, u.relationship, u.seq, r.tag "
        "FROM unsettled u JOIN records r ON r.relationship = u.relationship AND r.seq = u.seq ORDER BY u.blob_id"
    )
    conn.execute("DROP TABLE records")
    conn.execute("DROP TABLE unsettled")
    conn.execute("ALTER TABLE records_new RENAME TO records")
    conn.execute("ALTER TABLE unsettled_new RENAME TO unsettled")
    _index_settled(conn)


def _add_consent(conn: sqlite3.Connection) -> None:
    """Version 5's consent columns, added to the relationships table in place (any it has already are kept)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(relationships)")}
    for column in _CONSENT_COLUMNS:
        if column.split()[0] not in present:
            conn.execute(f"ALTER TABLE relationships ADD COLUMN {column}")


def _index_settled(conn: sqlite3.Connection) -> None:
    try:
        conn.execute(_SETTLED_INDEX)
    except sqlite3.IntegrityError:
        # Never written by pacspace (tags were unique, so no two records matched one entry): refuse, change nothing.
        raise UntrustedState(
            "two records in records.db are settled at the same log index; nothing was migrated (see `pacspace fsck`)"
        ) from None


def _mismatch(path: Path, version: int) -> str:
    if version < SCHEMA_VERSION:
        return (
            f"{path} has schema version {version}; this pacspace reads version {SCHEMA_VERSION}: "
            "start `pacspace serve` on it once to upgrade it"
        )
    return f"{path} has schema version {version}; this pacspace reads version {SCHEMA_VERSION}: run the pacspace that wrote it"
