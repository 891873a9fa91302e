"""The witness's state in PostgreSQL (``pacspace witness serve --database``): storage/witness.py's contract, shared
by several witness processes of one key, on several machines."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import psycopg

from ..errors import DatabaseUnavailable, UntrustedState
from ..witness import Latest
from .database_url import redact
from .pgconnect import Connection, connect, first_line, require_durable

log = logging.getLogger("pacspace.witness")
T = TypeVar("T")

# pg_advisory_xact_lock's first key for an origin ("pcsw"); the second is hashtext(origin).
ORIGIN_LOCKS = 0x7063_7377
LOCK_TIMEOUT = "10s"


class PostgresWitnessStore:
    """``advance`` holds its origin's advisory lock from reading the state to committing the new one (with
    ``synchronous_commit`` on), so two requests through two processes are decided one after the other, and the
    state never goes back. The table is the witness's alone (a witness's database need not hold a log), made at
    first use."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._where = redact(url)
        self._lock = threading.Lock()
        self._conn = self._open()
        try:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (ORIGIN_LOCKS,))
                self._conn.execute("CREATE TABLE IF NOT EXISTS witness_latest (origin text PRIMARY KEY, "
                                   "size bigint NOT NULL, root bytea NOT NULL, note bytea NOT NULL)")
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> Connection:
        """A durable connection; a process whose lock waits on another's (a hung peer) gives up after
        LOCK_TIMEOUT rather than holding every origin's requests."""
        conn = connect(self._url, "pacspace witness")
        try:
            require_durable(conn, self._where)
            conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
            conn.execute("SET idle_in_transaction_session_timeout = '30s'")
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        self._conn.close()

    def _run(self, use: Callable[[Connection], T]) -> T:
        """``use`` in one transaction. A connection the server dropped (a restart) is replaced, and ``use`` run
        again: if only a COMMIT's answer was lost, the state already advanced, and the request is refused 409
        with the new size, which the log then asks with. The database's details go to the log, not the client."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn.closed or self._conn.broken:
                        self._conn = self._open()
                    with self._conn.transaction():
                        return use(self._conn)
                except (psycopg.OperationalError, UntrustedState) as exc:
                    if attempt == 1 and (self._conn.closed or self._conn.broken):
                        continue
                    log.warning("the witness's database %s did not answer: %s", self._where, first_line(exc))
                    raise DatabaseUnavailable("the witness's database did not answer; nothing was cosigned: retry") from None
            raise AssertionError("unreachable")

    def latest(self, origin: str) -> Latest | None:
        return self._run(lambda conn: _row(conn, origin))

    def advance(self, origin: str, check: Callable[[Latest | None], Latest]) -> Latest:
        def op(conn: Connection) -> Latest:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (ORIGIN_LOCKS, origin))
            new = check(_row(conn, origin))
            conn.execute("INSERT INTO witness_latest (origin, size, root, note) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root, "
                         "note = excluded.note", (origin, new.size, new.root_hash, new.note))
            return new

        return self._run(op)

    def rewrite(self, update: Callable[[str, Latest], bytes | None]) -> int:
        def op(conn: Connection) -> int:
            changed = 0
            for (origin,) in conn.execute("SELECT origin FROM witness_latest ORDER BY origin").fetchall():
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (ORIGIN_LOCKS, origin))
                held = _row(conn, origin)
                new = None if held is None else update(origin, held)
                if new is not None:
                    conn.execute("UPDATE witness_latest SET note = %s WHERE origin = %s", (new, origin))
                    changed += 1
            return changed

        return self._run(op)


def _row(conn: Connection, origin: str) -> Latest | None:
    row = conn.execute("SELECT size, root, note FROM witness_latest WHERE origin = %s", (origin,)).fetchone()
    return None if row is None else Latest(int(row[0]), bytes(row[1]), bytes(row[2]))


if TYPE_CHECKING:
    from .witness import WitnessState

    def _implements(store: PostgresWitnessStore) -> None:
        _state: WitnessState = store
