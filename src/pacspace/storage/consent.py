"""A customer's consent to a relationship: the write ops that accept or decline it (records.db since version 5,
and PostgreSQL).

A relationship is created pending. Its customer accepts it once, with a
signature over its genesis entry (records/acceptance.py; the server checks the
signature before it runs the op), or declines it. Both decisions are final: an
accepted relationship cannot be declined, a declined one cannot be accepted.
A relationship from before consent is accepted without a signature; its
customer may sign it once. Repeating a decision (the same signature) is a
no-op, so a client may retry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..errors import NotFound
from .record_values import (
    RELATIONSHIP_COLUMNS,
    AcceptanceConflict,
    Relationship,
    RelationshipAccepted,
    RelationshipDeclined,
    relationship_of,
)

# Over sqlite3's connection, or one taking its ``?`` placeholders (PostgreSQL's, storage/pg_records.py).
Op = Callable[[Any], Relationship]


def _current(conn: Any, rid: str) -> Relationship:
    row = conn.execute(f"SELECT {RELATIONSHIP_COLUMNS} FROM relationships WHERE id = ?", (rid,)).fetchone()
    if row is None:
        raise NotFound("no such relationship")
    return relationship_of(row)


def accept(rid: str, signature: bytes, now: int) -> Op:
    """An op storing the customer's acceptance ``signature``; returns the relationship as it now is."""

    def op(conn: Any) -> Relationship:
        rel = _current(conn, rid)
        if rel.state == "declined":
            raise RelationshipDeclined("the customer declined this relationship; it cannot be accepted")
        if rel.acceptance is not None:
            if rel.acceptance != signature:
                raise AcceptanceConflict("this relationship was accepted with another signature")
            return rel
        conn.execute(
            "UPDATE relationships SET state = 'accepted', acceptance = ?, decided_at = ? WHERE id = ?", (signature, now, rid)
        )
        return replace(rel, state="accepted", acceptance=signature, decided_at=now)

    return op


def decline(rid: str, now: int) -> Op:
    """An op declining a pending relationship; returns the relationship as it now is."""

    def op(conn: Any) -> Relationship:
        rel = _current(conn, rid)
        if rel.state == "accepted":
            raise RelationshipAccepted("an accepted relationship cannot be declined")
        if rel.state == "declined":
            return rel
        conn.execute("UPDATE relationships SET state = 'declined', decided_at = ? WHERE id = ?", (now, rid))
        return replace(rel, state="declined", decided_at=now)

    return op
