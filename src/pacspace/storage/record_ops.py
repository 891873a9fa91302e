"""The write ops of the recordation tables, as values: what to write, not how.

The append path (appending.py) and the HTTP handlers build these; a record store (SQLite's
storage/records.py, PostgreSQL's storage/pg_records.py) runs a list of them in one transaction,
each all or nothing, with its own statements. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import MalformedInput
from ..merkle import HASH_SIZE
from .record_values import Relationship

# A record as stored: (seq, tag, ct_hash, sealed blob).
Record = tuple[int, bytes, bytes, bytes]


def _check_hashes(records: Sequence[Record]) -> None:
    if any(len(tag) != HASH_SIZE or len(ct_hash) != HASH_SIZE for _, tag, ct_hash, _ in records):
        raise MalformedInput(f"a record's tag and ct_hash are {HASH_SIZE} bytes")


@dataclass(frozen=True)
class AddRelationship:
    """Store a new relationship and its wraps; it starts pending, whatever ``rel.state`` says. The same
    relationship again (same id, provider and customer) is a no-op: a retry."""

    rel: Relationship
    wraps: Mapping[str, bytes]
    epoch: int = 0


@dataclass(frozen=True)
class DropRelationship:
    """Remove a relationship whose genesis never reached the log (it has no settled record)."""

    rid: str


@dataclass(frozen=True)
class Reserve:
    """Store consecutive new records at the relationship's next seqs.

    Result: None if stored; the existing rows if these exact records are already
    there (a retry). Raises SeqConflict, RecordConflict, TagConflict if a tag
    repeats one of a record waiting for the log (tags already in the log are
    refused when sequenced: appending.TagGuard), or InFlight while an earlier
    record of the relationship awaits the log. Unsettled rows are therefore
    always a relationship's last ones, so dropping them never leaves a gap.
    ``before`` runs first, in the same savepoint (a relationship's creation with
    its genesis: if one fails, neither is kept).
    """

    rid: str
    records: Sequence[Record]
    before: AddRelationship | None = None

    def __post_init__(self) -> None:
        _check_hashes(self.records)


@dataclass(frozen=True)
class ReserveMany:
    """Reserve for many relationships (each at most once) in one op: each group's result, or its error.

    Each group is all or nothing and independent of the others. A tag or
    ct_hash that is not 32 bytes raises MalformedInput, before anything is
    written.
    """

    groups: Sequence[tuple[str, Sequence[Record]]]

    def __post_init__(self) -> None:
        for _, records in self.groups:
            _check_hashes(records)


@dataclass(frozen=True)
class SettleRows:
    """Record the log index of each row ``(relationship, seq, index)`` and the size of the checkpoint that
    covers them. A row already settled (or dropped) is left as it is, so settling twice is harmless."""

    rows: Sequence[tuple[str, int, int]]
    checkpoint_size: int


@dataclass(frozen=True)
class SettleRun:
    """SettleRows for the records waiting for the log with these tags, which the log sequenced at consecutive
    indexes from ``first_index`` (a batch of the sequencer). A tag no waiting record holds is passed over."""

    tags: Sequence[bytes]
    first_index: int
    checkpoint_size: int
    joined: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if any(len(tag) != HASH_SIZE for tag in self.tags):
            raise MalformedInput(f"a record's tag is {HASH_SIZE} bytes")
        object.__setattr__(self, "joined", b"".join(self.tags))


@dataclass(frozen=True)
class Drop:
    """Remove records that were stored but never acknowledged by the log (waiting ones only)."""

    rid: str
    seqs: Sequence[int]


@dataclass(frozen=True)
class Accept:
    """Store the customer's acceptance (a signature the caller checked); the result is the relationship.

    From pending, or from accepted without a signature (a relationship from before
    consent). The same signature again is a no-op; another raises AcceptanceConflict,
    a declined relationship RelationshipDeclined.
    """

    rid: str
    signature: bytes
    now: int


@dataclass(frozen=True)
class Decline:
    """Decline a pending relationship (again: a no-op); the result is the relationship. Accepted: RelationshipAccepted."""

    rid: str
    now: int


RecordOp = AddRelationship | DropRelationship | Reserve | ReserveMany | SettleRows | SettleRun | Drop | Accept | Decline
# Ops whose write the log can re-derive: a transaction of these only needs no fsync of its own (a crash that
# loses it leaves rows unsettled, and start-up settles them from the log: appending.reconcile).
REDERIVABLE = (SettleRows, SettleRun)


def settle(rid: str, indexed: Sequence[tuple[int, int]], checkpoint_size: int) -> SettleRows:
    """SettleRows for one relationship's ``(seq, index)`` pairs."""
    return SettleRows([(rid, seq, index) for seq, index in indexed], checkpoint_size)


def rows_touched(ops: Sequence[object]) -> int:
    """How many record rows the ops store, settle or drop: what makes their transaction long."""
    count = 0
    for op in ops:
        if isinstance(op, Reserve):
            count += len(op.records)
        elif isinstance(op, ReserveMany):
            count += sum(len(records) for _, records in op.groups)
        elif isinstance(op, Drop):
            count += len(op.seqs)
        elif isinstance(op, SettleRows):
            count += len(op.rows)
        elif isinstance(op, SettleRun):
            count += len(op.tags)
    return count


def rederivable(ops: Sequence[object]) -> bool:
    return all(isinstance(op, REDERIVABLE) for op in ops)
