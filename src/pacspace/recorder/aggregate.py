"""Aggregation of usage events into deltas, with an ``events_root`` per delta. Pure.

Quantities add exactly (decimal, no rounding). Each record gets one line per
meter, unit and dimensions, with its event count, and the RFC 9162 root over
the sorted digests of the events it counted, so one event can be proven to be
in exactly one record.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from ..merkle import Hash, ListHashReader, inclusion_proof, leaf_hash, tree_hash
from ..records.body import Line, canonical_decimal, exact
from .events import UsageEvent
from .windows import period_of

LineKey = tuple[str, str, tuple[tuple[str, str], ...]]


@dataclass
class WindowUsage:
    """What one relationship used in one window."""

    relationship: str
    window_start: str
    window_end: str
    sums: dict[LineKey, Decimal] = field(default_factory=dict)
    counts: dict[LineKey, int] = field(default_factory=dict)
    digests: list[bytes] = field(default_factory=list)
    first_time: str = ""
    last_time: str = ""

    @property
    def period(self) -> str:
        return period_of(self.window_start)

    def add(self, event: UsageEvent) -> None:
        key = (event.meter, event.unit, tuple(sorted(event.dimensions.items())))
        self.sums[key] = exact().add(self.sums.get(key, Decimal(0)), Decimal(event.quantity))
        self.counts[key] = self.counts.get(key, 0) + 1
        self.digests.append(event.digest())
        self.first_time = min(self.first_time or event.time, event.time)
        self.last_time = max(self.last_time, event.time)

    def lines(self) -> tuple[Line, ...]:
        out = []
        for key in sorted(self.sums):
            meter, unit, dims = key
            out.append(Line(meter, unit, canonical_decimal(self.sums[key]), dict(dims), self.counts[key]))
        return tuple(out)

    def events_root(self) -> Hash:
        return events_root(self.digests)


def events_root(digests: Iterable[bytes]) -> Hash:
    """RFC 9162 root over the sorted event digests (order of arrival does not matter)."""
    ordered = sorted(digests)
    return tree_hash(len(ordered), ListHashReader([leaf_hash(d) for d in ordered]))


def prove_event(digests: Iterable[bytes], digest: bytes) -> tuple[int, int, list[Hash]]:
    """(index, size, inclusion path) of one event digest under :func:`events_root`."""
    ordered = sorted(digests)
    index = ordered.index(digest)
    return index, len(ordered), inclusion_proof(index, len(ordered), ListHashReader([leaf_hash(d) for d in ordered]))
