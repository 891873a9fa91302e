"""A log's data directory: its key, its database, its write lock, and the trust check at start.

Layout of ``<data>/``:

- ``log.key``: the log's Ed25519 note private key (``PRIVATE+KEY+...``), mode 0600;
- ``log.db``: the SQLite database (storage/sqlite.py), with ``-wal`` and ``-shm`` beside it;
- ``lock``: held with flock by the one process that writes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .checkpoint import Checkpoint, SignedCheckpoint, check_origin, open_checkpoint, sign_checkpoint
from .durable import fsync_dir, write_new_file
from .errors import LogExists, LogLocked, LogNotFound, MalformedInput, MalformedNote, PacspaceError, UntrustedState
from .merkle import EMPTY_ROOT, leaf_hash
from .note import NoteSigner
from .storage.database_url import redact
from .storage.base import RecordTables
from .storage.logtables import LogTables
from .storage.records import RECORDS_NAME, RecordStore
from .storage.sqlite import DB_NAME, SqliteLog
from .tiles import TILE_WIDTH, iter_bundle, root_from_edge

log = logging.getLogger("pacspace.storage")

KEY_NAME = "log.key"
# With `--database`: the (password-free) URL of the database whose log this directory's key signs; while the
# log is being created there, under the pending name (_init_in_database).
DATABASE_NAME = "database"
PENDING_NAME = "database.pending"
LOCK_NAME = "lock"
DEFAULT_ORIGIN = "localhost/pacspace"
# tlog-checkpoint: the origin is a schema-less URL; we keep to URL-safe characters.
_ORIGIN = re.compile(r"[A-Za-z0-9._~:/@!$&'()*,;=%-]{1,255}")


@dataclass(frozen=True)
class LogState:
    """The trusted tip of the log: owned by the sequencer once it runs.

    ``edge`` holds each tile level's partial tile; ``edge_entries`` the entries
    of the partial entry bundle. Together they are O(log n) in size.
    """

    checkpoint: SignedCheckpoint
    edge: dict[int, list[bytes]]
    edge_entries: list[bytes]

    @property
    def size(self) -> int:
        return self.checkpoint.size


def validate_origin(origin: str) -> str:
    if not _ORIGIN.fullmatch(origin) or "+" in origin or "://" in origin:
        raise MalformedNote(
            f"invalid origin {origin!r}: use a schema-less URL such as example.com/billing-log"
        )
    check_origin(origin)
    return origin


def init_log(data_dir: Path, origin: str, timestamp: int, database: str | None = None) -> NoteSigner:
    """Create a new log: key file (0600), database, and the signed size-0 checkpoint.

    Refuses with LogExists if the directory already holds a database. Holds the
    write lock throughout, so two first runs cannot both create a log. A crash
    part-way leaves at most a key without a database: nothing signed with it was
    ever published, so the next ``init`` (or first ``serve``) completes the log
    with that key, if its name is the origin asked for.
    """
    validate_origin(origin)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = WriteLock(data_dir)
    try:
        if (data_dir / DB_NAME).exists():
            raise LogExists(f"a log already exists at {data_dir}; refusing to touch it")
        for mark in (data_dir / DATABASE_NAME, data_dir / PENDING_NAME):
            if mark.exists() and (database is None or mark.name == DATABASE_NAME):
                raise LogExists(f"{data_dir} already has its log, created in {mark.read_text().strip()} (`pacspace "
                                "serve` runs it); if that database lost it, restore it from a backup: creating it "
                                "again would sign a second history with the same key")
        new_key = not (data_dir / KEY_NAME).exists()
        if not new_key:
            signer = load_signer(data_dir)
            if signer.name != origin:
                raise LogExists(
                    f"{data_dir} holds the key of an unfinished log named {signer.name!r}; "
                    f"use --origin {signer.name} or remove {data_dir / KEY_NAME}"
                )
        else:
            signer = NoteSigner(origin, Ed25519PrivateKey.generate())
            write_new_file(data_dir / KEY_NAME, (signer.private_key_text() + "\n").encode(), mode=0o600)
        first = sign_checkpoint(Checkpoint(origin, 0, EMPTY_ROOT), signer, timestamp)
        if database is None:
            SqliteLog.create(data_dir, origin, first.format()).close()
        else:
            pending = (data_dir / PENDING_NAME).exists()
            try:
                _init_in_database(data_dir, database, signer, first.format())
            except LogExists:
                # Another log is there: the key made for this one signed nothing anyone saw, and goes, with the
                # mark, so that the directory is as it was (not a key that names a log no database holds).
                if new_key:
                    (data_dir / KEY_NAME).unlink()
                if not pending:
                    (data_dir / PENDING_NAME).unlink(missing_ok=True)
                fsync_dir(data_dir)
                raise
    finally:
        lock.close()
    return signer


def _init_in_database(data_dir: Path, database: str, signer: NoteSigner, first_checkpoint: bytes) -> None:
    """The log's tables in PostgreSQL, its key in ``data_dir``, marked with the database's URL (no password).

    Two steps, so that a log is created in a database once and only once:

    1. ``PENDING_NAME`` names the database before anything is created there. A crash before step 2 leaves
       it, and the next ``init`` (or first ``serve``) of the same database goes on: it creates the tables,
       or finds the ones this key created (its origin, its size-0 checkpoint) and keeps them.
    2. Once the tables are committed, the pending mark is renamed to ``DATABASE_NAME``. From then on, the
       directory's log is that database's, and nothing creates it again: a database that lost it must be
       restored, or it would sign a second history with the same key.
    """
    from .storage.postgres import PostgresLog

    pending = data_dir / PENDING_NAME
    if not pending.exists():
        write_new_file(pending, (redact(database) + "\n").encode(), mode=0o600)
    elif pending.read_text().strip() != redact(database):
        raise LogExists(f"{data_dir} is being created in {pending.read_text().strip()}, not {redact(database)}")
    try:
        PostgresLog.create(database, signer.name, first_checkpoint).close()
    except LogExists:
        held = PostgresLog(database, readonly=True)
        try:
            # This key's log: its origin, and a size-0 checkpoint this key signed (a crash after step 1's commit).
            open_checkpoint(held.checkpoint_at(0), signer.verifier)
            ours = held.origin == signer.name
        except PacspaceError:
            ours = False
        finally:
            held.close()
        if not ours:
            raise LogExists(f"{redact(database)} already holds a log ({held.origin}): a serve of it on another machine "
                            "runs with a copy of the data directory of the serve that created it (its log.key and "
                            "database files); a new log needs a database of its own") from None
    os.rename(pending, data_dir / DATABASE_NAME)
    fsync_dir(data_dir)


def has_log(data_dir: Path) -> bool:
    """Whether the directory holds a log, in log.db or marked as created in a database (its records are here)."""
    return (data_dir / DB_NAME).exists() or (data_dir / DATABASE_NAME).exists()


def log_exists(data_dir: Path, database: str | None = None) -> bool:
    """Whether the directory holds a complete log (a database, or the mark of one in PostgreSQL); a lone key is
    an unfinished init. Refuses (MalformedInput) a ``database`` that is not where the directory's log is."""
    from .errors import MalformedInput

    marked = (data_dir / DATABASE_NAME).exists()
    if database is None:
        for mark in (data_dir / DATABASE_NAME, data_dir / PENDING_NAME):
            if mark.exists():
                raise MalformedInput(f"the log of {data_dir} is in the database {mark.read_text().strip()}: give "
                                     "--database (or set PACSPACE_DATABASE)")
        return (data_dir / DB_NAME).exists()
    if (data_dir / DB_NAME).exists():
        raise MalformedInput(f"{data_dir} holds a SQLite log: leave out --database to serve it")
    if marked:
        where = (data_dir / DATABASE_NAME).read_text().strip()
        if where != redact(database):
            raise MalformedInput(f"the key in {data_dir} signs the log in {where}, not {redact(database)} (if the "
                                 f"database moved, write its new URL, without password, in {data_dir / DATABASE_NAME})")
    return marked


def load_signer(data_dir: Path) -> NoteSigner:
    path = data_dir / KEY_NAME
    if not path.exists():
        raise LogNotFound(f"no log key at {path} (run `pacspace init --data {data_dir}`)")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise UntrustedState(f"{path} is readable by others (mode {mode:o}); run chmod 600 {path}")
    try:
        return NoteSigner.from_private_key_text(path.read_text())
    except (MalformedNote, UnicodeDecodeError):
        raise UntrustedState(f"{path} does not hold a valid log key") from None


class WriteLock:
    """Exclusive flock on ``<data>/lock``: one writer per data directory. Released on close or exit."""

    def __init__(self, data_dir: Path) -> None:
        self._fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise LogLocked(f"another process is writing to {data_dir}") from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_log(data_dir: Path, database: str | None = None, *, readonly: bool = False,
             objects: str | None = None) -> LogTables:
    """The log's tables: in ``data_dir`` (SQLite), or in the PostgreSQL database at ``database``, with its tiles and
    bundles in the object store ``objects`` (s3://...) from now on if given (the database remembers it)."""
    if database is None:
        if objects is not None:
            raise MalformedInput("--objects needs --database: an object store holds the bundles of a log in PostgreSQL")
        log_exists(data_dir)  # refuses a directory whose log is in a database, saying to give --database
        return SqliteLog.open(data_dir, readonly=readonly)
    from .storage.postgres import PostgresLog

    return PostgresLog(database, readonly=readonly, objects=objects)


def open_records(data_dir: Path, database: str | None = None, *, readonly: bool = False,
                 epoch: int | None = None) -> RecordTables:
    """The recordation tables: records.db in ``data_dir``, or in the PostgreSQL database at ``database``.

    A records.db that an older pacspace left beside a log in a database must be moved in first
    (logmove.move_records, which ``serve`` and ``migrate`` run): until then it is refused here, so that
    nothing reads or writes records in two places. ``epoch``: the sequencer's (RecordTables.claim_epoch), for the
    HTTP workers of the serve that claimed it.
    """
    if database is None:
        return RecordStore(data_dir, readonly=readonly)
    if (data_dir / RECORDS_NAME).exists():
        raise UntrustedState(
            f"{data_dir / RECORDS_NAME} holds records that are not in the database yet: start `pacspace serve` "
            f"(or run `pacspace migrate --data {data_dir}`) with the same --database once, which moves them in"
        )
    from .storage.pg_records import PostgresRecordStore

    return PostgresRecordStore(database, readonly=readonly, epoch=epoch)


def load_state(store: LogTables, signer: NoteSigner) -> LogState:
    """Check that storage reproduces the latest checkpoint, and return the tip. O(log n) reads.

    Like Sunlight's LoadLog: the stored checkpoint must carry the log key's
    valid signature, the stored right-edge tiles must hash to its root, and no
    entry bundle may extend past it. Anything else raises UntrustedState and
    the log refuses to start.
    """
    if store.origin != signer.name:
        raise UntrustedState(f"database origin {store.origin!r} does not match the key's {signer.name!r}")
    try:
        checkpoint = open_checkpoint(store.latest_checkpoint(), signer.verifier)
    except (MalformedNote, UntrustedState) as exc:
        raise UntrustedState(f"the latest stored checkpoint is not valid: {exc}") from None
    except Exception as exc:
        raise UntrustedState(f"the latest stored checkpoint does not verify: {exc}") from None
    size = checkpoint.size
    edge = store.edge_tiles(size)
    if root_from_edge(size, edge) != checkpoint.root_hash:
        raise UntrustedState(f"stored tiles do not reproduce the root of the checkpoint at size {size}")
    last_bundle = store.max_bundle()
    expected_last = (size - 1) // TILE_WIDTH if size else None
    if last_bundle != expected_last:
        implied = "none" if expected_last is None else f"bundles up to {expected_last}"
        raise UntrustedState(
            f"stored entry bundles end at {last_bundle}, but the checkpoint at size {size} implies {implied}"
        )
    edge_entries: list[bytes] = []
    if size % TILE_WIDTH:
        data = store.read_bundle(size // TILE_WIDTH) or b""
        edge_entries = list(iter_bundle(data))
        if len(edge_entries) != size % TILE_WIDTH:
            raise UntrustedState("the partial entry bundle does not match the checkpoint size")
        # The next batch rewrites this bundle from these entries: they must be the ones the tiles hash.
        if [leaf_hash(e) for e in edge_entries] != edge[0]:
            raise UntrustedState("the partial entry bundle does not hash to the stored level-0 tile")
    # Derived data a crash may have left behind the log: re-derived from the verified tiles.
    store.catch_up_indexes(size)
    return LogState(checkpoint, edge, edge_entries)
