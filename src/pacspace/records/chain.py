"""Chain continuity of a relationship's opened records: gapless and hash-chained from its genesis. Pure.

A break here is a failure (the record is not the chain's next one); a record that
extends the chain but breaks a protocol rule is a finding (records.rules).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .. import exitcodes
from ..errors import PacspaceError
from .body import GENESIS_PREV, Close, Genesis, encode_body
from .rules import Ledger
from .seal import Opened


class ChainError(PacspaceError):
    """A relationship's records break a chain rule: a gap, a fork, a wrong prev, a close that does not add up."""

    code = "chain_broken"
    http_status = 422
    exit_code = exitcodes.VERIFICATION_FAILED


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
        return ChainHead(c.relationship, 1, record.head)
    if c.relationship != head.relationship:
        raise ChainError(f"seq {c.seq}: belongs to relationship {c.relationship}, not {head.relationship}")
    if c.seq != head.next_seq:
        raise ChainError(f"seq {c.seq} follows seq {head.next_seq - 1}: a gap or reordering")
    if isinstance(body, Genesis):
        raise ChainError(f"seq {c.seq}: a second genesis record")
    if c.prev != head.head:
        raise ChainError(f"seq {c.seq}: prev does not name the previous record (a fork)")
    return ChainHead(head.relationship, c.seq + 1, record.head)


def check_chain(records: Sequence[Opened]) -> ChainHead:
    head: ChainHead | None = None
    for record in records:
        head = check_next(head, record)
    if head is None:
        raise ChainError("no records")
    return head


def check_close(records: Sequence[Opened], close: Close) -> None:
    """A close covers exactly its period: raises ChainError unless the rules (records.rules) accept it.

    ``records`` is the verified chain from genesis up to (not including) the close.
    """
    ledger = Ledger()
    for record in records:
        ledger.add(record)
    findings = ledger.check(Opened(close.common.seq, close, encode_body(close), b""))
    if findings:
        raise ChainError(findings[0].message)


def check_records(records: Sequence[Opened]) -> ChainHead:
    """The whole chain, strictly: links (check_next), and no record that breaks a rule (records.rules)."""
    head: ChainHead | None = None
    ledger = Ledger()
    for record in records:
        head = check_next(head, record)
        findings = ledger.add(record)
        if findings:
            raise ChainError(findings[0].message)
    if head is None:
        raise ChainError("no records")
    return head
