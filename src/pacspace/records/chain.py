"""Chain rules for a relationship's opened records: gapless, hash-chained, closes that add up. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import PacspaceError
from .body import GENESIS_PREV, Close, Delta, Genesis, body_hash, totals
from .seal import Opened


class ChainError(PacspaceError):
    """A relationship's records break a chain rule: a gap, a fork, a wrong prev, a close that does not add up."""

    code = "chain_broken"
    http_status = 422


@dataclass(frozen=True)
class ChainHead:
    """Where a verified chain ends: the next seq and the hash its prev must name."""

    relationship: str
    next_seq: int
    head: str


def check_next(head: ChainHead | None, record: Opened) -> ChainHead:
    """Check one record extends the chain ending at ``head`` (None before genesis); return the new head."""
    body = record.body
    c = body.common
    if head is None:
        if not isinstance(body, Genesis):
            raise ChainError(f"seq {c.seq}: the chain must start with a genesis record at seq 0")
        if c.prev != GENESIS_PREV:
            raise ChainError("genesis must have an all-zero prev")
        return ChainHead(c.relationship, 1, body_hash(record.encoded))
    if c.relationship != head.relationship:
        raise ChainError(f"seq {c.seq}: belongs to relationship {c.relationship}, not {head.relationship}")
    if c.seq != head.next_seq:
        raise ChainError(f"seq {c.seq} follows seq {head.next_seq - 1}: a gap or reordering")
    if isinstance(body, Genesis):
        raise ChainError(f"seq {c.seq}: a second genesis record")
    if c.prev != head.head:
        raise ChainError(f"seq {c.seq}: prev does not name the previous record (a fork)")
    return ChainHead(head.relationship, c.seq + 1, body_hash(record.encoded))


def check_chain(records: Sequence[Opened]) -> ChainHead:
    head: ChainHead | None = None
    for record in records:
        head = check_next(head, record)
    if head is None:
        raise ChainError("no records")
    return head


def check_close(records: Sequence[Opened], close: Close) -> None:
    """A close covers exactly first_seq..last_seq of its period, names the right head, and its totals add up.

    ``records`` is the verified chain from genesis up to (not including) the close.
    """
    by_seq = {r.body.common.seq: r for r in records}
    if close.last_seq not in by_seq or (close.first_seq not in by_seq and close.record_count):
        raise ChainError(f"close for {close.period} covers seqs that are not in the chain")
    if body_hash(by_seq[close.last_seq].encoded) != close.chain_head:
        raise ChainError(f"close for {close.period}: chain_head does not name seq {close.last_seq}")
    covered = [by_seq[s] for s in range(close.first_seq, close.last_seq + 1) if s in by_seq]
    usage = [r.body for r in covered if isinstance(r.body, Delta)]
    if any(d.period != close.period for d in usage):
        raise ChainError(f"close for {close.period} covers a record of another period")
    if len(usage) != close.record_count:
        raise ChainError(f"close for {close.period} counts {close.record_count} records, the chain has {len(usage)}")
    expected = totals(usage)
    if [t.to_json() for t in expected] != [t.to_json() for t in close.totals]:
        raise ChainError(f"close for {close.period}: totals differ from the sum of its records")
