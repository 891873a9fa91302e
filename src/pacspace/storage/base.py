"""The storage contracts the sequencer and the read API rely on.

Modelled on Sunlight's ``Backend`` / ``LockBackend``: each method states what is
true once it returns, so crash-safety can be reasoned about where it is used.
storage/sqlite.py's ``SqliteLog`` implements both, which mypy checks there; the
append protocol's own ports (records.db, the sequencer) are in appending.py.
``RecordTables`` is the recordation tables as a whole, which records.db
(storage/records.py) and PostgreSQL (storage/pg_records.py) implement.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..merkle import Node

if TYPE_CHECKING:
    from .record_ops import RecordOp
    from .record_values import Party, Relationship, Role, StoredRecord


@dataclass(frozen=True)
class Batch:
    """Everything one sequencing step writes, committed as one transaction.

    ``tiles`` holds each touched tile's full hash bytes and packed interior;
    ``bundles`` each touched entry bundle's full bytes; ``entries`` the new
    entries and ``leaf_hashes`` their hashes (indexes old_size, old_size + 1, ...);
    ``checkpoint`` the signed note for ``new_size``.
    """

    old_size: int
    new_size: int
    tiles: dict[tuple[int, int], tuple[bytes, bytes]]
    bundles: dict[int, bytes]
    leaf_hashes: Sequence[bytes]
    checkpoint: bytes
    entries: Sequence[bytes]


class LogReader(Protocol):
    """Reads committed state. Never sees a partially written batch."""

    def latest_checkpoint(self) -> bytes:
        """The signed note of the largest committed checkpoint."""
        ...

    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        """merkle.HashReader over stored tiles: exactly ``len(nodes)`` complete hashes, or raises."""
        ...

    def read_tile(self, level: int, n: int) -> bytes | None:
        """The stored hash bytes of tile (level, n) at its current width, or None."""
        ...

    def read_bundle(self, n: int) -> bytes | None:
        """The stored entry bundle n at its current width, or None."""
        ...

    def checkpoint_in(self, lo: int, hi: int) -> bool:
        """Whether a checkpoint with lo <= size < hi was committed."""
        ...

    def find_leaf(self, leaf_hash: bytes, size: int) -> int | None:
        """The first index below ``size`` whose leaf hash is ``leaf_hash``, if any.

        A leaf is findable as soon as the commit that appended it returned; the
        index file behind it is made durable later (LogWriter.maintain), and a
        start after a crash re-indexes what it lost before serving.
        """
        ...

    def checkpoints(self) -> Iterator[bytes]:
        """Every committed checkpoint note, by increasing size."""
        ...


class LogWriter(Protocol):
    """The single writer's view. Only the sequencer holds one."""

    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        """merkle.HashReader over committed tiles."""
        ...

    def maintain(self) -> None:
        """Maintenance kept off the commit path; safe to run in another thread during a commit."""
        ...

    def replace_checkpoint(self, size: int, note: bytes) -> None:
        """Store the same checkpoint with more signatures (cosignatures); durable once it returns."""
        ...

    def metrics_text(self) -> str:
        """The storage's own Prometheus lines for /metrics (the object store's mirror), each ending in a newline;
        "" if none. From memory: never waits on a database or a store."""
        ...

    def edge_tiles(self, size: int) -> dict[int, list[bytes]]:
        """The partial tile at every level for a tree of ``size`` (the right edge)."""
        ...

    def commit(self, batch: Batch) -> None:
        """Atomically write ``batch``; durable (fsynced) once it returns.

        Raises CheckpointConflict, writing nothing, unless the latest stored
        checkpoint has size ``batch.old_size``. The new leaves are findable by
        hash once it returns (the index itself is made durable later, by maintain).
        """
        ...


class RecordTables(Protocol):
    """Parties, relationships, wraps and records with their sealed blobs.

    Reads see committed transactions only. A write's ops run in one transaction,
    each all or nothing; the write is durable once it returns, unless every op
    is a settle (record_ops.REDERIVABLE), which the log can re-derive.
    """

    def close(self) -> None: ...

    def claim_epoch(self) -> int | None:
        """Called by the serve that sequences, before it reconciles: from now on, the append path's writes of any
        serve that sequenced before are refused. The epoch to hand this serve's workers; None where no other
        serve can write (records.db, one directory's)."""
        ...

    def mirror_blobs(self) -> None:
        """Called by the serve that sequences: move settled records' blobs to the log's object store from now on,
        in a thread of its own, if the log has one (storage/blobs.py); nothing where it cannot have one."""
        ...

    def metrics_text(self) -> str:
        """Prometheus gauges of what mirror_blobs started ("" if nothing)."""
        ...

    def write(self, ops: Sequence[RecordOp]) -> list[Any]:
        """Each op's result, or the error it raised (anything unexpected as WriteFailed)."""
        ...

    def write_one(self, op: RecordOp) -> Any:
        """One op's result; its error raised."""
        ...

    def add_party(self, name: str, role: Role, token: str, now: int) -> Party: ...

    def revoke_party(self, name: str, now: int) -> None: ...

    def set_keys(self, name: str, x25519: bytes, ed25519: bytes) -> None: ...

    def parties(self) -> list[Party]: ...

    def party(self, name: str) -> Party | None: ...

    def party_by_token(self, token: str) -> Party | None:
        """The active party holding ``token``; revoked parties are never returned."""
        ...

    def add_relationship(self, rel: Relationship, wraps: dict[str, bytes], epoch: int = 0) -> None: ...

    def relationship(self, rid: str) -> Relationship | None: ...

    def relationships(self, rids: Sequence[str]) -> dict[str, Relationship]: ...

    def relationships_of(self, party: str, state: str | None = None) -> list[Relationship]: ...

    def wrap(self, rid: str, reader: str, epoch: int = 0) -> bytes | None: ...

    def record(self, rid: str, seq: int, blob: bool = True) -> StoredRecord | None:
        """One record; with its blob unless ``blob`` is False (then the blob may be left out: None)."""
        ...

    def records(self, rid: str, after_seq: int, limit: int) -> list[StoredRecord]:
        """Settled records after ``after_seq``, in seq order, each with its blob."""
        ...

    def iter_records(self, page: int = 1000) -> Iterator[StoredRecord]:
        """Every record with its blob (None if missing), by relationship and seq (fsck)."""
        ...

    def unsettled_of(self, rid: str) -> list[StoredRecord]: ...

    def has_unsettled(self, rid: str) -> bool: ...

    def unsettled(self) -> list[StoredRecord]: ...

    def settled_indexes(self, indexes: Sequence[int]) -> set[int]: ...
