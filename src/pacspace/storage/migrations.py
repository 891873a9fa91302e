"""The PostgreSQL schema, as numbered migrations applied in order, each once, each in its own transaction.

``pacspace init --database URL`` applies every migration this version knows, and so does the log's writer
(``serve``) when it opens a database of an older pacspace, before anything reads it. Every process refuses a
database whose schema is newer than it knows (an older pacspace must not write rows it does not understand),
and a reader (an HTTP worker, fsck) one that is older. Migrations only ever get added to the end of
``MIGRATIONS``: a released one is never edited.

Pure data and two functions over a DB-API-shaped connection; psycopg is imported by storage/postgres.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import UntrustedState

# pg_advisory_xact_lock key for migrations: two inits at once apply each migration once.
MIGRATION_LOCK = 0x7061_6373_7061_6365  # "pacspace"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the log: tiles, entry bundles, checkpoints, lookups by leaf hash and by tag", """
        CREATE TABLE log_meta (key text PRIMARY KEY, value text NOT NULL);
        -- One row: the size of the largest committed checkpoint. A commit compare-and-swaps it.
        CREATE TABLE log_head (one boolean PRIMARY KEY DEFAULT true CHECK (one), size bigint NOT NULL);
        CREATE TABLE tiles (
            level smallint NOT NULL,
            n bigint NOT NULL,
            hashes bytea NOT NULL,
            interior bytea NOT NULL,
            PRIMARY KEY (level, n)
        );
        CREATE TABLE bundles (n bigint PRIMARY KEY, data bytea NOT NULL);
        CREATE TABLE checkpoints (size bigint PRIMARY KEY, note bytea NOT NULL);
        -- Whole hashes and tags, not prefixes: tags are chosen by clients, who must not make lookups collide.
        CREATE TABLE leaf_index (leaf_hash bytea NOT NULL, idx bigint NOT NULL);
        CREATE INDEX leaf_index_hash ON leaf_index (leaf_hash);
        CREATE TABLE tag_index (tag bytea NOT NULL, idx bigint NOT NULL);
        CREATE INDEX tag_index_tag ON tag_index (tag);
    """),
    Migration(2, "an object store for tiles and entry bundles (--objects)", """
        -- At most one row: the store (s3://BUCKET[/PREFIX]) and the tree size it holds every object of. The
        -- full bundles below that size are no longer in ``bundles`` (storage/objects.py).
        CREATE TABLE objects (
            one boolean PRIMARY KEY DEFAULT true CHECK (one),
            url text NOT NULL,
            size bigint NOT NULL DEFAULT 0
        );
    """),
)
LATEST = MIGRATIONS[-1].version


class Cursorish(Protocol):
    def execute(self, query: Any, params: Any = ...) -> Any: ...


def schema_version(conn: Cursorish) -> int:
    """The database's applied schema version; 0 for a database pacspace never initialised."""
    exists = conn.execute("SELECT to_regclass('pacspace_schema') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    row = conn.execute("SELECT max(version) FROM pacspace_schema").fetchone()
    return int(row[0] or 0)


def require_current(conn: Cursorish, where: str) -> None:
    """Refuse a database this version cannot trust to understand: newer, older, or not pacspace's."""
    version = schema_version(conn)
    if version > LATEST:
        raise UntrustedState(f"{where}: the database's schema is version {version}, newer than this pacspace "
                             f"knows ({LATEST}): upgrade pacspace")
    if version == 0:
        raise UntrustedState(f"{where}: no pacspace log in this database (run `pacspace init --database ...`)")
    if version < LATEST:
        raise UntrustedState(f"{where}: the database's schema is version {version}; start `pacspace serve "
                             f"--database ...` of this version (the writer migrates it to {LATEST}) first")


def migrate(conn: Cursorish) -> list[Migration]:
    """Apply the migrations the database lacks, in order, under an advisory lock; the ones applied.

    The caller runs this inside one transaction: all of it, or none of it.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    conn.execute("CREATE TABLE IF NOT EXISTS pacspace_schema "
                 "(version integer PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
    version = schema_version(conn)
    if version > LATEST:
        raise UntrustedState(f"the database's schema is version {version}, newer than this pacspace knows ({LATEST})")
    applied = []
    for migration in MIGRATIONS:
        if migration.version > version:
            conn.execute(migration.sql)
            conn.execute("INSERT INTO pacspace_schema (version, description) VALUES (%s, %s)",
                         (migration.version, migration.description))
            applied.append(migration)
    return applied
