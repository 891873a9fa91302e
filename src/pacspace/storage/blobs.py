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

The mirror runs in the sequencing serve, off the commit path, a round at a time (storage/mirroring.py):

1. Read up to ROUND_BLOBS settled records whose blob is still in their row, lowest ``blob_id`` first. An
   unsettled record's blob stays in its row: the row may yet be dropped (it never reached the log).
2. Put each blob, if absent (``If-None-Match: *``); one already there with other bytes is ObjectCorrupt and
   stops the round, overwriting nothing.
3. Read each back: the store must hold exactly the bytes it was given (a "200" is not proof).
4. In one transaction, empty those rows' ``blob``. A crash before COMMIT repeats the round from step 1; the
   puts are idempotent. After COMMIT the store holds the only copy.

A store that is down leaves the blobs in their rows, readable as before, and the next round tries again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from ..errors import ObjectCorrupt
from .mirroring import MirrorThread
from .objects import put_object
from .s3 import S3Bucket

ROUND_BLOBS = 512
# Requests to the store in flight at once, for a round's puts and for a page of records read back.
PARALLEL = 8


@dataclass(frozen=True)
class InlineBlob:
    blob_id: int
    ct_hash: bytes
    blob: bytes


class BlobRows(Protocol):
    """What the blob mirror reads and writes in the database (storage/pg_records.py implements it)."""

    def inline_blobs(self, limit: int) -> list[InlineBlob]:
        """Up to ``limit`` settled records whose blob is still in their row, lowest blob_id first."""
        ...

    def offload_blobs(self, blob_ids: Sequence[int]) -> int:
        """Empty these rows' blob, in one transaction, durable once it returns; how many it emptied."""
        ...


def blob_key(ct_hash: bytes) -> str:
    return "blob/" + ct_hash.hex()


def read_blobs(bucket: S3Bucket, ct_hashes: Sequence[bytes], pool: ThreadPoolExecutor | None = None, *,
               check: bool = True) -> list[bytes | None]:
    """The blobs of these ct_hashes from the store, each checked against its hash: ObjectCorrupt for one that is
    missing or holds other bytes (never served), ObjectStoreFailed if the store does not answer. Unchecked
    (``check=False``, for fsck, which reports each): as the store holds them, None for one it does not."""

    def one(ct_hash: bytes) -> bytes | None:
        data = bucket.get(blob_key(ct_hash))
        if not check:
            return data
        if data is None:
            raise ObjectCorrupt(f"{bucket}/{blob_key(ct_hash)} is missing from the object store; the record's blob "
                                "cannot be served (restore the object from a backup)")
        if hashlib.sha256(data).digest() != ct_hash:
            raise ObjectCorrupt(f"{bucket}/{blob_key(ct_hash)} does not hold the record's blob (tampered with or "
                                "damaged); it is not served")
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
        self._pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="pacspace-blob-put")

    def stop(self) -> None:
        super().stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run_round(self) -> bool:
        """One round (steps 1-4); whether more blobs may be waiting."""
        inline = self.rows.inline_blobs(ROUND_BLOBS)
        if not inline or self.stopping:
            return False

        def put(row: InlineBlob) -> None:
            if hashlib.sha256(row.blob).digest() != row.ct_hash:
                raise ObjectCorrupt(f"record blob {row.blob_id} in the database does not match its ct_hash; it stays "
                                    "there (see `pacspace fsck`)")
            if not self.stopping:
                put_object(self.bucket, blob_key(row.ct_hash), row.blob)

        list(self._pool.map(put, inline))
        read_blobs(self.bucket, [row.ct_hash for row in inline], self._pool)
        if self.stopping:
            return False
        self.moved += self.rows.offload_blobs([row.blob_id for row in inline])
        return len(inline) == ROUND_BLOBS

    def metrics_text(self) -> str:
        lines = [("pacspace_blobs_moved", "Sealed blobs this sequencer moved to the object store.", self.moved),
                 ("pacspace_blobs_failing", "1 while rounds of the sealed blobs' mirror fail.", int(self.failing))]
        return "".join(f"# HELP {n} {h}\n# TYPE {n} gauge\n{n} {v}\n" for n, h, v in lines)
