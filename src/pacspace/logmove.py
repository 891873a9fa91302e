"""Moving a log from its SQLite files to PostgreSQL (``pacspace migrate``), checked, with nothing lost.

The steps, with what a crash after each leaves:

1. Hold the data directory's write lock (no server writes meanwhile) and check the SQLite log as a server
   does when it starts: the latest checkpoint's signature, and its root from the stored tiles.
2. Copy every tile, bundle and checkpoint into the database, and build its lookups, in one transaction.
   A crash before COMMIT leaves the database as it was; the SQLite log is untouched.
3. Reopen the copy and check it the same way: the same latest checkpoint, reproduced by its tiles.
4. Mark the directory with the database (``DATABASE_NAME``). A crash between 2 and 4 leaves a full copy and
   no mark; the next run finds the database holding this very log (same origin, same latest checkpoint)
   and goes on from here.
5. Move the SQLite files aside, into ``sqlite-migrated/``, so that nothing serves them by mistake. A crash
   part-way leaves some of them; the next run (the mark is there) moves the rest.
6. Move the recordation tables (records.db and its blob segments) the same way: :func:`move_records`.

:func:`move_records` also runs when ``serve --database`` starts on a directory an older pacspace left its
records.db in (it kept them there, beside a log in PostgreSQL). Its steps, under the directory's write lock:

1. Open records.db (bringing an older file to its current version) and read every row and blob, checking
   each blob against its ct_hash.
2. In one transaction, under the records writers' lock: if the database holds no party and no record,
   copy them all; if it holds exactly as many as records.db (a crash after this commit and before step 3),
   go on; otherwise refuse, naming both. A crash before COMMIT leaves the database as it was.
3. Move records.db, its lock and its blob segments into ``sqlite-migrated/``. A crash part-way leaves some of
   them; since the database holds the records then, the next run finds the counts equal and moves the rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import open_checkpoint
from .datadir import DATABASE_NAME, WriteLock, load_signer, load_state
from .durable import fsync_dir, write_new_file
from .errors import LogExists, LogNotFound, UntrustedState
from .storage.database_url import redact
from .storage.postgres import PostgresLog, Progress
from .storage.prefixindex import LEAF_INDEX_NAME, TAG_INDEX_NAME
from .storage.records import RECORDS_NAME, RecordStore
from .storage.segments import SEGMENTS_DIR
from .storage.sqlite import DB_NAME, SqliteLog
from .tiles import root_from_edge

BACKUP_NAME = "sqlite-migrated"
SQLITE_FILES = [name + suffix for name in (DB_NAME, LEAF_INDEX_NAME, TAG_INDEX_NAME) for suffix in ("", "-wal", "-shm")]
RECORDS_FILES = [RECORDS_NAME + suffix for suffix in ("", "-wal", "-shm", ".lock")] + [SEGMENTS_DIR]


@dataclass(frozen=True)
class Moved:
    origin: str
    size: int
    root_hex: str
    backup: Path
    records: int = 0


def move_to_database(data_dir: Path, database: str, progress: Progress | None = None) -> Moved:
    lock = WriteLock(data_dir)
    try:
        signer = load_signer(data_dir)
        marker = data_dir / DATABASE_NAME
        if marker.exists() and marker.read_text().strip() != redact(database):
            raise LogExists(f"the log of {data_dir} was moved to {marker.read_text().strip()} already")
        if not (data_dir / DB_NAME).exists():
            if marker.exists():
                return _finish(data_dir, database, progress)  # moved before; only files were left
            raise LogNotFound(f"no SQLite log in {data_dir}")
        # Step 1.
        source = SqliteLog.open(data_dir, readonly=True)
        try:
            latest = source.latest_checkpoint()
            checkpoint = open_checkpoint(latest, signer.verifier)
            if root_from_edge(checkpoint.size, source.edge_tiles(checkpoint.size)) != checkpoint.root_hash:
                raise UntrustedState(f"the tiles in {data_dir} do not reproduce the root of its latest checkpoint")
            # Step 2.
            try:
                PostgresLog.import_from(database, source, checkpoint.size, progress)
            except LogExists:
                copy = PostgresLog(database, readonly=True)
                try:
                    same = copy.origin == source.origin and copy.latest_checkpoint() == latest
                finally:
                    copy.close()
                if not same:
                    raise
        finally:
            source.close()
        # Steps 3 to 6.
        return _finish(data_dir, database, progress)
    finally:
        lock.close()


def _finish(data_dir: Path, database: str, progress: Progress | None) -> Moved:
    """Steps 3 to 6."""
    signer = load_signer(data_dir)
    target = PostgresLog(database, readonly=True)
    try:
        state = load_state(target, signer)
        origin = target.origin
    finally:
        target.close()
    marker = data_dir / DATABASE_NAME
    if not marker.exists():
        write_new_file(marker, (redact(database) + "\n").encode(), mode=0o600)
    backup = _move_aside(data_dir, SQLITE_FILES)
    records = move_records(data_dir, database, progress)
    return Moved(origin, state.size, state.checkpoint.root_hash.hex(), backup, records)


def _move_aside(data_dir: Path, names: list[str]) -> Path:
    backup = data_dir / BACKUP_NAME
    backup.mkdir(mode=0o700, exist_ok=True)
    for name in names:
        if (data_dir / name).exists():
            os.rename(data_dir / name, backup / name)
    fsync_dir(backup)
    fsync_dir(data_dir)
    return backup


def move_records(data_dir: Path, database: str, progress: Progress | None = None) -> int:
    """Move records.db (and its blobs) into the database; how many records it held (0: there was none).
    The caller holds the data directory's write lock. The steps are in the module's docstring."""
    if not (data_dir / RECORDS_NAME).exists():
        if any((data_dir / name).exists() for name in RECORDS_FILES):
            _move_aside(data_dir, RECORDS_FILES)  # a crash part-way through step 3 left these
        return 0
    from .storage.pg_records import PostgresRecordStore

    # Step 1.
    source = RecordStore(data_dir)
    try:
        count = PostgresRecordStore.import_from(database, source, progress)
    finally:
        source.close()
    # Step 3.
    _move_aside(data_dir, RECORDS_FILES)
    return count
