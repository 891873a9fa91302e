"""The flush planner (recorder.plan): on-time, late, corrected and zero deltas, and closes, as the chain rules demand."""

from __future__ import annotations

from decimal import Decimal

import pytest

from pacspace.recorder.events import UsageEvent
from pacspace.recorder.plan import ChainFacts, Planner, period_end, windows_between
from pacspace.recorder.spool import Chain, SpooledEvent
from pacspace.recorder.windows import Cadence
from pacspace.records.body import GENESIS_PREV, Close, Common, Delta, Genesis, Line, body_hash, encode_body
from pacspace.records.body import PartyKeys as NamedKeys
from pacspace.records.chain import check_records
from pacspace.records.seal import Opened

RID = "acme:r1"
HOURLY = Cadence.parse("hourly")
NOW = "2026-12-01T00:10:00Z"


def genesis() -> Opened:
    body = Genesis(Common(RID, 0, GENESIS_PREV, "g", "2026-11-01T00:00:00Z"),
                   NamedKeys("acme", "eA==", "ZQ=="), NamedKeys("bob", "eA==", "ZQ=="), "hourly")
    return Opened(0, body, encode_body(body), b"")


def event(n: int, time: str, quantity: str = "1") -> SpooledEvent:
    start, end = HOURLY.window(time)
    return SpooledEvent(start, end, UsageEvent("s", f"e{n}", "c1", "tokens", "token", quantity, time))


class Chained:
    """A chain built from planner output, checked with the same rules every client applies."""

    def __init__(self) -> None:
        self.records = [genesis()]
        self.chain = Chain(RID, bytes(32), 1, body_hash(self.records[0].encoded))
        self.facts = ChainFacts()

    def flush(self, pending: list[SpooledEvent], cutoff: str, zero: tuple[Line, ...] | None = None):
        out, self.chain = Planner(self.chain, self.facts, HOURLY, cutoff, NOW, zero).plan(pending)
        for planned in out:
            seq = planned.body.common.seq
            self.records.append(Opened(seq, planned.body, planned.encoded, b""))
            body = planned.body
            if isinstance(body, Delta) and body.kind == "delta":
                self.facts.delta_seq[body.window_start] = seq
            if isinstance(body, Close):
                self.facts.close_seq[body.period] = seq
            if isinstance(body, Delta):
                self.facts.usage.setdefault(body.period, []).append((seq, planned.encoded))
        check_records(self.records)  # gapless, linked, closes that add up, no usage after its close
        return out


def total(records) -> Decimal:
    return sum((Decimal(line.quantity) for r in records if isinstance(r.body, Delta) for line in r.body.lines), Decimal(0))


def test_on_time_events_make_one_delta_per_window_and_wait_for_their_window_to_end():
    c = Chained()
    pending = [event(1, "2026-11-02T10:05:00Z", "2"), event(2, "2026-11-02T10:59:59Z", "0.5"),
               event(3, "2026-11-02T11:00:00Z"), event(4, "2026-11-02T12:30:00Z")]
    out = c.flush(pending, "2026-11-02T12:00:00Z")
    assert [(p.body.window_start, p.body.lines[0].quantity, len(p.counted)) for p in out] == [
        ("2026-11-02T10:00:00Z", "2.5", 2), ("2026-11-02T11:00:00Z", "1", 1)]
    assert all(not line.late for p in out for line in p.body.lines)
    assert out[0].body.evidence["events_count"] == "2"
    assert c.chain.next_seq == 3 and c.chain.open_periods == ["2026-11"]


def test_a_late_event_goes_into_the_next_delta_flagged_late():
    c = Chained()
    c.flush([event(1, "2026-11-02T10:05:00Z")], "2026-11-02T11:00:00Z")
    # Arrives after 10:00 was written: nothing to write until another window is due.
    assert c.flush([event(2, "2026-11-02T10:30:00Z", "7")], "2026-11-02T11:30:00Z") == []
    (delta,) = c.flush([event(2, "2026-11-02T10:30:00Z", "7"), event(3, "2026-11-02T11:10:00Z", "3")],
                       "2026-11-02T12:00:00Z")
    assert delta.body.window_start == "2026-11-02T11:00:00Z"
    assert [(line.quantity, line.late, line.event_count) for line in delta.body.lines] == [("3", False, 1), ("7", True, 1)]
    assert {e.event.event_id for e in delta.counted} == {"e2", "e3"}
    assert delta.body.evidence["events_count"] == "2"


def test_late_events_at_the_end_of_a_period_are_corrected_before_the_close():
    c = Chained()
    c.flush([event(1, "2026-11-30T23:05:00Z", "4")], "2026-11-30T23:59:00Z")  # not due yet
    first = c.flush([event(1, "2026-11-30T23:05:00Z", "4")], "2026-12-01T00:00:00Z")
    # The delta for 23:00 is written and November is closed at once (its last window ended).
    assert [p.body.kind for p in first] == ["delta", "close"]
    c2 = Chained()
    c2.flush([event(1, "2026-11-30T22:05:00Z", "4")], "2026-11-30T23:00:00Z")
    out = c2.flush([event(2, "2026-11-30T22:40:00Z", "6")], "2026-12-01T00:00:00Z")
    correction, close = (p.body for p in out)
    assert correction.kind == "correction" and correction.period == "2026-11" and correction.corrects == 1
    assert isinstance(close, Close) and close.record_count == 2 and close.totals[0].quantity == "10"


def test_an_event_of_a_closed_period_becomes_a_correction_in_the_current_one():
    c = Chained()
    c.flush([event(1, "2026-11-10T10:00:00Z", "5")], "2026-12-01T00:00:00Z")
    close_seq = c.facts.close_seq["2026-11"]
    (correction,) = c.flush([event(2, "2026-11-20T08:00:00Z", "2"), event(3, "2026-11-21T08:00:00Z", "1")],
                            "2026-12-01T03:00:00Z")
    body = correction.body
    assert (body.kind, body.period, body.corrects) == ("correction", "2026-12", close_seq)
    assert (body.window_start, body.window_end) == ("2026-11-20T08:00:00Z", "2026-11-21T09:00:00Z")
    assert body.lines[0].quantity == "3" and body.evidence["events_count"] == "2"
    # Billed with December: December's close counts it.
    out = c.flush([event(4, "2026-12-05T00:00:00Z", "1")], "2027-01-01T00:00:00Z")
    close = out[-1].body
    assert close.period == "2026-12" and close.record_count == 2 and close.totals[0].quantity == "4"


def test_a_flush_across_the_month_end_closes_between_the_periods():
    c = Chained()
    out = c.flush([event(1, "2026-11-30T23:10:00Z"), event(2, "2026-12-01T00:10:00Z"), event(3, "2026-11-30T10:00:00Z")],
                  "2026-12-01T02:00:00Z")
    assert [(p.body.kind, p.body.period) for p in out] == [
        ("delta", "2026-11"), ("delta", "2026-11"), ("close", "2026-11"), ("delta", "2026-12")]
    assert c.chain.open_periods == ["2026-12"] and c.chain.closed_periods == ["2026-11"]


def test_zero_deltas_cover_every_window_and_hide_who_was_idle():
    zero = (Line("tokens", "token", "0", {}, 0),)
    c = Chained()
    first = c.flush([], "2026-11-02T10:00:00Z", zero)
    assert [p.body.window_start for p in first] == ["2026-11-02T09:00:00Z"]  # from the last complete window
    out = c.flush([event(1, "2026-11-02T11:30:00Z", "9")], "2026-11-02T13:00:00Z", zero)
    assert [(p.body.window_start, p.body.lines[0].quantity) for p in out] == [
        ("2026-11-02T10:00:00Z", "0"), ("2026-11-02T11:00:00Z", "9"), ("2026-11-02T12:00:00Z", "0")]
    assert out[0].body.evidence["events_count"] == "0"
    assert c.chain.covered_until == "2026-11-02T13:00:00Z"
    assert c.flush([], "2026-11-02T13:30:00Z", zero) == []
    assert total(c.records) == 9


@pytest.mark.parametrize("cadence,expected", [("hourly", 3), ("15m", 12), ("daily", 0)])
def test_windows_between_counts_whole_windows(cadence, expected):
    windows = windows_between(Cadence.parse(cadence), "2026-11-02T10:00:00Z", "2026-11-02T13:10:00Z")
    assert len(windows) == expected
    assert all(end <= "2026-11-02T13:10:00Z" and start >= "2026-11-02T10:00:00Z" for start, end in windows)


def test_period_end_rolls_over_the_year():
    assert period_end("2026-12") == "2027-01-01T00:00:00Z" and period_end("2026-02") == "2026-03-01T00:00:00Z"


def test_a_month_without_usage_is_closed_too_in_order():
    c = Chained()
    c.flush([event(1, "2026-10-10T10:00:00Z", "2")], "2026-11-01T00:00:00Z")  # October: a delta and its close
    assert c.chain.closed_periods == ["2026-10"]
    assert c.flush([], "2026-11-30T23:00:00Z") == []  # November has not ended
    out = c.flush([event(2, "2027-01-03T10:00:00Z", "5")], "2027-01-04T00:00:00Z")
    assert [(p.body.kind, p.body.period) for p in out] == [("close", "2026-11"), ("close", "2026-12"), ("delta", "2027-01")]
    quiet = out[0].body
    assert (quiet.record_count, quiet.totals, quiet.first_seq) == (0, (), quiet.last_seq + 1)


def test_a_chain_without_usage_has_no_billing_cycle_to_close():
    c = Chained()
    assert c.flush([], "2027-03-01T00:00:00Z") == []


def test_a_window_with_more_lines_than_a_delta_holds_is_split_never_stuck():
    c = Chained()
    start, end = HOURLY.window("2026-11-02T10:00:00Z")
    pending = [SpooledEvent(start, end, UsageEvent("s", f"e{i}", "c1", "tokens", "token", "1", "2026-11-02T10:05:00Z",
                                                   {"user": f"u{i:04d}"})) for i in range(2500)]
    out = c.flush(pending, "2026-11-02T11:00:00Z")
    assert [len(p.body.lines) for p in out] == [1000, 1000, 500]
    assert len({p.body.common.record_id for p in out}) == 3 and all(p.body.window_start == start for p in out)
    assert sum(len(p.counted) for p in out) == 2500 and total(c.records) == 2500
    assert sum(int(p.body.evidence["events_count"]) for p in out) == 2500
