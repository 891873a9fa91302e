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
    a delta whose window overlaps an earlier delta's window. The latest
    delta's window again is allowed for lines it does not have yet (one
    window's lines split over several deltas), never for the same line.
``negative_quantity``
    a delta (not a correction) with a negative quantity.

What a flagged record does to the rest: a delta flagged only for its window, an
overlap or its sign is still usage of its period, and the period's close counts
it. A delta its period cannot hold (closed, or passed) joins no period and no
total, and a flagged close closes nothing. So one bad record never turns the
honest records after it into findings too.

With no finding anywhere in a chain, these rules accept exactly the chains that
pacspace accepted before they existed (no usage after its period's close, and
closes that cover one contiguous run and add up), so an older customer client
and this one agree on every rule-abiding chain.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import exitcodes
from ..errors import PacspaceError
from .body import Close, Delta, Genesis, Line, Tally, body_hash, period_bounds
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


class _Windows:
    """The windows of the deltas so far: their union, for overlaps, and the latest window's lines."""

    def __init__(self) -> None:
        self._starts: list[str] = []  # disjoint, sorted intervals [start, end) of the union
        self._ends: list[str] = []
        self._latest: tuple[str, str] | None = None
        self._latest_seq = -1
        self._latest_lines: set[LineKey] = set()

    def conflict(self, delta: Delta) -> str | None:
        window = (delta.window_start, delta.window_end)
        if window == self._latest:
            again = sorted({line.meter for line in delta.lines if not line.late and line.key() in self._latest_lines})
            if again:
                return f"its window {_show(window)} is seq {self._latest_seq}'s, and counts {', '.join(again)} again"
            return None
        start, end = window
        if start < end:
            i = bisect_left(self._starts, end) - 1
            if i >= 0 and self._ends[i] > start:
                return f"its window {_show(window)} overlaps {_show((self._starts[i], self._ends[i]))}, already recorded"
        return None

    def add(self, seq: int, delta: Delta) -> None:
        window = (delta.window_start, delta.window_end)
        keys = {line.key() for line in delta.lines if not line.late}
        if window == self._latest:
            self._latest_lines |= keys
        else:
            self._latest, self._latest_seq, self._latest_lines = window, seq, keys
        start, end = window
        if start >= end:
            return
        i = bisect_left(self._starts, start)
        if i > 0 and self._ends[i - 1] >= start:
            i -= 1
        j = i
        while j < len(self._starts) and self._starts[j] <= end:
            start, end = min(start, self._starts[j]), max(end, self._ends[j])
            j += 1
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def to_json(self) -> dict[str, Any]:
        return {"union": [list(w) for w in zip(self._starts, self._ends)], "latest": self._latest,
                "latest_seq": self._latest_seq, "latest_lines": [_key_json(k) for k in sorted(self._latest_lines)]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> _Windows:
        out = cls()
        out._starts = [w[0] for w in obj["union"]]
        out._ends = [w[1] for w in obj["union"]]
        out._latest = None if obj["latest"] is None else (obj["latest"][0], obj["latest"][1])
        out._latest_seq = int(obj["latest_seq"])
        out._latest_lines = {_key_of(k) for k in obj["latest_lines"]}
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
                self._runs.pop(body.period, None)
                self._latest = max(self._latest, body.period)
                self._last_counted = seq
        self._prev_seq, self._head = seq, body_hash(record.encoded)
        return findings

    def _count_usage(self, record: Opened, delta: Delta) -> None:
        seq, period = record.seq, delta.period
        run = self._runs.get(period)
        if run is None:
            run = self._runs[period] = _Run(seq, seq, 0, "")
        run.last, run.count, run.head = seq, run.count + 1, body_hash(record.encoded)
        run.tally.add(delta)
        if delta.corrects is None:
            self._windows.add(seq, delta)
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
        first, last, count, head, lines = self.expected_close(period, seq)
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
            waiting = [p for p in self.open_periods() if p < body.period]
            if waiting:
                return (f"{waiting[0]} is still open: close it first (pacspace close --period {waiting[0]}), "
                        f"then record {body.period}")
        elif isinstance(body, Close):
            for period, run in self._runs.items():
                if period != body.period and period not in self._closed and run.last == self._last_counted:
                    return (f"closing {body.period} now would split {period}'s records (seq {run.first}..{run.last}) "
                            f"from its next ones: close {period} first")
        return None
