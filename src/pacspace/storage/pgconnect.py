"""Connections to PostgreSQL for a log's tables (storage/postgres.py): each named in pg_stat_activity, each giving up on
a server that stops answering, and the writer's with durable settings and the writer's advisory lock.

The lock is held by the writer connection's session, so PostgreSQL releases it when the writer dies (kill -9
included). A writer that lost its connection may find its own earlier session still holding the lock (a link cut
on its side only, which the server may not notice for hours): that session, and only that one, is ended.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from ..errors import DatabaseUnreachable, UntrustedState, WriterElsewhere
from .database_url import redact

# pg_try_advisory_lock key of the log's one writer ("pacswrit").
WRITER_LOCK = 0x7061_6373_7772_6974
# How long the writer waits for a PostgreSQL that dropped its connection to take connections again.
RECONNECT_WAIT, RECONNECT_PAUSE = 30.0, 0.5
WRITER_NAME = "pacspace writer"  # the writer's application_name, as pg_stat_activity shows it
Connection = psycopg.Connection[tuple[Any, ...]]
SERVER_KEEPALIVES = "-c tcp_keepalives_idle=20 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=4 -c tcp_user_timeout=60000"
Session = tuple[int, Any]  # a PostgreSQL session: (pid, backend_start)


def connect(url: str, name: str = "pacspace") -> Connection:
    """A connection named ``name`` in pg_stat_activity: "pacspace" for reads, WRITER_NAME for the writer."""
    try:
        # A connection whose server vanished (a failover, a cut link) fails within a minute instead of hanging
        # forever: TCP keepalives while it is idle, and tcp_user_timeout while data it sent (a COMMIT) is
        # unacknowledged, which keepalives do not cover.
        # The server's side of the same: PostgreSQL ends the session of a client whose machine vanished (and with
        # it the writer's lock, for a standby to take over) in about 40 s, not its OS's default two hours.
        return psycopg.connect(url, autocommit=True, connect_timeout=10, application_name=name,
                               keepalives=1, keepalives_idle=20, keepalives_interval=5, keepalives_count=4,
                               tcp_user_timeout=60_000, options=SERVER_KEEPALIVES)
    except psycopg.Error as exc:
        raise DatabaseUnreachable(f"cannot connect to {redact(url)}: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """A driver error's first line (psycopg's go on with details and hints), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect_writer(url: str, previous: Session | None = None) -> tuple[Connection, Session]:
    """The writer's connection, with its session: durable settings checked, and the writer's lock held by the
    session (``previous``: this writer's session before its connection was lost, which may still hold it)."""
    conn = connect(url, WRITER_NAME)
    try:
        require_durable(conn, redact(url))
        # One writer per database, as the data directory's flock is one per directory: held by the write
        # connection's session, so PostgreSQL releases it when the writer dies (kill -9 included).
        if not take_writer_lock(conn, previous):
            raise WriterElsewhere(f"another process is the writer of the log in {redact(url)}")
        row = conn.execute("SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
        if row is None:
            raise UntrustedState(f"{redact(url)}: the writer's session is not in pg_stat_activity")
        return conn, (int(row[0]), row[1])
    except BaseException:
        conn.close()
        raise


def take_writer_lock(conn: Connection, previous: Session | None) -> bool:
    """Whether this session now holds the writer's lock. This writer's own earlier session may still hold it: a
    connection the client lost (a cut link, a reset) that the server has not noticed yet. That session is ended;
    PostgreSQL releases its lock only once its transaction, if one was in flight, has committed or rolled back,
    so what that transaction did is settled before this session writes."""
    if try_lock(conn):
        return True
    if previous is None:
        return False
    try:
        ended = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s AND "
                             "backend_start = %s", previous).fetchone()
    except psycopg.Error:  # not allowed to end it (another role): as if another process held the lock
        return False
    if ended is None or not ended[0]:
        return False  # that session is gone: another process holds the lock
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if try_lock(conn):
            return True
    return False


def writer_elsewhere(conn: Connection) -> bool:
    """Whether a session holds the writer's lock of this database's log now: read from pg_locks, never taken, so
    that a probe never stands in the way of a writer taking its lock back. pg_locks shows the whole server's
    locks, and another database on it may hold another log, whose writer takes the same lock number there."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        "AND classid = %s AND objid = %s "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        (WRITER_LOCK >> 32, WRITER_LOCK & 0xFFFF_FFFF),
    ).fetchone()
    return row is not None and bool(row[0])


def try_lock(conn: Connection) -> bool:
    held = conn.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK,)).fetchone()
    return held is not None and bool(held[0])


def connect_reader(url: str) -> Connection:
    conn = connect(url)
    # A read is a few index lookups: one that takes this long is stuck (a lock, a sick server), not slow.
    conn.execute("SET statement_timeout = '30s'")
    return conn


def require_durable(conn: Connection, where: str) -> None:
    fsync = conn.execute("SHOW fsync").fetchone()
    if fsync is None or fsync[0] != "on":
        raise UntrustedState(f"{where}: PostgreSQL runs with fsync off, so a committed record could be lost; "
                             "pacspace will not write there")
    sync = conn.execute("SHOW synchronous_commit").fetchone()
    if sync is None or sync[0] == "off":
        conn.execute("SET synchronous_commit = on")
