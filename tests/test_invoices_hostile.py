"""Invoices no provider should send: values beyond any date, fields beyond the CSV parser's limit, JSON nested past
the recursion limit, more lines than any month has, amounts with more digits than the default decimal context
keeps. Each is refused with a MalformedInput that says why, or read exactly."""

from __future__ import annotations

import json
import pytest

import pacspace.client.invoices as invoices
from pacspace.client.invoices import MAX_LINES, read_invoice
from pacspace.client.prices import load_prices
from pacspace.errors import MalformedInput

RID, PERIOD = "acme:00", "2026-11"


def stripe(**line) -> str:
    item = {"id": "il_1", "quantity": 5, "amount": 1000, "price": "llm.requests", **line}
    return json.dumps({"object": "invoice", "currency": "usd", "lines": {"data": [item]}})


@pytest.mark.parametrize("period", [{"start": 10**18, "end": 10**18}, {"start": -10**12, "end": 0},
                                    {"start": 0, "end": 10**12}, {"start": -1, "end": 5}])
def test_a_stripe_period_beyond_any_date_is_refused(period):
    with pytest.raises(MalformedInput, match="period is not a time Stripe states"):
        read_invoice(stripe(period=period), "auto", RID, PERIOD)


def test_a_stripe_period_of_9999_is_a_time():
    invoice = read_invoice(stripe(period={"start": 0, "end": 253_402_300_799}), "auto", RID, PERIOD)
    assert invoice.lines[0].quantity == "5" and "bills for 1970-01-01 to 9999-12-31" in invoice.notes[0]


def test_a_csv_field_over_the_parsers_limit_is_refused_with_its_row():
    with pytest.raises(MalformedInput, match="row 2 is not CSV pacspace reads: field larger than field limit"):
        read_invoice("meter,quantity\n" + "a" * 200_000 + ",1\n", "auto", RID, PERIOD)
    with pytest.raises(MalformedInput, match="neither JSON nor a CSV pacspace reads"):
        read_invoice("a" * 200_000 + ",1\n", "csv", RID, PERIOD)


def test_json_nested_too_deeply_is_refused_as_json_not_tried_as_csv():
    with pytest.raises(MalformedInput, match="nested too deeply"):
        read_invoice("[" * 100_000 + "]" * 100_000, "auto", RID, PERIOD)
    with pytest.raises(MalformedInput, match="nested too deeply"):
        read_invoice('{"lines": ' + "[" * 100_000 + "]" * 100_000 + "}", "stripe", RID, PERIOD)


@pytest.mark.parametrize("fmt", ["csv", "pacspace", "stripe", "lago"])
def test_more_lines_than_any_month_has_are_refused(fmt):
    n = MAX_LINES + 1
    text = {
        "csv": "meter,quantity\n" + "llm.requests,1\n" * n,
        "pacspace": json.dumps({"relationship": RID, "period": PERIOD,
                                "lines": [{"meter": "llm.requests", "quantity": "1"}] * n}),
        "stripe": json.dumps({"object": "invoice", "lines": {"data": [{"id": "x", "quantity": 1}] * n}}),
        "lago": json.dumps({"invoice": {"fees": [{"item": {"type": "charge", "code": "c"}, "units": "1"}] * n}}),
    }[fmt]
    with pytest.raises(MalformedInput, match=f"pacspace reads at most {MAX_LINES}"):
        read_invoice(text, fmt, RID, PERIOD)


def test_many_lines_of_one_meter_are_added_up_in_linear_work(monkeypatch):
    """Each line's ref is appended once: the refs handled over the whole invoice are as many as its lines (the sum
    of a growing tuple, rebuilt at each line, was n²/2)."""
    handled = []
    real = invoices.InvoiceLine

    def counting(*args, **kwargs):
        line = real(*args, **kwargs)
        handled.append(len(line.refs))
        return line

    monkeypatch.setattr(invoices, "InvoiceLine", counting)
    n = 5_000
    invoice = read_invoice("meter,quantity,amount\n" + "llm.requests,1.5,0.01\n" * n, "csv", RID, PERIOD)
    (line,) = invoice.lines
    assert line.quantity == "7500" and line.amount == "50" and len(line.refs) == n
    assert line.refs[0] == "row 2" and line.refs[-1] == f"row {n + 1}"
    assert sum(handled) <= 2 * n


def test_stripe_amounts_beyond_28_digits_are_exact():
    cents = 12345678901234567890123456789012345  # 35 digits: the default context keeps 28
    invoice = read_invoice(stripe(amount=cents), "auto", RID, PERIOD)
    assert invoice.lines[0].amount == "123456789012345678901234567890123.45"
    yen = read_invoice(json.dumps({"object": "invoice", "currency": "jpy", "lines": {"data": [
        {"id": "il_1", "quantity": 5, "amount": cents, "price": "llm.requests"}]}}), "auto", RID, PERIOD)
    assert yen.lines[0].amount == str(cents)


def test_a_stripe_amount_longer_than_a_decimal_may_be_is_refused():
    with pytest.raises(MalformedInput, match="more digits than pacspace states an amount with"):
        read_invoice(stripe(amount=10**70), "auto", RID, PERIOD)


def test_invoice_lines_that_add_up_past_64_digits_are_refused():
    big = "9" * 64
    with pytest.raises(MalformedInput, match="add up to more digits"):
        read_invoice(f"meter,quantity\nllm.requests,{big}\nllm.requests,{big}\n", "csv", RID, PERIOD)


def test_a_price_sheet_prices_a_30_digit_quantity_exactly():
    sheet = load_prices(json.dumps({"currency": "usd", "round_to": "0.01", "rounding": "half_up", "prices": [
        {"meter": "m", "unit_price": "0.5"},
        {"meter": "t", "tiers_mode": "graduated", "tiers": [{"up_to": "1000", "unit_price": "0"},
                                                              {"up_to": None, "unit_price": "0.001", "flat": "5"}]}]}))
    q = "123456789012345678901234567890123"  # 33 digits
    assert sheet.amount("m", {}, q) == "61728394506172839450617283945061.5"
    assert sheet.amount("m", {}, q + ".333") == "61728394506172839450617283945061.67"
    # (q - 1000) × 0.001 + 5 = …567889.123 + 5, rounded half up to the cent
    assert sheet.amount("t", {}, q) == "123456789012345678901234567894.12"
    unrounded = load_prices(json.dumps({"prices": [{"meter": "m", "unit_price": "0.000000000000000000001"}]}))
    assert unrounded.amount("m", {}, q) == "123456789012.345678901234567890123"


def test_a_price_sheet_with_many_entries_finds_the_meters_own():
    sheet = load_prices(json.dumps({"prices": [{"meter": f"m{n}", "unit_price": str(n)} for n in range(5000)] + [
        {"meter": "m7", "dimensions": {"model": "x"}, "unit_price": "100"}]}))
    assert sheet.amount("m7", {}, "2") == "14" and sheet.amount("m7", {"model": "x"}, "2") == "200"
    assert sheet.amount("nope", {}, "2") is None
