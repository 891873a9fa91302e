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
    """A close covers exactly its period: every delta and correction of the period before it, and nothing else.

    ``records`` is the verified chain from genesis up to (not including) the
    close. The covered range must run from the period's first usage record to
    its last (or be empty, right after the previous record, if the period had
    none), count them, name the last one as ``chain_head``, and total them.
    """
    if any(isinstance(r.body, Close) and r.body.period == close.period for r in records):
        raise ChainError(f"period {close.period} is closed twice")
    usage = [r for r in records if isinstance(r.body, Delta) and r.body.period == close.period]
    if usage:
        first, last = usage[0].body.common.seq, usage[-1].body.common.seq
    else:
        last = records[-1].body.common.seq
        first = last + 1
    if (close.first_seq, close.last_seq) != (first, last):
        raise ChainError(
            f"close for {close.period} covers seq {close.first_seq}..{close.last_seq}, "
            f"but the period's records are seq {first}..{last}"
        )
    between = [r for r in records if first <= r.body.common.seq <= last]
    if any(not (isinstance(r.body, Delta) and r.body.period == close.period) for r in between):
        raise ChainError(f"close for {close.period} covers a record of another period")
    if len(usage) != close.record_count:
        raise ChainError(f"close for {close.period} counts {close.record_count} records, the chain has {len(usage)}")
    head = next(r for r in records if r.body.common.seq == last)
    if body_hash(head.encoded) != close.chain_head:
        raise ChainError(f"close for {close.period}: chain_head does not name seq {last}")
    expected = totals([r.body for r in usage if isinstance(r.body, Delta)])
    if [t.to_json() for t in expected] != [t.to_json() for t in close.totals]:
        raise ChainError(f"close for {close.period}: totals differ from the sum of its records")


def check_usage_period(records: Sequence[Opened], delta: Delta) -> None:
    """No delta or correction may land in a period that is already closed."""
    if any(isinstance(r.body, Close) and r.body.period == delta.period for r in records):
        raise ChainError(f"seq {delta.common.seq}: usage for period {delta.period}, which is already closed")


def check_records(records: Sequence[Opened]) -> ChainHead:
    """The whole chain: links (check_next), closes that add up, and no usage after its period's close."""
    head: ChainHead | None = None
    for i, record in enumerate(records):
        head = check_next(head, record)
        if isinstance(record.body, Close):
            check_close(records[:i], record.body)
        elif isinstance(record.body, Delta):
            check_usage_period(records[:i], record.body)
    if head is None:
        raise ChainError("no records")
    return head
