"""The protocol rules (records.rules): each finding kind, what a flagged record does to the rest, the compact state,
and agreement with the rules pacspace applied before findings existed."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacspace.records.body import (
    GENESIS_PREV,
    Body,
    Close,
    Common,
    Delta,
    Genesis,
    InvalidBody,
    Line,
    PartyKeys,
    body_hash,
    encode_body,
    totals,
)
from pacspace.records.rules import Ledger
from pacspace.records.seal import Opened

RID = "acme:rules"


def _opened(body: Body) -> Opened:
    return Opened(body.common.seq, body, encode_body(body), b"")


class Chain:
    """Builds a chain's bodies the way a provider would, for the ledger to judge."""

    def __init__(self) -> None:
        keys = PartyKeys("p", "eA==", "ZQ==")
        self.records = [_opened(Genesis(Common(RID, 0, GENESIS_PREV, "g", "2026-11-01T00:00:00Z"), keys, keys))]

    def _common(self) -> Common:
        last = self.records[-1]
        return Common(RID, last.seq + 1, body_hash(last.encoded), f"r{last.seq + 1}", "2026-12-01T00:00:00Z")

    def delta(self, period: str, window: tuple[str, str], quantity: str = "1", meter: str = "m", late: bool = False,
              corrects: int | None = None) -> Opened:
        record = _opened(Delta(self._common(), period, window[0], window[1], (Line(meter, "u", quantity, {}, late=late),),
                               corrects=corrects))
        self.records.append(record)
        return record

    def close(self, period: str, ledger: Ledger | None = None, **override: object) -> Opened:
        """The close a correct client computes (from a fresh ledger over the chain), with fields overridden."""
        if ledger is None:
            ledger = Ledger()
            for r in self.records:
                ledger.add(r)
        common = self._common()
        first, last, count, head, lines = ledger.expected_close(period, common.seq)
        fields = {"first_seq": first, "last_seq": last, "record_count": count, "chain_head": head, "totals": lines}
        fields.update(override)
        record = _opened(Close(common, period, **fields))  # type: ignore[arg-type]
        self.records.append(record)
        return record


def findings(chain: Chain) -> list[tuple[int, str]]:
    ledger = Ledger()
    return [(f.seq, f.kind) for r in chain.records for f in ledger.add(r)]


def h(day: int, hour: int, month: str = "2026-11") -> tuple[str, str]:
    start = f"{month}-{day:02d}T{hour:02d}:00:00Z"
    end = f"{month}-{day:02d}T{hour + 1:02d}:00:00Z" if hour < 23 else f"{month}-{day:02d}T23:59:59Z"
    return start, end


def test_a_rule_abiding_chain_has_no_findings_and_its_closes_add_up():
    c = Chain()
    c.delta("2026-11", h(2, 0), "10")
    c.delta("2026-11", h(2, 1), "5")
    c.delta("2026-11", h(2, 0), "-2", corrects=1)  # a decrease, as a correction
    close = c.close("2026-11")
    c.delta("2026-12", h(1, 0, "2026-12"), "7")
    c.close("2026-12")
    c.close("2027-01")  # a month with no usage still gets its close
    assert findings(c) == []
    assert close.body.totals[0].quantity == "13" and close.body.record_count == 3  # type: ignore[union-attr]


def test_usage_in_a_closed_period_is_a_finding_and_the_records_after_it_are_not():
    c = Chain()
    c.delta("2026-11", h(2, 0))
    c.close("2026-11")
    late = c.delta("2026-11", h(3, 0))
    c.delta("2026-12", h(1, 0, "2026-12"))
    c.close("2026-12")
    assert findings(c) == [(late.seq, "usage_in_closed_period")]


def test_usage_out_of_order_both_ways():
    c = Chain()
    c.delta("2026-12", h(1, 0, "2026-12"))
    back = c.delta("2026-11", h(2, 0))  # the chain moved on to December
    assert findings(c) == [(back.seq, "usage_out_of_order")]
    c = Chain()
    c.delta("2026-11", h(2, 0))
    c.close("2026-10")  # a valid close of an empty month, between November's records
    split = c.delta("2026-11", h(2, 1))
    assert findings(c) == [(split.seq, "usage_out_of_order")]


@pytest.mark.parametrize("override,message", [
    ({"record_count": 1}, "counts"),
    ({"first_seq": 2, "record_count": 1}, "covers"),
    ({"chain_head": "0" * 64}, "chain_head"),
    ({"totals": (Line("m", "u", "3", {}),)}, "totals"),
])
def test_a_close_that_does_not_cover_or_add_up_is_a_finding_and_closes_nothing(override, message):
    c = Chain()
    c.delta("2026-11", h(2, 0))
    c.delta("2026-11", h(2, 1))
    bad = c.close("2026-11", **override)
    ledger = Ledger()
    found = [f for r in c.records for f in ledger.add(r)]
    assert [(f.seq, f.kind) for f in found] == [(bad.seq, "bad_close")] and message in found[0].message
    assert "2026-11" not in ledger.closed  # the period stays open: the right close is still accepted
    c.close("2026-11")
    c.close("2026-11")
    assert findings(c) == [(bad.seq, "bad_close"), (c.records[-1].seq, "bad_close")]  # the last one closes it twice


def test_windows_outside_the_period_overlapping_and_negative():
    c = Chain()
    outside = c.delta("2026-11", h(1, 0, "2026-12"))
    assert findings(c) == [(outside.seq, "window_outside_period")]
    c = Chain()
    c.delta("2026-11", h(2, 0), meter="a")
    c.delta("2026-11", h(2, 0), meter="b")  # the same window, other lines: one window split over deltas
    c.delta("2026-11", h(2, 1), meter="a")
    c.delta("2026-11", h(2, 0), meter="c")  # a meter that arrives an hour late: its own line, its own time
    again = c.delta("2026-11", h(2, 0), meter="a")  # the same line for the same time: counted twice
    partial = c.delta("2026-11", ("2026-11-02T01:30:00Z", "2026-11-02T02:30:00Z"), meter="b")  # b's 01:30-02:00 is new,
    c.delta("2026-11", h(2, 3), meter="b")
    overlapping = c.delta("2026-11", ("2026-11-02T02:15:00Z", "2026-11-02T02:45:00Z"), meter="b")  # ...this is not
    c.delta("2026-11", h(2, 1), meter="a", late=True)  # late usage of an earlier window, flagged as such
    instant = c.delta("2026-11", ("2026-11-02T05:00:00Z", "2026-11-02T05:00:00Z"), meter="a")
    twice = c.delta("2026-11", ("2026-11-02T05:00:00Z", "2026-11-02T05:00:00Z"), meter="a")
    within = c.delta("2026-11", ("2026-11-02T00:30:00Z", "2026-11-02T00:30:00Z"), meter="c")  # inside c's 00:00-01:00
    negative = c.delta("2026-11", h(2, 6), quantity="-1")
    c.delta("2026-11", h(2, 0), quantity="-1", meter="a", corrects=1)  # a correction may lower, in any window
    assert instant.seq and partial.seq
    assert findings(c) == [(again.seq, "overlapping_window"), (overlapping.seq, "overlapping_window"),
                           (twice.seq, "overlapping_window"), (within.seq, "overlapping_window"),
                           (negative.seq, "negative_quantity")]


def test_the_client_refuses_to_trap_a_period_open():
    c = Chain()
    c.delta("2026-11", h(2, 0))
    ledger = Ledger()
    for r in c.records:
        ledger.add(r)
    december = Chain()
    december.records = list(c.records)
    assert "2026-11 is still open" in (ledger.hazard(december.delta("2026-12", h(1, 0, "2026-12"))) or "")
    empty_close = Chain()
    empty_close.records = list(c.records)
    assert "would split 2026-11" in (ledger.hazard(empty_close.close("2026-10", ledger)) or "")


def test_the_state_survives_json_and_judges_the_same():
    c = Chain()
    c.delta("2026-11", h(2, 0), "10")
    c.delta("2026-11", h(2, 0), "3", meter="other")
    c.close("2026-11")
    c.delta("2026-12", h(1, 0, "2026-12"), "7")
    ledger = Ledger()
    for r in c.records:
        ledger.add(r)
    copy = Ledger.from_json(ledger.to_json())
    for candidate in (Chain(), Chain(), Chain()):
        candidate.records = list(c.records)
    tries = []
    for build in (lambda x: x.delta("2026-12", h(1, 0, "2026-12")), lambda x: x.delta("2026-11", h(3, 0)),
                  lambda x: x.close("2026-12", ledger), lambda x: x.close("2026-12", ledger, totals=())):
        x = Chain()
        x.records = list(c.records)
        tries.append(build(x))
    for record in tries:
        assert [(f.kind, f.message) for f in ledger.check(record)] == [(f.kind, f.message) for f in copy.check(record)]
        assert ledger.hazard(record) == copy.hazard(record)


# --- agreement with the rules before findings ----------------------------------------------------


def _old_check_close(records: list[Opened], close: Close) -> bool:
    """records.chain.check_close as pacspace shipped it before findings (commit 3d326d5), returning pass/fail."""
    if any(isinstance(r.body, Close) and r.body.period == close.period for r in records):
        return False
    usage = [r for r in records if isinstance(r.body, Delta) and r.body.period == close.period]
    if usage:
        first, last = usage[0].body.common.seq, usage[-1].body.common.seq
    else:
        last = records[-1].body.common.seq
        first = last + 1
    if (close.first_seq, close.last_seq) != (first, last):
        return False
    between = [r for r in records if first <= r.body.common.seq <= last]
    if any(not (isinstance(r.body, Delta) and r.body.period == close.period) for r in between):
        return False
    if len(usage) != close.record_count:
        return False
    head = next(r for r in records if r.body.common.seq == last)
    if body_hash(head.encoded) != close.chain_head:
        return False
    expected = totals([r.body for r in usage if isinstance(r.body, Delta)])
    return [t.to_json() for t in expected] == [t.to_json() for t in close.totals]


def _old_accepts(records: list[Opened]) -> bool:
    for i, r in enumerate(records):
        if isinstance(r.body, Close) and not _old_check_close(records[:i], r.body):
            return False
        if isinstance(r.body, Delta) and any(isinstance(x.body, Close) and x.body.period == r.body.period
                                             for x in records[:i]):
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False))
def test_a_chain_without_findings_is_one_the_old_rules_accept(rng: random.Random):
    """Random chains of usage, closes (right and wrong) and corrections over three months: whenever the ledger
    finds nothing, the rules of the pacspace before findings accept the chain too, so older customer clients
    and this one agree on every chain the new provider client writes."""
    c = Chain()
    periods = ["2026-10", "2026-11", "2026-12"]
    hour = 0
    for _ in range(rng.randrange(1, 14)):
        period = rng.choice(periods)
        action = rng.random()
        if action < 0.6:
            month_hour = hour % 24
            c.delta(period, h(3 + hour // 24, month_hour, period), str(rng.randrange(-2, 9)) if rng.random() < 0.9 else "0",
                    meter=rng.choice(["a", "b"]))
            hour += 1
        elif action < 0.7 and len(c.records) > 1:
            c.delta(period, h(2, 0, period), "-1", corrects=rng.randrange(1, len(c.records)))
        else:
            ledger = Ledger()
            for r in c.records:
                ledger.add(r)
            wrong = rng.random() < 0.3
            try:
                c.close(period, ledger, **({"record_count": rng.randrange(0, 4)} if wrong else {}))
            except InvalidBody:
                pass  # a count no close may state: not a body a provider can sign
    if not findings(c):
        assert _old_accepts(c.records)


def test_an_empty_close_ahead_of_time_passes_no_period():
    """A close of a month with no usage (a typo: 2027-11 for 2026-11) does not make every later 2026 month
    'passed': their usage is still accepted, and 2027-11 itself is closed."""
    c = Chain()
    c.delta("2026-11", h(2, 0))
    c.close("2026-11")
    c.close("2027-11")
    c.delta("2026-12", h(1, 0, "2026-12"))
    late = c.delta("2027-11", h(1, 0, "2027-11"))
    assert findings(c) == [(late.seq, "usage_in_closed_period")]


def test_totals_too_long_for_a_close_are_a_finding_and_the_client_refuses_them():
    big = "9" * 64
    c = Chain()
    c.delta("2026-11", h(2, 0), big)
    ledger = Ledger()
    for r in c.records:
        ledger.add(r)
    x = Chain()
    x.records = list(c.records)
    assert "no close could state them" in (ledger.hazard(x.delta("2026-11", h(2, 1), big)) or "")
    second = c.delta("2026-11", h(2, 1), big)  # an older client sends it anyway
    bad = _opened(Close(c._common(), "2026-11", 1, 2, 2, body_hash(second.encoded), ()))  # no close can state the sum
    c.records.append(bad)
    found = Ledger()
    kinds = [(f.seq, f.kind) for r in c.records for f in found.add(r)]
    assert kinds == [(bad.seq, "bad_close")]


def test_a_later_period_already_started_may_go_on_while_an_earlier_one_waits():
    """Someone recorded December before closing November: December's run may continue (it splits nothing), and
    November's close waits until December's; starting a new period while another is open is what is refused."""
    c = Chain()
    c.delta("2026-11", h(2, 0))
    c.delta("2026-12", h(1, 0, "2026-12"))  # an older client: no rule broken
    ledger = Ledger()
    for r in c.records:
        ledger.add(r)
    more = Chain()
    more.records = list(c.records)
    assert ledger.hazard(more.delta("2026-12", h(1, 1, "2026-12"))) is None
    early = Chain()
    early.records = list(c.records)
    assert "would split 2026-12" in (ledger.hazard(early.close("2026-11", ledger)) or "")
    january = Chain()
    january.records = list(c.records)
    assert "2026-11 is still open" in (ledger.hazard(january.delta("2027-01", h(1, 0, "2027-01"))) or "")
