"""The witness's state: per log origin, the latest checkpoint it cosigned, in ``<data>/witness.db``, or in
PostgreSQL (``witness serve --database``), where several witness processes of one key can share it."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..witness import Latest
from .transaction import write_transaction

WITNESS_DB = "witness.db"
# pg_advisory_xact_lock's first key for an origin's row ("pcsw"); the second is hashtext(origin).
ORIGIN_LOCKS = 0x7063_7377


class WitnessState(Protocol):
    def close(self) -> None: ...

    def latest(self, origin: str) -> Latest | None: ...

    def advance(self, origin: str, check: Callable[[Latest | None], Latest]) -> Latest:
        """Read the origin's state, let ``check`` decide (raising to refuse), and store its answer: atomically,
        and durably before it returns (the witness answers only after)."""
        ...

    def rewrite(self, update: Callable[[str, Latest], bytes | None]) -> int:
        """Replace each origin's stored note by ``update(origin, latest)`` where it returns one; how many changed."""
        ...


class WitnessStore:
    """Durable once ``advance`` returns (WAL, synchronous=FULL): the witness answers only after that."""

    def __init__(self, data_dir: Path) -> None:
        self._conn = sqlite3.connect(data_dir / WITNESS_DB, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS latest (origin TEXT PRIMARY KEY, size INTEGER NOT NULL, "
            "root BLOB NOT NULL, note BLOB NOT NULL)"
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        self._conn.close()

    def latest(self, origin: str) -> Latest | None:
        with self._lock:
            row = self._conn.execute("SELECT size, root, note FROM latest WHERE origin = ?", (origin,)).fetchone()
        return None if row is None else Latest(row[0], bytes(row[1]), bytes(row[2]))

    def advance(self, origin: str, check: Callable[[Latest | None], Latest]) -> Latest:
        """Read the origin's state, let ``check`` decide (raising to refuse), and store its answer: atomically.

        The read and the write happen in one write transaction, so two concurrent
        requests can never roll the state back (C2SP tlog-witness's race).
        """
        with self._lock, write_transaction(self._conn) as conn:
            row = conn.execute("SELECT size, root, note FROM latest WHERE origin = ?", (origin,)).fetchone()
            current = None if row is None else Latest(row[0], bytes(row[1]), bytes(row[2]))
            new = check(current)
            conn.execute(
                "INSERT OR REPLACE INTO latest (origin, size, root, note) VALUES (?, ?, ?, ?)",
                (origin, new.size, new.root_hash, new.note),
            )
        return new

    def rewrite(self, update: Callable[[str, Latest], bytes | None]) -> int:
        """Replace each origin's stored note by ``update(origin, latest)`` where it returns one; how many changed."""
        changed = 0
        with self._lock, write_transaction(self._conn) as conn:
            rows = conn.execute("SELECT origin, size, root, note FROM latest").fetchall()
            for origin, size, root, note in rows:
                new = update(origin, Latest(size, bytes(root), bytes(note)))
                if new is not None:
                    conn.execute("UPDATE latest SET note = ? WHERE origin = ?", (new, origin))
                    changed += 1
        return changed


class PostgresWitnessStore:
    """The same contract in a PostgreSQL database. ``advance`` holds the origin's advisory lock for its transaction,
    so two requests to two witness processes sharing the database never roll its state back. The table is the
    witness's alone (a witness's database need not hold a log), created at first use."""

    def __init__(self, url: str) -> None:
        from .database_url import redact
        from .pgconnect import require_durable

        self._url = url
        self._where = redact(url)
        self._conn = self._connect()
        self._lock = threading.Lock()
        try:
            require_durable(self._conn, self._where)
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (ORIGIN_LOCKS,))
                self._conn.execute("CREATE TABLE IF NOT EXISTS witness_latest (origin text PRIMARY KEY, "
                                   "size bigint NOT NULL, root bytea NOT NULL, note bytea NOT NULL)")
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def _connect(self) -> Any:
        from .pgconnect import connect

        return connect(self._url, "pacspace witness")

    def _run(self, use: Callable[[Any], Latest | int | None]) -> Any:
        """``use`` in one transaction; a connection the server dropped (a restart) is replaced once first."""
        import psycopg

        from ..errors import DatabaseUnavailable
        from .pgconnect import first_line

        with self._lock:
            for attempt in (1, 2):
                if self._conn.closed or self._conn.broken:
                    self._conn = self._connect()
                try:
                    with self._conn.transaction():
                        return use(self._conn)
                except psycopg.OperationalError as exc:
                    if attempt == 2 or not (self._conn.closed or self._conn.broken):
                        raise DatabaseUnavailable(f"the witness's database did not answer: {first_line(exc)}") from None
            raise AssertionError("unreachable")

    def latest(self, origin: str) -> Latest | None:
        return self._run(lambda conn: _row(conn, origin))  # type: ignore[no-any-return]

    def advance(self, origin: str, check: Callable[[Latest | None], Latest]) -> Latest:
        def op(conn: Any) -> Latest:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (ORIGIN_LOCKS, origin))
            new = check(_row(conn, origin))
            conn.execute("INSERT INTO witness_latest VALUES (%s, %s, %s, %s) ON CONFLICT (origin) DO UPDATE SET "
                         "size = excluded.size, root = excluded.root, note = excluded.note",
                         (origin, new.size, new.root_hash, new.note))
            return new

        return self._run(op)  # type: ignore[no-any-return]

    def rewrite(self, update: Callable[[str, Latest], bytes | None]) -> int:
        def op(conn: Any) -> int:
            changed = 0
            for (origin,) in conn.execute("SELECT origin FROM witness_latest ORDER BY origin").fetchall():
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (ORIGIN_LOCKS, origin))
                held = _row(conn, origin)
                new = None if held is None else update(origin, held)
                if new is not None:
                    conn.execute("UPDATE witness_latest SET note = %s WHERE origin = %s", (new, origin))
                    changed += 1
            return changed

        return self._run(op)  # type: ignore[no-any-return]


def _row(conn: Any, origin: str) -> Latest | None:
    row = conn.execute("SELECT size, root, note FROM witness_latest WHERE origin = %s", (origin,)).fetchone()
    return None if row is None else Latest(int(row[0]), bytes(row[1]), bytes(row[2]))


if TYPE_CHECKING:
    def _implements(sqlite: WitnessStore, postgres: PostgresWitnessStore) -> None:
        _a: WitnessState = sqlite
        _b: WitnessState = postgres
