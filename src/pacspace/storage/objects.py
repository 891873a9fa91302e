"""A log's tiles and entry bundles in an object store (``--objects s3://...``): what is copied there, when, and
how what comes back is checked.

The store is untrusted, as in Sunlight: PostgreSQL holds the truth (every checkpoint, and every tile's
hashes, which proofs read), and nothing read from the store is used or served before it is checked against
it. What the store adds is room: an entry bundle, the bulk of a log, leaves PostgreSQL once the store holds
it. It also holds every full tile and, at the size it was last brought up to, the partial tiles and the
``checkpoint``, so the bucket alone is a static C2SP tlog-tiles log that a stranger can verify.

The mirror runs in the writer's process, off the commit path (LogWriter.maintain). Before its first round, step 0:
the bucket this process reaches must hold the log's mark (``pacspace-log``, claim_mark), which the first mirror
put there and the database recorded; a process whose AWS_ENDPOINT_URL leads elsewhere moves nothing. One round:

1. Read the size M the store was last brought up to (``objects.size``) and pick the next target T: the
   largest committed checkpoint size within STEP_ENTRIES of M, or the smallest beyond it. Only committed
   state is ever copied, so every object has exactly one possible content: the log's single history.
2. Put every full tile and full entry bundle that T implies and M did not, then T's partial tiles and
   partial bundle (immutable too under their C2SP ``.p/W`` names), each with ``If-None-Match: *``. An object
   already there with the same bytes counts as put: a crash after step 2 repeats it harmlessly. One holding
   the start of them (a PUT cut short, on a store that keeps part of one) is put again, and logged. One with
   other bytes (tampered with, or another log's sharing the bucket) is ObjectCorrupt, and the round stops,
   overwriting nothing (put_object).
3. Read every full bundle of step 2 back: the store must hold exactly the bytes it was given. A store's "200"
   is not proof (one that acknowledges a PUT it dropped, or one it refused because another object was there,
   would otherwise cost the log those entries at step 4).
4. In one PostgreSQL transaction, compare-and-swap ``objects.size`` from M to T and delete the full bundles
   below T from ``bundles``: they are read from the store from then on. A crash before COMMIT repeats the
   round from step 1.
5. Put ``checkpoint``, T's note, unless the bucket holds a larger one. It lags the log by up to a round, and
   is the only object ever replaced. A put that failed or was cut short is made again by the next round (or
   the next start), however idle the log is.
6. Delete M's partial objects that T's did not replace (their full or wider versions are in the store now,
   and the bucket's ``checkpoint`` no longer names M). Best effort: one a crash leaves behind is garbage,
   never wrong (it holds committed bytes).

A failure of the store (down, refusing) leaves everything in PostgreSQL, and the next round tries again.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from ..errors import InvalidRange, ObjectCorrupt, ObjectStoreFailed, PacspaceError, UntrustedState
from ..merkle import HASH_SIZE, leaf_hash
from ..tiles import TILE_WIDTH, TileRef, bundle_prefix, full_tile_count, iter_bundle, partial_width, tile_levels
from .mirroring import MirrorThread, gauges
from .s3 import S3Bucket, S3Location

log = logging.getLogger("pacspace.storage")

# The object that names the log a bucket holds the objects of (claim_mark).
STORE_MARK = "pacspace-log"
# Entries one round brings the store forward by, at most (unless one checkpoint spans more): 256 bundles.
STEP_ENTRIES = 256 * TILE_WIDTH


class MirrorRows(Protocol):
    """What the mirror reads and writes in the database (storage/postgres.py implements it)."""

    origin: str

    def store_mark(self) -> str | None:
        """The mark the log's object store was given (claim_mark), if it was given one yet."""
        ...

    def record_store_mark(self, mark: str) -> None:
        """Record the store's mark, unless one is recorded already (durable once it returns)."""
        ...

    def mirrored_size(self) -> int:
        """The size the store was last brought up to (``objects.size``)."""
        ...

    def checkpoint_sizes(self, after: int, limit: int) -> list[int]:
        """Up to ``limit`` committed checkpoint sizes above ``after``, ascending."""
        ...

    def checkpoint_at(self, size: int | None) -> bytes:
        """The committed checkpoint note of exactly ``size``."""
        ...

    def committed_tile(self, level: int, n: int) -> bytes | None:
        """The committed hashes of tile (level, n) at its current width (a partial one may have grown since), as
        the database holds them (never a writer's in-memory row that a commit has not yet replaced)."""
        ...

    def stored_bundle(self, n: int) -> bytes | None:
        """Entry bundle n as the database holds it (None once it moved to the store)."""
        ...

    def advance_mirror(self, mirrored: int, target: int) -> bool:
        """Step 3, in one transaction: ``objects.size`` from ``mirrored`` to ``target``, and the full bundles below
        ``target`` deleted from the database. False, changing nothing, if the size was not ``mirrored``."""
        ...


class ObjectMirror(MirrorThread):
    """Brings the object store up to the log, a round at a time (the steps above), in a thread of its own: after
    commits, at start, and while idle until it has caught up. Only the writer runs one."""

    what = "tiles and bundles"

    def __init__(self, bucket: S3Bucket, rows: MirrorRows) -> None:
        super().__init__(bucket)
        self.rows = rows
        self._checkpoint_put = -1  # the size of the last `checkpoint` this mirror put
        self.mirrored = 0  # the size the store holds every object of, as this mirror last read or moved it

    def metrics_text(self, tree_size: int) -> str:
        """The mirror's gauges, from memory."""
        return gauges([("pacspace_objects_size", "Size of the log the object store holds every object of.", self.mirrored),
                       ("pacspace_objects_lag", "Entries committed that the object store does not hold yet.",
                        max(0, tree_size - self.mirrored)),
                       ("pacspace_objects_failing", "1 while rounds of the object store's mirror fail.",
                        int(self.failing))])

    def check_store(self) -> bool:
        mark = self.rows.store_mark()
        if mark is None:
            self.rows.record_store_mark(claim_mark(self.bucket, self.rows.origin, self.rows.mirrored_size()))
            mark = self.rows.store_mark()  # another writer's, if it recorded one first
        check_mark(self.bucket, mark)
        return True

    def run_round(self) -> bool:
        """One round (steps 1-5); whether the store is still behind the log after it."""
        mirrored = self.mirrored = self.rows.mirrored_size()
        sizes = self.rows.checkpoint_sizes(mirrored, 4096)
        target = next_target(mirrored, sizes)
        if target is None:
            if mirrored and self._checkpoint_put != mirrored:
                self._put_checkpoint(mirrored)  # step 5 of a round that failed, or of an earlier process
            return False
        moved: list[tuple[str, bytes]] = []
        for ref in new_objects(mirrored, target):
            if self.stopping:
                return False  # the process is stopping: the next start repeats this round
            data = object_bytes(ref, self.rows.committed_tile, self.rows.stored_bundle)
            put_object(self.bucket, ref.path(), data)
            if ref.level is None and not ref.is_partial:
                moved.append((ref.path(), data))
        for key, data in moved:
            if self.bucket.get(key) != data:
                raise ObjectCorrupt(f"{self.bucket}/{key} does not hold what was put there; the bundle stays in the "
                                    "database")
        if self.stopping or not self.rows.advance_mirror(mirrored, target):
            return not self.stopping  # another writer moved it: start again from what it did
        self.mirrored = target
        self._put_checkpoint(target)
        for ref in set(partial_objects(mirrored)) - set(partial_objects(target)):
            if not self.stopping:
                self.bucket.delete(ref.path())
        return target < sizes[-1] or len(sizes) == 4096

    def _put_checkpoint(self, size: int) -> None:
        held = self.bucket.get("checkpoint")
        if held is not None and checkpoint_size(held) > size:
            self._checkpoint_put = size  # a later writer's is there already: never move it back
            return
        if not self.stopping:
            self.bucket.put("checkpoint", self.rows.checkpoint_at(size))
            self._checkpoint_put = size


def claim_mark(bucket: S3Bucket, origin: str, mirrored: int) -> str:
    """Step 0, once per log: put the log's mark in its bucket (STORE_MARK: the origin and a random id), or read
    the one a crash left there before the database recorded it. UntrustedState if the bucket holds another log's,
    or, for a log whose objects went to a bucket before marks (``mirrored`` > 0), if this one does not hold the
    log's ``checkpoint``: then this process reaches another store than they went to."""
    if mirrored:
        note = bucket.get("checkpoint")
        if note is None or note.split(b"\n", 1)[0] != origin.encode():
            raise UntrustedState(f"{bucket} at this endpoint does not hold the log's objects (no checkpoint of "
                                 f"{origin}): check AWS_ENDPOINT_URL; nothing is moved")
    mark = f"{origin}\n{secrets.token_hex(16)}\n"
    if bucket.put_if_absent(STORE_MARK, mark.encode()):
        return mark
    got = bucket.get(STORE_MARK)
    if got is None:
        raise ObjectStoreFailed(f"{bucket} refused {STORE_MARK} but gives none back: try again")
    held = got.decode("utf-8", "replace")
    ours = f"{origin}\n"
    if held.count("\n") < 2 and (ours.startswith(held) or held.startswith(ours)):
        # This log's mark, cut short (a store that keeps part of a PUT): it was never recorded, put it again.
        log.warning("%s/%s is a mark cut short; it is put again", bucket, STORE_MARK)
        bucket.put(STORE_MARK, mark.encode())
        held = (bucket.get(STORE_MARK) or b"").decode("utf-8", "replace")
        if held != mark:
            raise ObjectStoreFailed(f"{bucket} does not give back the {STORE_MARK} put there: try again")
    if held.split("\n", 1)[0] != origin:
        raise UntrustedState(f"{bucket} holds another log's objects ({STORE_MARK} names {held.split(chr(10), 1)[0]!r})")
    return held


# The store a log's objects went to, and the mark it was given, as its database records them (one row, or none).
RECORDED_STORE = "SELECT url FROM objects"
RECORDED_MARK = "SELECT mark FROM objects"


def kept_store(held: str | None, wanted: str) -> str:
    """The object store of a log whose database records ``held`` (None: none yet), for a process given
    ``wanted`` (``--objects``), normalized. UntrustedState if the log has another: a log keeps its object store."""
    wanted = str(S3Location.parse(wanted))
    if held is not None and held != wanted:
        raise UntrustedState(f"the log's objects are in {held}, not {wanted}; a log keeps its object store")
    return wanted


def check_mark(bucket: S3Bucket, recorded: str | None) -> None:
    """Before a mirror moves anything out of the database: the bucket this process reaches (its AWS_ENDPOINT_URL,
    its credentials) is the one the log's objects went to, which every other process reads."""
    if recorded is None:
        raise ObjectStoreFailed(f"{bucket} has not been given the log's mark yet (the tiles' mirror gives it)")
    held = bucket.get(STORE_MARK)
    if held != recorded.encode():
        raise UntrustedState(f"{bucket} at this endpoint is not the store the log's objects went to ({STORE_MARK} is "
                             f"{'missing' if held is None else 'another'}): check AWS_ENDPOINT_URL; nothing is moved")


def blame_the_store(bucket: S3Bucket, recorded: str | None) -> None:
    """Before an object that is missing or other bytes is called damaged: ObjectStoreFailed if the bucket this
    process reaches lacks the log's mark (its AWS_ENDPOINT_URL leads to another store, where a bucket of that
    name holds nothing of the log's): that proves nothing about the log's objects. A log given no mark yet
    cannot tell."""
    if recorded is None:
        return
    try:
        check_mark(bucket, recorded)
    except UntrustedState as exc:
        log.error("%s", exc)
        raise ObjectStoreFailed(str(exc)) from None


def checkpoint_size(note: bytes) -> int:
    """The tree size a checkpoint note states (its second line), or -1 if it states none."""
    lines = note.split(b"\n", 2)
    return int(lines[1]) if len(lines) > 2 and lines[1].isdigit() and len(lines[1]) < 20 else -1


def next_target(mirrored: int, checkpoint_sizes: Sequence[int]) -> int | None:
    """Step 1: the size to bring the store to from ``mirrored``, given the committed checkpoint sizes beyond it
    (ascending); None if there are none."""
    if not checkpoint_sizes:
        return None
    within = [s for s in checkpoint_sizes if s <= mirrored + STEP_ENTRIES]
    return within[-1] if within else checkpoint_sizes[0]


def new_objects(mirrored: int, target: int) -> Iterator[TileRef]:
    """Step 2's objects, in order: the full bundles and tiles ``target`` implies and ``mirrored`` did not, then
    ``target``'s partial tiles and partial bundle."""
    for n in range(full_tile_count(mirrored, 0), full_tile_count(target, 0)):
        yield TileRef(None, n)
    for level in range(tile_levels(target) + 1):
        for n in range(full_tile_count(mirrored, level), full_tile_count(target, level)):
            yield TileRef(level, n)
    yield from partial_objects(target)


def partial_objects(size: int) -> list[TileRef]:
    """The partial tiles and the partial entry bundle of a tree of ``size`` (none at size 0)."""
    refs = [TileRef(level, full_tile_count(size, level), partial_width(size, level))
            for level in range(tile_levels(size) + 1) if size and partial_width(size, level)]
    if size % TILE_WIDTH:
        refs.append(TileRef(None, size // TILE_WIDTH, size % TILE_WIDTH))
    return refs


def put_object(bucket: S3Bucket, key: str, data: bytes, *, named_by_hash: bool = False) -> None:
    """Put an immutable object whose bytes the database still holds: stored now, or already there with the same
    bytes. Under its name, the start of those bytes (or nothing, after a 412) is a PUT cut short, on a store that
    keeps part of one: it is put again, and logged. Other bytes are ObjectCorrupt and are left as they are (a
    tamperer's, or another log's that shares the bucket, whose only copy they may be), unless the name is the
    hash of the bytes (``named_by_hash``: a blob pack), when only these bytes belong there."""
    if bucket.put_if_absent(key, data):
        return
    held = bucket.get(key)
    if held == data:
        return
    if not (named_by_hash or held is None or (len(held) < len(data) and data.startswith(held))):
        raise ObjectCorrupt(f"{bucket}/{key} holds other bytes than the log's (tampered with, or another log's); "
                            "it is not overwritten: restore it from a backup, or give this log a bucket of its own")
    log.warning("%s/%s held %s bytes, not the log's (a put cut short); it is put again", bucket, key,
                "no" if held is None else f"{len(held):,}")
    bucket.put(key, data)
    if bucket.get(key) != data:
        raise ObjectCorrupt(f"{bucket}/{key} does not hold what was put there; it stays in the database")


def object_bytes(ref: TileRef, tile: Callable[[int, int], bytes | None], bundle: Callable[[int], bytes | None]) -> bytes:
    """The C2SP bytes of ``ref`` from the database's rows (a partial is a prefix of its row, which may have grown)."""
    if ref.level is None:
        data = bundle(ref.n)
        if data is None:
            raise ObjectCorrupt(f"entry bundle {ref.n} is neither in the database nor in the object store")
        return bundle_prefix(data, ref.width)
    hashes = tile(ref.level, ref.n)
    if hashes is None or len(hashes) < ref.width * HASH_SIZE:
        raise InvalidRange(f"tile {ref.path()} is not stored")
    return hashes[: ref.width * HASH_SIZE]


def check_bundle(data: bytes, n: int, level0: bytes | None, where: str) -> bytes:
    """A full entry bundle read back from the store, checked: its entries hash to the stored level-0 tile ``n``
    (which the checkpoints commit to). ObjectCorrupt otherwise."""
    try:
        hashes = b"".join(leaf_hash(entry) for entry in iter_bundle(data))
    except InvalidRange:
        hashes = b""
    if level0 is None or hashes != level0 or len(level0) != TILE_WIDTH * HASH_SIZE:
        raise ObjectCorrupt(f"{where}/{TileRef(None, n).path()} does not match the log (tampered with or "
                            "damaged); it is not served")
    return data


def check_store(bucket: S3Bucket, rows: MirrorRows, mirrored: int, head: int,
                open_note: Callable[[bytes], int]) -> tuple[list[str], list[str]]:
    """For fsck: the faults and warnings of the store at ``mirrored`` (``head``: the log's size in the same
    snapshot). Every tile object it must hold is there with the log's bytes, and its ``checkpoint`` carries the
    log's signature (``open_note`` verifies a note and returns its size, or raises) and is one the log
    committed. The full bundles are read, and checked, by fsck's rebuild of the tree."""
    faults: list[str] = []
    warnings: list[str] = []
    for ref in new_objects(0, mirrored):
        if ref.level is None and not ref.is_partial:
            continue
        held = bucket.get(ref.path())
        if held is None:
            faults.append(f"{bucket}/{ref.path()} is missing from the object store")
        elif held != object_bytes(ref, rows.committed_tile, rows.stored_bundle):
            faults.append(f"{bucket}/{ref.path()} differs from the log's (tampered with or damaged)")
    note = bucket.get("checkpoint")
    if note is None:
        if mirrored:
            warnings.append(f"{bucket}/checkpoint is missing (the writer puts it again within a round)")
        return faults, warnings
    try:
        size = open_note(note)
    except PacspaceError as exc:
        faults.append(f"{bucket}/checkpoint is not the log's: {exc}")
        return faults, warnings
    if size > head:
        warnings.append(f"{bucket}/checkpoint is of size {size:,}, beyond this check's snapshot of the log")
    elif size not in rows.checkpoint_sizes(size - 1, 1) or \
            rows.checkpoint_at(size).split(b"\n\n", 1)[0] != note.split(b"\n\n", 1)[0]:
        faults.append(f"{bucket}/checkpoint is signed by the log's key but is not a checkpoint the log committed")
    elif size < mirrored:
        warnings.append(f"{bucket}/checkpoint is of size {size:,}, behind the store's {mirrored:,} (the writer puts "
                        "it again within a round)")
    return faults, warnings
