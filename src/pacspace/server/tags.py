"""One tag per record in the log: admission of record entries, in the process that sequences.

A record's tag is its public handle (a customer's monitor finds its records by
tag), so the log never takes a tag twice. records.db does not enforce this: a
unique index on random 32-byte tags dirtied a random page per record inside
every write transaction that every writer waits on (docs/performance.md).
Instead the one process that sequences admits entries: a relationship's
records are refused if any of their tags is in the log (the tag index,
storage/prefixindex.py), is claimed by an entry still waiting for the log, or
repeats an earlier entry of the same call. Checking and claiming are one step
on the event loop, so two workers' concurrent records cannot both pass; a claim
lasts until the sequencer is done with its entries, by which time committed
ones are in the tag index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..records.seal import record_tag

# One record's row in records.db: (relationship id, seq).
Row = tuple[str, int]


@dataclass
class TagGuard:
    # Whether each tag is a committed entry's (SqliteLog.tags_in_log).
    in_log: Callable[[Sequence[bytes]], list[bool]]
    _claimed: set[bytes] = field(default_factory=set)

    def admit(self, entries: Sequence[bytes], rows: Sequence[Row]) -> list[int]:
        """The positions of the entries that may be sequenced, in order; claims their tags.

        Every entry of a relationship with a repeated tag is refused, so each
        relationship's records are sequenced all together or not at all.
        """
        tags = [record_tag(e) for e in entries]
        fresh = [i for i, tag in enumerate(tags) if tag is not None and tag not in self._claimed]
        in_log = self.in_log([tags[i] for i in fresh]) if fresh else []  # type: ignore[misc]
        refused = {rows[i][0] for i, tag in enumerate(tags) if tag is not None and tag in self._claimed}
        refused.update(rows[i][0] for i, taken in zip(fresh, in_log) if taken)
        # A tag repeated within the call: the first relationship to use it keeps it. Only the tags of
        # relationships still admitted count, so refusing one may free a tag for another: repeat.
        while True:
            seen: set[bytes] = set()
            repeats: set[str] = set()
            for tag, (rid, _) in zip(tags, rows):
                if tag is None or rid in refused:
                    continue
                if tag in seen:
                    repeats.add(rid)
                seen.add(tag)
            if not repeats:
                break
            refused |= repeats
        admitted = [i for i, (rid, _) in enumerate(rows) if rid not in refused]
        self._claimed.update(t for t in (tags[i] for i in admitted) if t is not None)
        return admitted

    def release(self, entries: Sequence[bytes]) -> None:
        """Drop the claims of entries the sequencer is done with (committed, or refused as a whole)."""
        for entry in entries:
            tag = record_tag(entry)
            if tag is not None:
                self._claimed.discard(tag)

    @property
    def claimed(self) -> int:
        return len(self._claimed)
