"""What one flush writes to one relationship's chain, decided from what is spooled. Pure.

The rules, for a flush at ``cutoff`` (its time minus the grace):

- **On time.** An event whose window has no delta yet and ended by the cutoff
  is counted in that window's delta.
- **Late.** An event whose window already has a delta, in a period still
  open, is counted in the next delta of that period, on lines flagged
  ``late``. If the period ends (is closed) in this flush before another of its
  windows is due, the late events go into a correction of that period, just
  before its close, so the close and the invoice count them.
- **After the close.** An event of a period already closed (or of an earlier
  period than the chain has moved on to) goes into a correction record in the
  current period, whose ``corrects`` names the record that covered its window:
  the window's delta, else the period's close, else the record before it.
  Nothing is ever amended.
- **Zero deltas** (optional): every window of the cadence gets a delta, with
  zero lines if nothing was used, so the log's shape does not tell who was busy.
- **Closes.** A period is closed once it has ended by the cutoff, after its
  last delta and before anything of the next period, so each period's records
  are one contiguous run (records.chain.check_close). A month without usage,
  after the chain's first, gets a close of nothing: the invoice of a quiet
  month can cite one too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from ..records.body import Close, Common, Delta, Line, body_hash, decode_body, encode_body, period_bounds, totals
from ..records.rules import Ledger
from ..records.seal import Opened
from .aggregate import WindowUsage, events_root
from .spool import Chain, SpooledEvent
from .windows import Cadence, period_of

_FMT = "%Y-%m-%dT%H:%M:%SZ"
SOURCE = "pacspace-recorder"
MAX_LINES = 1000  # lines a delta may hold (records.body)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, _FMT).replace(tzinfo=timezone.utc)


def format_time(when: datetime) -> str:
    return when.strftime(_FMT)


def period_end(period: str) -> str:
    """The first instant after a billing period (a month)."""
    return period_bounds(period)[1]


def windows_between(cadence: Cadence, start: str | None, cutoff: str, limit: int = 100_000) -> list[tuple[str, str]]:
    """The cadence's windows that end by ``cutoff`` and start at or after ``start``.

    With no ``start``, just the last window that ended by the cutoff.
    """
    first_start, _ = cadence.window(format_time(parse_time(cutoff) - timedelta(seconds=1)))
    last = cadence.window(first_start)
    if last[1] > cutoff:
        last = cadence.window(format_time(parse_time(last[0]) - timedelta(seconds=1)))
    if start is None:
        return [last]
    out: list[tuple[str, str]] = []
    window = cadence.window(start)
    if window[0] < start:
        window = cadence.window(window[1])
    while window[1] <= cutoff and len(out) < limit:
        out.append(window)
        window = cadence.window(window[1])
    return out


@dataclass(frozen=True)
class PlannedRecord:
    """A record to seal and append, and the events it counts."""

    body: Delta | Close
    encoded: bytes
    counted: tuple[SpooledEvent, ...] = ()

    @property
    def window_start(self) -> str | None:
        return self.body.window_start if isinstance(self.body, Delta) and self.body.kind == "delta" else None


@dataclass
class ChainFacts:
    """What the spool knows beyond the chain row: which windows have a delta, each closed period's close,
    and the (seq, encoded body) of the usage records of each period that may close in this flush."""

    delta_seq: dict[str, int] = field(default_factory=dict)  # window start -> seq of its delta
    close_seq: dict[str, int] = field(default_factory=dict)  # closed period -> seq of its close
    usage: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)


def candidate_windows(
    chain: Chain, pending: list[SpooledEvent], cadence: Cadence, cutoff: str, zero_deltas: bool
) -> set[str]:
    """Window starts whose delta status the planner needs (pending events' windows, and zero-delta windows)."""
    starts = {e.window_start for e in pending}
    if zero_deltas:
        starts |= {s for s, _ in windows_between(cadence, chain.covered_until, cutoff)}
    return starts


def next_period(period: str) -> str:
    return period_end(period)[:7]


def quiet_periods(chain: Chain, cutoff: str) -> list[str]:
    """Months after the chain's latest period that ended by ``cutoff`` with no usage: each still gets its close."""
    latest = max(chain.open_periods + chain.closed_periods, default="")
    out: list[str] = []
    if not latest:
        return out  # the chain never had usage: no billing cycle has started
    period = next_period(latest)
    while period_end(period) <= cutoff and len(out) < 1200:
        out.append(period)
        period = next_period(period)
    return out


def closing_periods(chain: Chain, pending: list[SpooledEvent], cutoff: str) -> list[str]:
    """Periods that may be closed by a flush at ``cutoff`` (whose usage records the planner needs)."""
    periods = set(chain.open_periods) | {period_of(e.window_start) for e in pending}
    return sorted(p for p in periods if period_end(p) <= cutoff and p not in chain.closed_periods)


class Planner:
    """Plans one relationship's records for one flush; ``plan()`` returns them in chain order, and the new chain."""

    def __init__(
        self, chain: Chain, facts: ChainFacts, cadence: Cadence, cutoff: str, now: str,
        zero_lines: tuple[Line, ...] | None,
    ) -> None:
        self.chain = replace(chain, open_periods=list(chain.open_periods), closed_periods=list(chain.closed_periods))
        self.facts = facts
        self.cadence = cadence
        self.cutoff = cutoff
        self.now = now
        self.zero_lines = zero_lines
        self.out: list[PlannedRecord] = []
        self.written: dict[str, list[tuple[int, bytes]]] = {}
        # The protocol rules' view of the chain (records.rules), when the spool keeps one: closes state what it
        # says, and wait while closing would split another period's records.
        self.ledger = Ledger.from_json(chain.rules) if chain.rules else None

    def plan(self, pending: list[SpooledEvent]) -> tuple[list[PlannedRecord], Chain]:
        chain, facts = self.chain, self.facts
        latest = max(chain.open_periods + chain.closed_periods, default="")
        on_time: dict[tuple[str, str], list[SpooledEvent]] = {}
        late: dict[str, list[SpooledEvent]] = {}
        retired: dict[str, list[SpooledEvent]] = {}
        for e in pending:
            period = period_of(e.window_start)
            if period in chain.closed_periods or period < latest:
                retired.setdefault(period, []).append(e)
            elif e.window_start in facts.delta_seq:
                late.setdefault(period, []).append(e)
            elif e.window_end <= self.cutoff:
                on_time.setdefault((e.window_start, e.window_end), []).append(e)
        if self.zero_lines is not None:
            for window in windows_between(self.cadence, chain.covered_until, self.cutoff):
                if window[0] not in facts.delta_seq and period_of(window[0]) >= latest \
                        and period_of(window[0]) not in chain.closed_periods:
                    on_time.setdefault(window, [])
                chain.covered_until = max(chain.covered_until or "", window[1])
        periods = sorted({period_of(s) for s, _ in on_time} | set(late) | set(chain.open_periods)
                         | set(quiet_periods(chain, self.cutoff)))
        for period in periods:
            windows = sorted(w for w in on_time if period_of(w[0]) == period)
            for n, window in enumerate(windows):
                extra = late.pop(period, []) if n == 0 else []
                self._delta(period, window, on_time[window], extra)
            if period_end(period) <= self.cutoff:
                if period in late:
                    events = late.pop(period)
                    self._correction(period, events, facts.delta_seq[min(e.window_start for e in events)])
                self._close(period)
        current = period_of(self.cutoff)
        for period, events in sorted(retired.items()):
            if current in chain.closed_periods or current < max(chain.open_periods + chain.closed_periods):
                break  # the current period is closed, or the chain is ahead of it: the events stay pending
            first = min(e.window_start for e in events)
            corrects = facts.delta_seq.get(first) or facts.close_seq.get(period) or chain.next_seq - 1
            self._correction(current, events, corrects)
        return self.out, chain

    def _common(self, record_id: str) -> Common:
        return Common(self.chain.relationship, self.chain.next_seq, self.chain.head, record_id, self.now)

    def _append(self, body: Delta | Close, counted: tuple[SpooledEvent, ...] = ()) -> None:
        encoded = encode_body(body)
        self.out.append(PlannedRecord(body, encoded, counted))
        if self.ledger is not None:
            self.ledger.add(Opened(body.common.seq, body, encoded, b""))
        chain = self.chain
        if isinstance(body, Delta):
            self.written.setdefault(body.period, []).append((chain.next_seq, encoded))
            if body.period not in chain.open_periods:
                chain.open_periods.append(body.period)
                chain.open_periods.sort()
        chain.next_seq += 1
        chain.head = body_hash(encoded)

    def _delta(self, period: str, window: tuple[str, str], events: list[SpooledEvent], late: list[SpooledEvent]) -> None:
        # More than MAX_LINES lines (meters x dimensions) in one window: one delta per MAX_LINES.
        for n, part in enumerate(_in_parts([(e, False) for e in events] + [(e, True) for e in late])):
            usage = WindowUsage(self.chain.relationship, window[0], window[1])
            late_usage = WindowUsage(self.chain.relationship, window[0], window[1])
            for e, is_late in part:
                (late_usage if is_late else usage).add(e.event)
            lines = usage.lines() + tuple(replace(line, late=True) for line in late_usage.lines())
            body = Delta(
                self._common(f"window-{window[0]}" + (f"-{n + 1}" if n else "")), period, window[0], window[1],
                lines or self.zero_lines or (), evidence=_evidence(usage.digests + late_usage.digests),
            )
            self._append(body, tuple(e for e, _ in part))

    def _correction(self, period: str, events: list[SpooledEvent], corrects: int) -> None:
        start = min(e.window_start for e in events)
        end = max(e.window_end for e in events)
        for part in _in_parts([(e, False) for e in events]):
            usage = WindowUsage(self.chain.relationship, start, end)
            for e, _ in part:
                usage.add(e.event)
            body = Delta(
                self._common(f"correction-{self.chain.next_seq}"), period, start, end, usage.lines(),
                evidence=_evidence(usage.digests), corrects=corrects,
            )
            self._append(body, tuple(e for e, _ in part))

    def _close(self, period: str) -> None:
        if self.ledger is not None:
            first, last, count, chain_head, sums = self.ledger.expected_close(period, self.chain.next_seq)
            body = Close(self._common(f"close-{period}"), period, first, last, count, chain_head, sums)
            if self.ledger.hazard(Opened(body.common.seq, body, encode_body(body), b"")) is not None:
                return  # another period's run is at the chain's end: this close waits for its close
        else:
            usage = self.facts.usage.get(period, []) + self.written.get(period, [])
            if usage:
                first, last = usage[0][0], usage[-1][0]
                chain_head = body_hash(usage[-1][1])
            else:
                last = self.chain.next_seq - 1
                first, chain_head = last + 1, self.chain.head
            deltas = [b for b in (decode_body(encoded) for _, encoded in usage) if isinstance(b, Delta)]
            body = Close(self._common(f"close-{period}"), period, first, last, len(usage), chain_head, totals(deltas))
        self._append(body)
        chain = self.chain
        chain.open_periods = [p for p in chain.open_periods if p != period]
        chain.closed_periods = sorted(set(chain.closed_periods) | {period})


def _in_parts(tagged: list[tuple[SpooledEvent, bool]]) -> list[list[tuple[SpooledEvent, bool]]]:
    """Events (with their late flag) split so that no part makes more than MAX_LINES lines."""
    by_line: dict[tuple[object, ...], list[tuple[SpooledEvent, bool]]] = {}
    for e, late in tagged:
        ev = e.event
        by_line.setdefault((ev.meter, ev.unit, tuple(sorted(ev.dimensions.items())), late), []).append((e, late))
    keys = sorted(by_line)
    return [[x for k in keys[i : i + MAX_LINES] for x in by_line[k]] for i in range(0, len(keys), MAX_LINES)] or [[]]


def _evidence(digests: list[bytes]) -> dict[str, str]:
    return {"events_root": events_root(digests).hex(), "events_count": str(len(digests)), "source": SOURCE}
