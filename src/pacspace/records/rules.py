"""The protocol rules an authentic record can still break: findings, never failures. Pure.

A record that opens with its key, carries the provider's signature and extends
the chain (records.chain.check_next) is authentic: the provider said it, and the
log keeps it forever. It may still break a rule of the protocol. That makes it
a *finding*, not a failure: the customer's monitor keeps it (it is the
customer's best evidence), reports it, and goes on past it. The provider's own
client checks each record against the same rules before sending it, and
refuses what they would flag.

The rules, each with its stable kind (docs/monitor.md):

``usage_in_closed_period``
    a delta or correction for a period whose close is already in the chain.
``usage_out_of_order``
    a delta or correction for a period earlier than one the chain has moved on
    to, or one that would split its period's records: each period's usage
    records form one contiguous run, so that one close can cover them.
``bad_close``
    a close that does not cover exactly its period's records (first and last
    seq, count, chain head), whose totals are not their sum, or that closes a
    period a second time.
``window_outside_period``
    a delta whose window does not lie within its period (a calendar month, UTC).
``overlapping_window``
    a delta that counts a line (a meter, unit and dimensions) for time an
    earlier delta counted it for: their windows overlap, or are the same
    instant. Other lines may share a window (one window's lines split over
    several deltas, or meters that arrive an hour apart); late lines, flagged
    as such, count earlier usage and overlap nothing.
``negative_quantity``
    a delta (not a correction) with a negative quantity.

What a flagged record does to the rest: a delta flagged only for its window, an
overlap or its sign is still usage of its period, and the period's close counts
it. A delta its period cannot hold (closed, or passed) joins no period and no
total, and a flagged close closes nothing. So one bad record never turns the
honest records after it into findings too.

Every chain with no finding here is one that the rules pacspace applied before
findings existed accept too (no usage after its period's close, and closes that
cover one contiguous run and add up), so an older customer client accepts
every chain the current provider client writes. The converse does not hold:
these rules flag some chains the older ones accepted (a negative delta, say).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import exitcodes
from ..errors import PacspaceError
from .body import Close, Delta, Genesis, InvalidBody, Line, Tally, period_bounds
from .seal import Opened

KINDS = (
    "usage_in_closed_period",
    "usage_out_of_order",
    "bad_close",
    "window_outside_period",
    "overlapping_window",
    "negative_quantity",
)


@dataclass(frozen=True)
class Finding:
    """One rule one record breaks: what, where, and what the provider should have done instead."""

    kind: str
    seq: int
    period: str
    message: str
    fix: str

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "seq": self.seq, "period": self.period, "message": self.message, "fix": self.fix}


class RuleBroken(PacspaceError):
    """The provider's client refuses, before sending, a record that would break a protocol rule."""

    code = "rule_broken"
    http_status = 422
    exit_code = exitcodes.USAGE

    def __init__(self, message: str, findings: Iterable[Finding] = ()) -> None:
        super().__init__(message)
        self.findings = tuple(findings)


@dataclass
class _Run:
    """One period's usage records so far: what its close must state."""

    first: int
    last: int
    count: int
    head: str
    tally: Tally = field(default_factory=Tally)


LineKey = tuple[str, str, tuple[tuple[str, str], ...]]


class _Span:
    """The time one line (meter, unit, dimensions) has been counted for: a union of windows, and the instants of
    zero-length windows."""

    def __init__(self) -> None:
        self.starts: list[str] = []  # disjoint, sorted intervals [start, end)
        self.ends: list[str] = []
        self.points: list[str] = []  # sorted

    def overlap(self, start: str, end: str) -> str | None:
        """What of this span the window [start, end) (an instant if start == end) meets, shown; None if nothing."""
        # The interval starting last at or before the instant, or before the window's end.
        i = (bisect_right(self.starts, start) if start == end else bisect_left(self.starts, end)) - 1
        if i >= 0 and self.ends[i] > start:
            return _show((self.starts[i], self.ends[i]))
        j = bisect_left(self.points, start)
        if j < len(self.points) and (self.points[j] < end or self.points[j] == start):
            return self.points[j]
        return None

    def add(self, start: str, end: str) -> None:
        if start == end:
            insort(self.points, start)
            return
        i = bisect_left(self.starts, start)
        if i > 0 and self.ends[i - 1] >= start:
            i -= 1
        j = i
        while j < len(self.starts) and self.starts[j] <= end:
            start, end = min(start, self.starts[j]), max(end, self.ends[j])
            j += 1
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]


class _Windows:
    """For each line, the time it has been counted for: a delta that counts a line again for a time already
    counted overlaps (late lines, flagged as such, count earlier usage and are not windows of their own)."""

    def __init__(self) -> None:
        self._spans: dict[LineKey, _Span] = {}

    def conflict(self, delta: Delta) -> str | None:
        for line in delta.lines:
            span = self._spans.get(line.key())
            hit = None if line.late or span is None else span.overlap(delta.window_start, delta.window_end)
            if hit is not None:
                return (f"its window {_show((delta.window_start, delta.window_end))} counts {line.meter} again, "
                        f"for time already counted ({hit})")
        return None

    def add(self, delta: Delta) -> None:
        for line in delta.lines:
            if not line.late:
                self._spans.setdefault(line.key(), _Span()).add(delta.window_start, delta.window_end)

    def to_json(self) -> list[Any]:
        return [[_key_json(key), [list(w) for w in zip(span.starts, span.ends)], span.points]
                for key, span in sorted(self._spans.items())]

    @classmethod
    def from_json(cls, rows: list[Any]) -> _Windows:
        out = cls()
        for key, union, points in rows:
            span = out._spans[_key_of(key)] = _Span()
            span.starts, span.ends, span.points = [w[0] for w in union], [w[1] for w in union], list(points)
        return out


def _key_json(key: LineKey) -> list[Any]:
    return [key[0], key[1], [list(d) for d in key[2]]]


def _key_of(obj: list[Any]) -> LineKey:
    return obj[0], obj[1], tuple((d[0], d[1]) for d in obj[2])


def _show(window: tuple[str, str]) -> str:
    return f"{window[0]}/{window[1]}"


class Ledger:
    """What the rules need to know of a chain, built record by record (O(log n) a record; closes O(lines)).

    Feed it every record of a chain in order, each after check_next accepted
    it: ``add`` returns the record's findings and takes it in. ``check`` says
    what ``add`` would return, without taking it in. A ledger can start after
    the genesis (an evidence bundle holds one period): ``after_seq`` and
    ``head`` then describe the record before the first one fed.
    """

    def __init__(self, after_seq: int = -1, head: str | None = None) -> None:
        self._prev_seq = after_seq
        self._head = head
        # The last record that counts: genesis, a period's usage, a valid close. Flagged records are
        # transparent: they split no run.
        self._last_counted = after_seq
        self._closed: dict[str, int] = {}
        self._latest = ""
        self._runs: dict[str, _Run] = {}
        self._windows = _Windows()

    @property
    def closed(self) -> dict[str, int]:
        """Each closed period and the seq of its (first valid) close."""
        return dict(self._closed)

    def open_periods(self) -> list[str]:
        """Periods with usage and no valid close yet."""
        return sorted(p for p in self._runs if p not in self._closed)

    def check(self, record: Opened) -> list[Finding]:
        body = record.body
        if isinstance(body, Delta):
            return self._usage(record.seq, body)[0]
        if isinstance(body, Close):
            return self._close(record.seq, body)
        return []

    def add(self, record: Opened) -> list[Finding]:
        body, seq = record.body, record.seq
        findings: list[Finding] = []
        if isinstance(body, Genesis):
            self._last_counted = seq
        elif isinstance(body, Delta):
            findings, excluded = self._usage(seq, body)
            if not excluded:
                self._count_usage(record, body)
        elif isinstance(body, Close):
            findings = self._close(seq, body)
            if not findings:
                self._closed[body.period] = seq
                if self._runs.pop(body.period, None) is not None:
                    # Only usage moves the chain on: closing an empty month ahead of time passes no period.
                    self._latest = max(self._latest, body.period)
                self._last_counted = seq
        self._prev_seq, self._head = seq, record.head
        return findings

    def _count_usage(self, record: Opened, delta: Delta) -> None:
        seq, period = record.seq, delta.period
        run = self._runs.get(period)
        if run is None:
            run = self._runs[period] = _Run(seq, seq, 0, "")
        run.last, run.count, run.head = seq, run.count + 1, record.head
        run.tally.add(delta)
        if delta.corrects is None:
            self._windows.add(delta)
        self._latest = max(self._latest, period)
        self._last_counted = seq

    def _usage(self, seq: int, delta: Delta) -> tuple[list[Finding], bool]:
        """The findings of a delta or correction, and whether its period cannot hold it."""
        period = delta.period
        found: list[Finding] = []

        def flag(kind: str, message: str, fix: str) -> None:
            found.append(Finding(kind, seq, period, f"seq {seq}: {message}", fix))

        excluded = True
        if period in self._closed:
            flag("usage_in_closed_period", f"usage for {period}, which seq {self._closed[period]} already closed",
                 f"{period} is closed: record a correction in the open period")
        elif self._latest > period:
            flag("usage_out_of_order", f"usage for {period} after the chain moved on to {self._latest}",
                 f"{period} has passed: record a correction in {self._latest}")
        elif period in self._runs and self._runs[period].last != self._last_counted:
            flag("usage_out_of_order",
                 f"usage for {period} after seq {self._last_counted}, which is not {period}'s: "
                 f"{period}'s records would not be one run that a close can cover",
                 f"record it in the period that seq {self._last_counted} belongs to")
        else:
            excluded = False
        if delta.corrects is None:
            start, end = period_bounds(period)
            if not start <= delta.window_start <= delta.window_end <= end:
                flag("window_outside_period",
                     f"its window {delta.window_start}/{delta.window_end} is not within {period}",
                     "record usage in the period its window falls in (split a window that spans two)")
            overlap = self._windows.conflict(delta)
            if overlap is not None:
                flag("overlapping_window", overlap,
                     "record more usage of a window already recorded as a correction naming its delta")
            negative = sorted({line.meter for line in delta.lines if line.quantity.startswith("-")})
            if negative:
                flag("negative_quantity", f"negative quantity of {', '.join(negative)} outside a correction",
                     "record a decrease as a correction naming the delta it adjusts")
        return found, excluded

    def _close(self, seq: int, close: Close) -> list[Finding]:
        period = close.period

        def bad(message: str) -> list[Finding]:
            return [Finding("bad_close", seq, period, f"seq {seq}: {message}",
                            f"let the client compute the close (pacspace close --period {period})")]

        if period in self._closed:
            return bad(f"period {period} is closed twice (first by seq {self._closed[period]})")
        try:
            first, last, count, head, lines = self.expected_close(period, seq)
        except InvalidBody:
            return bad(f"the totals of {period} are longer than a close may state: no close can cover them")
        if (close.first_seq, close.last_seq) != (first, last):
            return bad(f"close for {period} covers seq {close.first_seq}..{close.last_seq}, "
                       f"but the period's records are seq {first}..{last}")
        if close.record_count != count:
            return bad(f"close for {period} counts {close.record_count} records, the chain has {count}")
        if close.chain_head != head:
            return bad(f"close for {period}: chain_head does not name seq {last}")
        if [t.to_json() for t in close.totals] != [t.to_json() for t in lines]:
            return bad(f"close for {period}: totals differ from the sum of its records")
        return []

    def expected_close(self, period: str, seq: int) -> tuple[int, int, int, str, tuple[Line, ...]]:
        """What a close of ``period`` at ``seq`` must state: (first_seq, last_seq, record_count, chain_head, totals).

        With no usage, the close covers nothing, right after the record before it.
        """
        run = self._runs.get(period)
        if run is not None:
            return run.first, run.last, run.count, run.head, run.tally.lines()
        if self._head is None or seq != self._prev_seq + 1:
            raise RuleBroken(f"a close of {period} at seq {seq} cannot be computed here")
        return seq, seq - 1, 0, self._head, ()

    def to_json(self) -> dict[str, Any]:
        """The ledger's whole state, compact (open periods only), for a client that extends a chain without
        refetching it (the recorder's spool)."""
        return {
            "prev_seq": self._prev_seq, "head": self._head, "last_counted": self._last_counted,
            "closed": self._closed, "latest": self._latest, "windows": self._windows.to_json(),
            "runs": {p: {"first": r.first, "last": r.last, "count": r.count, "head": r.head, "tally": r.tally.to_json()}
                     for p, r in self._runs.items()},
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Ledger:
        ledger = cls(int(obj["prev_seq"]), obj["head"])
        ledger._last_counted = int(obj["last_counted"])
        ledger._closed = {str(p): int(s) for p, s in obj["closed"].items()}
        ledger._latest = str(obj["latest"])
        ledger._windows = _Windows.from_json(obj["windows"])
        ledger._runs = {p: _Run(int(r["first"]), int(r["last"]), int(r["count"]), str(r["head"]),
                                Tally.from_json(r["tally"])) for p, r in obj["runs"].items()}
        return ledger

    def hazard(self, record: Opened) -> str | None:
        """What the provider's client refuses beyond the findings: a rule-abiding record that would leave a
        period impossible to close. ``None`` if the record is safe."""
        body = record.body
        if isinstance(body, Delta):
            run = self._runs.get(body.period)
            waiting = [p for p in self.open_periods() if p < body.period]
            if waiting and run is None:
                return (f"{waiting[0]} is still open: close it first (pacspace close --period {waiting[0]}), "
                        f"then record {body.period}")
            tally = Tally() if run is None else Tally.from_json(run.tally.to_json())
            tally.add(body)
            try:
                tally.lines()
            except InvalidBody:
                return f"{body.period}'s totals would need more digits than a close may state (64): no close could state them"
        elif isinstance(body, Close):
            for period, run in self._runs.items():
                if period != body.period and period not in self._closed and run.last == self._last_counted:
                    return (f"closing {body.period} now would split {period}'s records (seq {run.first}..{run.last}) "
                            f"from its next ones: close {period} first")
        return None
