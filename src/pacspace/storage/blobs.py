"""Records' sealed blobs in the object store (``--objects s3://...``): what is copied there, when, and how what
comes back is checked.

A record's blob is written into its PostgreSQL row with the record (storage/pg_records.py), so an append never
waits on the store. Once the record is settled (in the log, acknowledged), the blob is immutable and never
deleted, and it moves to the store: the database keeps the row (its tag and ``ct_hash``) and gives up the bytes.

Each blob is one object, ``blob/<hex ct_hash>``: named by the SHA-256 of its bytes, which the row holds and
the log's entry commits to. The store is untrusted, as for tiles: what it gives back is served only if it
hashes to the row's ``ct_hash`` (ObjectCorrupt otherwise, and nothing is served). The name tells a reader of
the bucket nothing the public log does not (its entries carry every ``ct_hash``), and the bytes are sealed to
the relationship's parties. Two records with the same bytes share one object.

The mirror runs in the sequencing serve, off the commit path, a round at a time (storage/mirroring.py), once
the bucket at this process's endpoint carries the log's mark (objects.check_mark: blobs never move into another
store than the one every other process reads):

1. Read up to ROUND_BLOBS settled records whose blob is still in their row, lowest ``blob_id`` first, but for
   those set aside. An unsettled record's blob stays in its row: the row may yet be dropped.
2. Put each blob, if absent (``If-None-Match: *``), and read it back: the store must hold exactly the bytes it
   was given (a "200" is not proof). A blob the store holds other bytes for, or one whose row does not match
   its ``ct_hash``, is set aside for SET_ASIDE seconds and logged: it stays in its row, and the others move on.
3. In one transaction, empty the rows of the blobs the store holds. A crash before COMMIT repeats the round
   from step 1; the puts are idempotent. After COMMIT the store holds the only copy.

A store that is down leaves the blobs in their rows, readable as before, and the next round tries again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import ObjectCorrupt, UntrustedState
from .mirroring import MirrorThread, gauges
from .objects import check_mark, put_object
from .record_values import StoredRecord
from .s3 import S3Bucket, open_bucket

log = logging.getLogger("pacspace.storage")
T = TypeVar("T")

ROUND_BLOBS = 512
# Requests to the store in flight at once, for a round's puts and for a page of records read back.
PARALLEL = 8
SET_ASIDE = 300.0
MAX_SET_ASIDE = 10_000
# The rows whose blob the mirror has yet to move (storage/migrations.py, version 4).
INLINE_INDEX = "CREATE INDEX IF NOT EXISTS records_inline ON records (blob_id) WHERE blob IS NOT NULL"


@dataclass(frozen=True)
class InlineBlob:
    blob_id: int
    ct_hash: bytes
    blob: bytes


class BlobRows(Protocol):
    """What the blob mirror reads and writes in the database (PostgresBlobs implements it)."""

    def inline_blobs(self, limit: int, skip: Sequence[int]) -> list[InlineBlob]:
        """Up to ``limit`` settled records whose blob is still in their row, but for ``skip``, lowest blob_id first."""
        ...

    def offload_blobs(self, blob_ids: Sequence[int]) -> int:
        """Empty these rows' blob, in one transaction, durable once it returns; how many it emptied."""
        ...

    def store_mark(self) -> str | None:
        """The mark the log's object store was given (objects.claim_mark), if it was given one yet."""
        ...


def blob_key(ct_hash: bytes) -> str:
    return "blob/" + ct_hash.hex()


def read_blobs(bucket: S3Bucket, ct_hashes: Sequence[bytes], pool: ThreadPoolExecutor | None = None, *,
               check: bool = True) -> list[bytes | None]:
    """The blobs of these ct_hashes from the store, each checked against its hash: ObjectCorrupt for one that is
    missing or holds other bytes (never served; the object's name is logged, not told to the client),
    ObjectStoreFailed if the store does not answer. Unchecked (``check=False``, for fsck, which reports each):
    as the store holds them, None for one it does not."""

    def one(ct_hash: bytes) -> bytes | None:
        data = bucket.get(blob_key(ct_hash))
        if not check:
            return data
        if data is None or hashlib.sha256(data).digest() != ct_hash:
            what = "is missing" if data is None else "does not hold the record's blob (tampered with or damaged)"
            log.error("%s/%s %s: it is not served (restore it from a backup of the bucket)", bucket,
                      blob_key(ct_hash), what)
            raise ObjectCorrupt("a record's blob in the log's object store is missing or damaged; it is not served")
        return data

    if pool is None or len(ct_hashes) < 2:
        return [one(h) for h in ct_hashes]
    return list(pool.map(one, ct_hashes))


class BlobMirror(MirrorThread):
    """Moves settled records' blobs from their rows to the store (the steps above). Only the sequencer runs one."""

    what = "sealed blobs"

    def __init__(self, bucket: S3Bucket, rows: BlobRows) -> None:
        super().__init__(bucket)
        self.rows = rows
        self.moved = 0  # blobs this mirror moved since it started
        self._aside: dict[int, float] = {}  # blob_id -> until when it is set aside
        self._pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="pacspace-blob-put")

    def stop(self) -> None:
        super().stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def check_store(self) -> None:
        check_mark(self.bucket, self.rows.store_mark())

    def run_round(self) -> bool:
        """One round (steps 1-3); whether more blobs may be waiting."""
        now = time.monotonic()
        self._aside = {k: until for k, until in self._aside.items() if until > now}
        inline = self.rows.inline_blobs(ROUND_BLOBS, list(self._aside))
        if not inline or self.stopping:
            return False
        whole = [row for row in inline if self._matches(row)]
        unique = list({row.ct_hash: row for row in whole}.values())  # records with the same bytes: one object
        held = {row.ct_hash for row, ok in zip(unique, self._pool.map(self._put, unique)) if ok}
        if self.stopping:
            return False
        done = [row.blob_id for row in whole if row.ct_hash in held]
        self.moved += self.rows.offload_blobs(done) if done else 0
        return len(inline) == ROUND_BLOBS and bool(done)

    def _matches(self, row: InlineBlob) -> bool:
        if hashlib.sha256(row.blob).digest() == row.ct_hash:
            return True
        self._set_aside(row, "in the database does not match its ct_hash (see `pacspace fsck`)")
        return False

    def _put(self, row: InlineBlob) -> bool:
        """Step 2 for one blob: whether the store now holds it. A store that fails raises (the round fails)."""
        if self.stopping:
            return False
        key = blob_key(row.ct_hash)
        try:
            put_object(self.bucket, key, row.blob)
        except ObjectCorrupt:
            self._set_aside(row, f"is not put: {self.bucket}/{key} holds other bytes, which are not overwritten")
            return False
        if self.bucket.get(key) != row.blob:
            self._set_aside(row, f"is not moved: {self.bucket}/{key} does not hold what was put there")
            return False
        return True

    def _set_aside(self, row: InlineBlob, why: str) -> None:
        if len(self._aside) < MAX_SET_ASIDE:
            self._aside[row.blob_id] = time.monotonic() + SET_ASIDE
        log.error("record blob %d %s; it stays in the database, and is tried again in %.0f s", row.blob_id, why,
                  SET_ASIDE)

    def metrics_text(self) -> str:
        return gauges([("pacspace_blobs_moved", "Sealed blobs this sequencer moved to the object store.", self.moved),
                       ("pacspace_blobs_set_aside", "Sealed blobs the store did not take (see the log).",
                        len(self._aside)),
                       ("pacspace_blobs_failing", "1 while rounds of the sealed blobs' mirror fail.",
                        int(self.failing))])


class PostgresBlobs:
    """The blobs of the records in a PostgreSQL database whose log has an object store: read back from there,
    checked, and moved there (the sequencer's mirror). ``store_url`` looks up the store the log recorded."""

    def __init__(self, url: str, where: str, store_url: Callable[[], str | None]) -> None:
        self._url = url
        self._where = where
        self._store_url = store_url
        self._lock = threading.Lock()
        self._bucket: S3Bucket | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._mirror: BlobMirror | None = None
        self._conn: Any = None  # the mirror's connection, used by its thread alone

    def close(self) -> None:
        if self._mirror is not None:
            self._mirror.stop()
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
        if self._conn is not None:
            self._conn.close()

    def fill(self, records: list[StoredRecord], check: bool = True) -> list[StoredRecord]:
        """The records with the blobs the store holds for them read in (their rows hold NULL), checked (read_blobs;
        unchecked for fsck, which checks each itself)."""
        moved = [i for i, rec in enumerate(records) if rec.blob is None and rec.index is not None]
        if not moved:
            return records
        bucket, pool = self._reader()
        blobs = read_blobs(bucket, [records[i].ct_hash for i in moved], pool, check=check)
        for i, blob in zip(moved, blobs):
            records[i] = dataclasses.replace(records[i], blob=blob)
        return records

    def _reader(self) -> tuple[S3Bucket, ThreadPoolExecutor]:
        with self._lock:
            if self._bucket is None:
                url = self._store_url()
                if url is None:
                    raise UntrustedState(f"{self._where}: records whose blobs are in an object store, but the log has none")
                self._bucket = open_bucket(url)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="pacspace-blob-get")
            return self._bucket, self._pool

    def start_mirror(self) -> None:
        """In the sequencing serve, before it takes requests: start moving settled blobs, if the log has a store."""
        from .pgconnect import connect, require_durable

        url = self._store_url()
        if url is None or self._mirror is not None:
            return
        bucket = open_bucket(url)
        conn = connect(self._url, "pacspace blobs")
        try:
            require_durable(conn, self._where)
            # Building it over a large table holds writes off for a moment, once: before requests come in.
            conn.execute(INLINE_INDEX)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._mirror = BlobMirror(bucket, self)
        self._mirror.start()

    def metrics_text(self) -> str:
        return "" if self._mirror is None else self._mirror.metrics_text()

    def _run(self, use: Callable[[Any], T]) -> T:
        from .pgconnect import connect, require_durable

        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self._url, "pacspace blobs")
            require_durable(self._conn, self._where)
        with self._conn.transaction():
            return use(self._conn)

    def inline_blobs(self, limit: int, skip: Sequence[int]) -> list[InlineBlob]:
        rows = self._run(lambda conn: conn.execute(
            "SELECT r.blob_id, r.ct_hash, r.blob FROM records r JOIN settled s ON s.blob_id = r.blob_id "
            "WHERE r.blob IS NOT NULL AND r.blob_id <> ALL(%b::bigint[]) ORDER BY r.blob_id LIMIT %s",
            (list(skip), limit)).fetchall())
        return [InlineBlob(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]

    def offload_blobs(self, blob_ids: Sequence[int]) -> int:
        return self._run(lambda conn: int(conn.execute(
            "UPDATE records SET blob = NULL WHERE blob_id = ANY(%b::bigint[]) AND blob IS NOT NULL",
            (list(blob_ids),)).rowcount))

    def store_mark(self) -> str | None:
        row = self._run(lambda conn: conn.execute("SELECT mark FROM objects").fetchone())
        return None if row is None or row[0] is None else str(row[0])


if TYPE_CHECKING:
    def _implements(blobs: PostgresBlobs) -> None:
        _rows: BlobRows = blobs
