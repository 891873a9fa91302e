"""One tag per record in the log: admission of record entries, in the process that sequences.

A record's tag is its public handle (a customer's monitor finds its records by
tag), so the log never takes a tag twice. records.db does not enforce this: a
unique index on random 32-byte tags dirtied a random page per record inside
every write transaction that every writer waits on (docs/performance.md).
Instead the one process that sequences admits entries: a relationship's
records are refused if any of their tags is in the log (the tag index,
storage/prefixindex.py), is claimed by an entry still waiting for the log, or
repeats an earlier entry of the same call.

Admission is three steps, so the log lookup (disk reads) can leave the event
loop: :meth:`TagGuard.claim` claims the call's new tags at once, the lookup
runs anywhere, and :meth:`TagGuard.decide` keeps the claims of the admitted
entries only. A tag the log gains after the claim must have been admitted by
another call meanwhile, which the claim forbids; one it gained before is in the
tag index by then, because a claim is released only after its entries'
commit added them there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..records.seal import record_tag

# One record's row in records.db: (relationship id, seq).
Row = tuple[str, int]


@dataclass(frozen=True)
class Claim:
    """A call's entries between the claim and the decision."""

    tags: list[bytes | None]
    rows: Sequence[Row]
    # Relationships refused at once: a tag of theirs was claimed by another call.
    refused: frozenset[str]
    # The tags this call claimed, to be looked up in the log.
    claimed: list[bytes]


@dataclass
class TagGuard:
    # Whether each tag is a committed entry's (SqliteLog.tags_in_log).
    in_log: Callable[[Sequence[bytes]], list[bool]]
    _claimed: set[bytes] = field(default_factory=set)

    def claim(self, entries: Sequence[bytes], rows: Sequence[Row]) -> Claim:
        """Step one: refuse relationships with a tag another call claimed; claim every other new tag."""
        tags = [record_tag(e) for e in entries]
        refused = frozenset(rid for tag, (rid, _) in zip(tags, rows) if tag is not None and tag in self._claimed)
        claimed = list(dict.fromkeys(t for t, (rid, _) in zip(tags, rows) if t is not None and rid not in refused))
        self._claimed.update(claimed)
        return Claim(tags, rows, refused, claimed)

    def decide(self, claim: Claim, in_log: Sequence[bool]) -> list[int]:
        """Step three, given whether each claimed tag is in the log: the positions admitted, in order.

        Every entry of a relationship with a repeated tag is refused, so each
        relationship's records are sequenced all together or not at all. The
        claims of everything refused are dropped.
        """
        taken = {tag for tag, found in zip(claim.claimed, in_log) if found}
        refused = set(claim.refused)
        refused.update(rid for tag, (rid, _) in zip(claim.tags, claim.rows) if tag in taken)
        # A tag repeated within the call: the first relationship to use it keeps it. Only the tags of
        # relationships still admitted count, so refusing one may free a tag for another: repeat.
        while True:
            seen: set[bytes] = set()
            repeats: set[str] = set()
            for tag, (rid, _) in zip(claim.tags, claim.rows):
                if tag is None or rid in refused:
                    continue
                if tag in seen:
                    repeats.add(rid)
                seen.add(tag)
            if not repeats:
                break
            refused |= repeats
        admitted = [i for i, (rid, _) in enumerate(claim.rows) if rid not in refused]
        kept = {claim.tags[i] for i in admitted}
        self._claimed.difference_update(t for t in claim.claimed if t not in kept)
        return admitted

    def abandon(self, claim: Claim) -> None:
        """Drop a claim whose lookup failed: nothing of it is admitted."""
        self._claimed.difference_update(claim.claimed)

    def release(self, entries: Sequence[bytes]) -> None:
        """Drop the claims of entries the sequencer is done with (committed, or refused as a whole)."""
        for entry in entries:
            tag = record_tag(entry)
            if tag is not None:
                self._claimed.discard(tag)

    @property
    def claimed(self) -> int:
        return len(self._claimed)
