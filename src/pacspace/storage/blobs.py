"""Records' sealed blobs in the object store (``--objects s3://...``): what is copied there, when, and how what
comes back is checked.

A record's blob is written into its PostgreSQL row with the record (storage/pg_records.py), so an append never
waits on the store. Once the record is settled (in the log, acknowledged), the blob is immutable and never
deleted, and it moves to the store: the database keeps the row (its tag and ``ct_hash``) and, instead of the
bytes, where they are: the pack, and the blob's offset and length in it.

A pack is one object holding the blobs of one round, end to end, named ``blob/<hex SHA-256 of the pack>``: a
round cut short and made again with other rows names another object, never another version of one. A blob is
read back with a range request, and served only if it hashes to its row's ``ct_hash``, which the log's entry
commits to (ObjectCorrupt otherwise, and nothing is served): the store is untrusted, as for tiles. One object
a round, not one a blob: each request to the store costs the sequencer a signature and a round trip, and a
round's one PUT and one GET replace a thousand.

The mirror runs in the sequencing serve, off the commit path, a round at a time (storage/mirroring.py), once
the bucket at this process's endpoint carries the log's mark (objects.check_mark: blobs never move into another
store than the one every other process reads):

1. Read the lowest-``blob_id`` settled records whose blob is still in their row (up to ROUND_BLOBS, and
   PACK_BYTES of blobs), but for those set aside: a row whose blob does not match its ``ct_hash`` is set aside
   for SET_ASIDE seconds and logged, and stays. An unsettled record's blob stays in its row: the row may yet be
   dropped.
2. Put the pack, if absent (``If-None-Match: *``; other bytes under its name, a put cut short, are replaced:
   the name is the pack's hash), and read it back: the store must hold exactly the bytes it was given (a "200"
   is not proof).
3. In one transaction, replace those rows' blobs by their place in the pack. A crash before COMMIT repeats the
   round from step 1 (a pack no row names is garbage, never wrong). After COMMIT the store holds the only copy.

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
from .objects import RECORDED_MARK, blame_the_store, check_mark, put_object
from .record_values import StoredRecord, record_of
from .s3 import S3Bucket, open_bucket

log = logging.getLogger("pacspace.storage")
T = TypeVar("T")

ROUND_BLOBS = 1024
# A pack's bytes, at most (and one blob more): read back within s3.TIMEOUT from a store giving 0.2 MB/s.
PACK_BYTES = 2 << 20
# Requests to the store in flight at once, for a round's puts and for a page of records read back.
PARALLEL = 8
SET_ASIDE = 300.0
MAX_SET_ASIDE = 10_000
# A record's columns (record_values.record_of), then where its blob is if it moved to the store (pack, at, length).
RECORD_WITH_PLACE = "r.relationship, r.seq, r.tag, r.ct_hash, r.blob, s.idx, s.checkpoint_size, r.pack, r.pack_at, " \
    "r.pack_length"
# The rows whose blob the mirror has yet to move (storage/migrations.py, version 4).
INLINE_INDEX = "CREATE INDEX IF NOT EXISTS records_inline ON records (blob_id) WHERE blob IS NOT NULL"


@dataclass(frozen=True)
class InlineBlob:
    blob_id: int
    ct_hash: bytes
    blob: bytes


@dataclass(frozen=True)
class Place:
    """Where a moved blob is: its pack (the SHA-256 naming it), and its offset and length there."""

    pack: bytes
    at: int
    length: int


class BlobRows(Protocol):
    """What the blob mirror reads and writes in the database (PostgresBlobs implements it)."""

    def inline_blobs(self, limit: int, skip: Sequence[int]) -> list[InlineBlob]:
        """Up to ``limit`` settled records whose blob is still in their row, but for ``skip``, lowest blob_id first."""
        ...

    def offload_blobs(self, places: Sequence[tuple[int, Place]]) -> int:
        """Replace these rows' (blob_id) blobs by their places, in one transaction, durable once it returns; how
        many it changed."""
        ...

    def store_mark(self) -> str | None:
        """The mark the log's object store was given (objects.claim_mark), if it was given one yet."""
        ...


def pack_key(pack: bytes) -> str:
    return "blob/" + pack.hex()


def read_blobs(bucket: S3Bucket, wanted: Sequence[tuple[bytes, Place]], pool: ThreadPoolExecutor | None = None, *,
               check: bool = True) -> list[bytes | None]:
    """The blobs at these places, each checked against its ct_hash: ObjectCorrupt for one that is missing or is
    other bytes (never served; where it is goes to the log, not to the client), ObjectStoreFailed if the store
    does not answer. Unchecked (``check=False``, for fsck, which reports each): as the store holds them, None
    where it holds no pack."""

    def one(item: tuple[bytes, Place]) -> bytes | None:
        ct_hash, place = item
        data = bucket.get_range(pack_key(place.pack), place.at, place.length)
        if not check:
            return data
        if data is None or hashlib.sha256(data).digest() != ct_hash:
            what = "is missing" if data is None else "does not hold the record's blob (tampered with or damaged)"
            log.error("%s/%s %s at %d+%d: it is not served (restore it from a backup of the bucket)", bucket,
                      pack_key(place.pack), what, place.at, place.length)
            raise ObjectCorrupt("a record's blob in the log's object store is missing or damaged; it is not served")
        return data

    if pool is None or len(wanted) < 2:
        return [one(w) for w in wanted]
    return list(pool.map(one, wanted))


class BlobMirror(MirrorThread):
    """Moves settled records' blobs from their rows to the store (the steps above). Only the sequencer runs one."""

    what = "sealed blobs"

    def __init__(self, bucket: S3Bucket, rows: BlobRows) -> None:
        super().__init__(bucket)
        self.rows = rows
        self.moved = 0  # blobs this mirror moved since it started
        self._aside: dict[int, float] = {}  # blob_id -> until when it is set aside

    def check_store(self) -> bool:
        recorded = self.rows.store_mark()
        if recorded is None:
            return False  # the tiles' mirror, in this process, gives the bucket its mark first
        check_mark(self.bucket, recorded)
        return True

    def run_round(self) -> bool:
        """One round (steps 1-3); whether more blobs may be waiting."""
        now = time.monotonic()
        self._aside = {k: until for k, until in self._aside.items() if until > now}
        inline = self.rows.inline_blobs(ROUND_BLOBS, list(self._aside))
        if not inline or self.stopping:
            return False
        parts: list[bytes] = []
        placed: list[tuple[int, int, int]] = []
        size = 0
        for row in inline:
            if hashlib.sha256(row.blob).digest() != row.ct_hash:
                self._set_aside(row, "in the database does not match its ct_hash (see `pacspace fsck`)")
                continue
            if parts and size + len(row.blob) > PACK_BYTES:
                break
            placed.append((row.blob_id, size, len(row.blob)))
            parts.append(row.blob)
            size += len(row.blob)
        if not parts:
            return False  # every row read was set aside: the next round, a round interval later, reads past them
        name = self._put_pack(parts)
        if self.stopping:
            return False
        self.moved += self.rows.offload_blobs([(blob_id, Place(name, at, length)) for blob_id, at, length in placed])
        return len(inline) == ROUND_BLOBS or len(placed) < len(inline)

    def _put_pack(self, parts: list[bytes]) -> bytes:
        """Step 2: put the pack and read it back; its name. Other bytes under that name (a put of an earlier round
        cut short) are replaced: the name is the hash of the bytes, so only this pack's belong there."""
        pack = b"".join(parts)
        name = hashlib.sha256(pack).digest()
        put_object(self.bucket, pack_key(name), pack, named_by_hash=True)
        if self.bucket.get(pack_key(name)) != pack:
            raise ObjectCorrupt(f"{self.bucket}/{pack_key(name)} does not hold what was put there; its blobs stay "
                                "in the database")
        return name

    def _set_aside(self, row: InlineBlob, why: str) -> None:
        if len(self._aside) < MAX_SET_ASIDE:
            self._aside[row.blob_id] = time.monotonic() + SET_ASIDE
        log.error("record blob %d %s; it stays in the database, and is tried again in %.0f s", row.blob_id, why,
                  SET_ASIDE)

    def metrics_text(self) -> str:
        return gauges([("pacspace_blobs_moved", "Sealed blobs this sequencer moved to the object store.", self.moved),
                       ("pacspace_blobs_set_aside", "Sealed blobs set aside: their row does not match (see the log).",
                        len(self._aside)),
                       ("pacspace_blobs_failing", "1 while rounds of the sealed blobs' mirror fail.",
                        int(self.failing))])


class PostgresBlobs:
    """The blobs of the records in a PostgreSQL database whose log has an object store: read back from there,
    checked, and moved there (the sequencer's mirror). ``store_url`` looks up the store the log recorded."""

    def __init__(self, url: str, where: str, store_url: Callable[[], str | None],
                 store_mark: Callable[[], str | None]) -> None:
        self._url = url
        self._where = where
        self._store_url = store_url
        self._store_mark = store_mark
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

    def fill(self, rows: Sequence[Sequence[Any]], check: bool = True) -> list[StoredRecord]:
        """Records from rows of ``RECORD_WITH_PLACE``, with the blobs the store holds for them read in (where their
        row names a place instead of the bytes), checked (read_blobs; unchecked for fsck, which checks each)."""
        records = [record_of(tuple(row[:7])) for row in rows]
        moved = [i for i, row in enumerate(rows) if row[4] is None and row[7] is not None]
        if not moved:
            return records
        bucket, pool = self._reader()
        wanted = [(records[i].ct_hash, Place(bytes(rows[i][7]), int(rows[i][8]), int(rows[i][9]))) for i in moved]
        try:
            blobs = read_blobs(bucket, wanted, pool, check=check)
        except ObjectCorrupt:
            blame_the_store(bucket, self._store_mark())
            raise
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
            "SELECT blob_id, ct_hash, blob FROM (SELECT r.blob_id, r.ct_hash, r.blob, "
            "sum(octet_length(r.blob)) OVER (ORDER BY r.blob_id) - octet_length(r.blob) AS before "
            "FROM records r JOIN settled s ON s.blob_id = r.blob_id "
            "WHERE r.blob IS NOT NULL AND r.blob_id <> ALL(%b::bigint[]) ORDER BY r.blob_id LIMIT %s) t "
            "WHERE before < %s ORDER BY blob_id",  # a pack's worth: the rest are read by the next round
            (list(skip), limit, PACK_BYTES)).fetchall())
        return [InlineBlob(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]

    def offload_blobs(self, places: Sequence[tuple[int, Place]]) -> int:
        ids = [blob_id for blob_id, _ in places]
        pack = places[0][1].pack
        assert all(place.pack == pack for _, place in places)  # one round, one pack
        return self._run(lambda conn: int(conn.execute(
            "UPDATE records r SET blob = NULL, pack = %(pack)s, pack_at = v.at, pack_length = v.length "
            "FROM unnest(%(ids)b::bigint[], %(ats)b::int[], %(lengths)b::int[]) AS v(id, at, length) "
            "WHERE r.blob_id = v.id AND r.blob IS NOT NULL",
            {"pack": pack, "ids": ids, "ats": [p.at for _, p in places],
             "lengths": [p.length for _, p in places]}).rowcount))

    def store_mark(self) -> str | None:
        row = self._run(lambda conn: conn.execute(RECORDED_MARK).fetchone())
        return None if row is None or row[0] is None else str(row[0])


if TYPE_CHECKING:
    def _implements(blobs: PostgresBlobs) -> None:
        _rows: BlobRows = blobs
