"""Invoices as providers issue them (pacspace JSON, Stripe, Lago, CSV), the mapping file, the price sheet, and
`bill verify --invoice --mapping --prices` on a real verified copy."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from pathlib import Path
from decimal import Decimal

import pytest
from billing_scenario import HOSTILE_MODEL, IN, OUT, PERIOD, REQ, fixture, month_world, monitor_once

from pacspace.cli.main import main
from pacspace.client.bill import Bill, BillLine, ClosedBy, compare
from pacspace.client.invoice_mapping import Mapping, Transform, load_mapping
from pacspace.client.invoices import read_invoice
from pacspace.client.prices import load_prices
from pacspace.errors import MalformedInput

RID = "acme:00"
STRIPE = json.loads(fixture("stripe-invoice.json").read_text())
EXPECTED = {(OUT, "m-1"): ("2500000", "50"), (OUT, HOSTILE_MODEL): ("10000", "0.2"), (IN, "m-1"): ("10000000", "50"),
            (REQ, None): ("4000", "30")}


def read(name_or_text: str | bytes, mapping: str | None = None, fmt: str = "auto", period: str = PERIOD):
    text = fixture(name_or_text).read_text() if isinstance(name_or_text, str) and name_or_text.endswith(
        (".json", ".csv")) else name_or_text if isinstance(name_or_text, str) else name_or_text.decode()
    return read_invoice(text, fmt, RID, period, load_mapping(fixture(mapping).read_text()) if mapping else None)


def lines_of(invoice) -> dict:
    return {(x.meter, x.dimensions.get("model")): (x.quantity, x.amount) for x in invoice.lines}


@pytest.mark.parametrize("name,mapping,fmt", [("stripe-invoice.json", "stripe-mapping.json", "stripe"),
                                              ("lago-invoice.json", "lago-mapping.json", "lago"),
                                              ("invoice.csv", None, "csv")])
def test_each_format_reads_the_same_month(name, mapping, fmt):
    invoice = read(name, mapping)
    assert invoice.format == fmt and invoice.currency == "usd" and invoice.notes == []
    assert lines_of(invoice) == EXPECTED
    if fmt != "csv":  # the base fee is not usage: listed, never compared
        assert len(invoice.ignored) == 1 and invoice.ignored[0].amount == "20"


def test_stripe_lines_are_named_by_their_price_without_a_mapping():
    invoice = read("stripe-invoice.json")
    assert invoice.number == "ACME-2026-0042"
    assert {x.meter for x in invoice.lines} == {"price_1QPlatformFee", "price_1QOutTokensM1", "price_1QOutTokensM2",
                                                "price_1QInTokensM1", "price_1QRequests"}
    assert [x.refs for x in invoice.lines if x.meter == "price_1QRequests"] == [("il_1QbobReq (price_1QRequests)",)]


def _legacy_line(**price):
    line = copy.deepcopy(STRIPE["lines"]["data"][1])
    del line["pricing"], line["parent"]
    line.update(type="subscription", price={"id": "price_old", "object": "price", "product": "prod_x", **price})
    return line


def test_stripe_invoices_of_older_api_versions():
    """Before 2025-03-31 a line carried its price object: a lookup key names the meter, a licensed price is no usage,
    and a line's quantity may be a decimal string."""
    invoice = copy.deepcopy(STRIPE)
    metered = _legacy_line(lookup_key=OUT, recurring={"usage_type": "metered", "meter": "mtr_123"})
    metered["quantity_decimal"] = "2500000.5"
    licensed = _legacy_line(id="price_seat", recurring={"usage_type": "licensed"})
    invoice["lines"]["data"] = [metered, licensed]
    read_back = read(json.dumps(invoice))
    assert [(x.meter, x.quantity) for x in read_back.lines] == [(OUT, "2500000.5")]
    assert [x.ids["price"] for x in read_back.ignored] == ["price_seat"]
    by_meter = Mapping(load_mapping('{"lines": [{"match": {"stripe_meter": "mtr_123"}, "meter": "m.x"}]}').rules)
    assert [x.meter for x in read_invoice(json.dumps(invoice), "stripe", RID, PERIOD, by_meter).lines] == ["m.x"]


def test_stripe_amounts_are_minor_units_of_their_currency():
    invoice = copy.deepcopy(STRIPE)
    invoice["currency"] = "jpy"
    for line in invoice["lines"]["data"]:
        line["currency"] = "jpy"
    assert read(json.dumps(invoice), "stripe-mapping.json").lines[0].amount == "5000"  # yen have no minor unit
    invoice["lines"]["has_more"] = True
    with pytest.raises(MalformedInput, match="has_more"):
        read(json.dumps(invoice))


def test_quantities_and_amounts_are_exact_decimals():
    text = json.dumps({"relationship": RID, "period": PERIOD, "lines": [
        {"meter": "m", "dimensions": {}, "quantity": "0.1", "amount": "0.1"},
        {"meter": "m", "dimensions": {}, "quantity": "0.2", "amount": "0.2"}]})
    assert [(x.quantity, x.amount) for x in read(text).lines] == [("0.3", "0.3")]  # 0.1 + 0.2 as floats is not 0.3
    numbers = '{"relationship": "acme:00", "period": "2026-11", "lines": [{"meter": "m", "quantity": 0.1}, ' \
              '{"meter": "m", "quantity": 1e-7}]}'
    assert read(numbers).lines[0].quantity == "0.1000001"
    for bad in ('{"relationship": "acme:00", "period": "2026-11", "lines": [{"meter": "m", "quantity": NaN}]}',
                '{"relationship": "acme:00", "period": "2026-11", "lines": [{"meter": "m", "quantity": "1,5"}]}',
                '{"relationship": "acme:01", "period": "2026-11", "lines": []}'):
        with pytest.raises(MalformedInput):
            read(bad)


def test_csv_columns_and_malformed_rows():
    invoice = read("meter,dim.model,dim.region,quantity\nm,m-1,eu,5\n\nm,m-1,eu,2.5\n")
    assert [(x.meter, x.dimensions, x.quantity, x.amount) for x in invoice.lines] == [
        ("m", {"model": "m-1", "region": "eu"}, "7.5", None)]
    for bad, why in (("meter,quantity\nm,1,2\n", "cells"), ("name,amount\nx,1\n", "header"),
                     ("meter,quantity\nm,x\n", "decimal"), ("meter,dimensions,quantity\nm,model,1\n", "name=value"),
                     ("meter,quantity,amount,currency\nm,1,1,usd\nm,1,1,eur\n", "several currencies")):
        with pytest.raises(MalformedInput, match=why):
            read(bad)


def test_a_line_of_another_month_is_noted():
    assert read("stripe-invoice.json", "stripe-mapping.json", period="2026-11").notes == []
    notes = read("stripe-invoice.json", "stripe-mapping.json", period="2026-10").notes
    assert len(notes) == 4 and "not 2026-10" in notes[0]


def test_mapping_rules_and_packages():
    assert Transform("1000", "up").apply("1000001") == "1001" and Transform("1000", "down").apply("1000999") == "1000"
    assert Transform("1000", "up").apply("-1500") == "-1" and Transform("1000", "down").apply("-1500") == "-2"
    assert Transform("0.5", "up").apply("3") == "6" and Transform("3", "up").apply("10") == "4"
    mapping = load_mapping(json.dumps({"lines": [
        {"match": {"meter": "tokens_k", "dimensions": {"model": "m-1"}}, "meter": OUT, "divide_by": "1000",
         "round": "up"},
        {"match": {"meter": "tokens_k"}, "ignore": True}]}))
    invoice = read_invoice("meter,dimensions,quantity\ntokens_k,model=m-1,2500\ntokens_k,model=m-9,7\n", "csv", RID,
                           PERIOD, mapping)
    assert [(x.meter, x.quantity, x.transform) for x in invoice.lines] == [(OUT, "2500", Transform("1000", "up"))]
    assert len(invoice.ignored) == 1
    for bad, why in (('{"lines": [{"match": {}}]}', "no match"), ('{"lines": [{"match": {"x": "1"}, "meter": "m"}]}',
                     "unknown"), ('{"lines": [{"match": {"meter": "a"}}]}', "names no meter"),
                     ('{"lines": [{"match": {"meter": "a"}, "meter": "b", "divide_by": "1000"}]}', "round"),
                     ('{"lines": [{"match": {"meter": "a"}, "meter": "b", "divide_by": "0", "round": "up"}]}', "above 0"),
                     ("[]", "lines")):
        with pytest.raises(MalformedInput, match=why):
            load_mapping(bad)


def test_price_sheets_flat_graduated_and_volume():
    sheet = load_prices(json.dumps({"currency": "USD", "prices": [
        {"meter": "m", "unit_price": "0.00002"},
        {"meter": "m", "dimensions": {"model": "big"}, "unit_price": "0.0001"},
        {"meter": "g", "tiers": [{"up_to": "1000", "unit_price": "0", "flat": "5"},
                                 {"up_to": "2000", "unit_price": "0.01"}, {"up_to": None, "unit_price": "0.005"}]},
        {"meter": "v", "tiers_mode": "volume", "tiers": [{"up_to": "1000", "unit_price": "0.01"},
                                                         {"up_to": None, "unit_price": "0.005", "flat": "1"}]}]}))
    assert sheet.currency == "usd"
    assert sheet.amount("m", {"model": "m-1"}, "2500000") == "50"
    assert sheet.amount("m", {"model": "big", "region": "eu"}, "10") == "0.001"  # the most specific price
    assert sheet.amount("g", {}, "500") == "5" and sheet.amount("g", {}, "1500") == "10"
    assert sheet.amount("g", {}, "3000") == "20"  # 5 + 1000 x 0.01 + 1000 x 0.005
    assert sheet.amount("v", {}, "1000") == "10" and sheet.amount("v", {}, "3000") == "16"
    assert sheet.amount("g", {}, "0") == "0" and sheet.amount("nothing", {}, "1") is None
    rounded = load_prices('{"round_to": "0.01", "rounding": "half_even", "prices": [{"meter": "m", "unit_price": '
                          '"0.005"}]}')
    assert rounded.amount("m", {}, "1") == "0" and rounded.amount("m", {}, "3") == "0.02"
    up = load_prices('{"round_to": "0.01", "prices": [{"meter": "m", "unit_price": "0.005"}]}')
    assert up.amount("m", {}, "1") == "0.01"
    assert Decimal(load_prices('{"prices": [{"meter": "m", "unit_price": 0.1}]}').amount("m", {}, "3")) == Decimal("0.3")
    for bad, why in (('{"prices": [{"meter": "m"}]}', "unit_price or tiers"),
                     ('{"prices": [{"meter": "m", "tiers": [{"up_to": "5", "unit_price": "1"}]}]}', "up_to"),
                     ('{"prices": [{"meter": "m", "tiers": [{"up_to": "5", "unit_price": "1"}, {"up_to": "3", '
                      '"unit_price": "1"}, {"up_to": null, "unit_price": "1"}]}]}', "rise"),
                     ('{"rounding": "nearest", "prices": []}', "rounding"), ('{"prices": [], "tax": 1}', "price sheet"),
                     ('{"prices": [{"meter": "m", "unit_price": "x"}]}', "decimal")):
        with pytest.raises(MalformedInput, match=why):
            load_prices(bad)


def _bill(*lines: tuple[str, str]) -> Bill:
    close = ClosedBy(9, 9, 1, 8, 8, "0" * 64, None, "")  # type: ignore[arg-type]
    return Bill(RID, PERIOD, close, [BillLine(m, {}, q, unit="u") for m, q in lines])


def test_amounts_are_checked_only_with_prices():
    text = json.dumps({"relationship": RID, "period": PERIOD, "currency": "usd", "lines": [
        {"meter": "a", "quantity": "100", "amount": "1.00"}, {"meter": "b", "quantity": "5", "amount": "9"}]})
    prices = load_prices('{"currency": "usd", "prices": [{"meter": "a", "unit_price": "0.01"}]}')
    bill = _bill(("a", "100"), ("b", "5"))
    compare(bill, read(text))
    assert bill.outcome == "match" and not any(x.amount_checked for x in bill.lines)
    bill = _bill(("a", "100"), ("b", "5"))
    compare(bill, read(text), prices)
    assert [(x.meter, x.expected_amount, x.matches) for x in bill.lines] == [("a", "1", True), ("b", None, False)]
    assert bill.outcome == "differs"
    with pytest.raises(MalformedInput, match="eur"):
        compare(_bill(("a", "100")), read(text), load_prices('{"currency": "eur", "prices": []}'))


def test_a_package_price_compares_whole_packages():
    mapping = load_mapping(json.dumps({"lines": [{"match": {"meter": "k"}, "meter": OUT, "divide_by": "1000",
                                                   "round": "up"}]}))
    invoice = read_invoice("meter,quantity\nk,2501\n", "csv", RID, PERIOD, mapping)
    bill = _bill((OUT, "2500001"))
    compare(bill, invoice)
    assert bill.outcome == "match" and bill.lines[0].expected == "2501" and "÷ 1000" in (bill.lines[0].package or "")


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


async def test_bill_verify_reads_a_stripe_invoice_and_checks_its_amounts(aiohttp_client, tmp_path, log_database):
    """On each backend of the log and its records (log_database: SQLite, then PostgreSQL)."""
    world = await month_world(aiohttp_client, tmp_path, log_database)
    await monitor_once(world)
    base = ["bill", "verify", "--relationship", world.rid, "--period", PERIOD, "--home", str(world.bob.path)]
    with_prices = ["--mapping", str(fixture("stripe-mapping.json")), "--prices", str(fixture("prices.json"))]
    code, out, err = cli(*base, "--invoice", str(fixture("stripe-invoice.json")), *with_prices)
    assert code == 0 and "The invoice matches" in err and "PRICED" in out, (out, err)
    assert "not usage, not checked: il_1QbobBase" in out
    code, out, err = cli(*base, "--invoice", str(fixture("stripe-invoice-differs.json")), *with_prices, "--format", "json")
    verdict = json.loads(out)
    assert code == 4 and verdict["outcome"] == "differs" and verdict["invoice"]["number"] == "ACME-2026-0042"
    differing = [x for x in verdict["lines"] if not x["matches"]]
    assert [(x["committed"], x["invoiced"], x["expected_amount"], x["invoiced_amount"]) for x in differing] == [
        ("2500000", "2600000", "50", "52")]
    for name, mapping in (("lago-invoice.json", "lago-mapping.json"), ("invoice.csv", None)):
        extra = ["--mapping", str(fixture(mapping))] if mapping else []
        assert cli(*base, "--invoice", str(fixture(name)), *extra, "--prices", str(fixture("prices.json")))[0] == 0
    report = tmp_path / "report.html"
    cli(*base, "--invoice", str(fixture("stripe-invoice.json")), *with_prices, "--report", str(report))
    page = report.read_text()
    assert 'data-verdict="match"' in page and "&lt;img src=x" in page and "<img" not in page
    assert re.search(r"http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'sha256-", page)
    code, _, err = cli(*base, "--prices", str(fixture("prices.json")))
    assert code == 2 and "give the invoice too" in err
    code, _, err = cli(*base, "--invoice", str(fixture("prices.json")))
    assert code == 2 and err.count("\n") == 1


def test_the_docs_examples_are_what_the_code_reads():
    doc = (Path(__file__).parent.parent / "docs" / "invoices.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", doc, re.S)
    mapping = next(b for b in blocks if '"match"' in b)
    sheet = next(b for b in blocks if '"prices"' in b)
    assert len(load_mapping(mapping).rules) == 4
    assert load_prices(sheet).amount("llm.requests", {}, "1500") == "5"
    own = next(b for b in blocks if '"relationship"' in b).replace("acme:3f9c…", RID)
    assert lines_of(read(own)) == {(OUT, "m-1"): ("2500000", "50")}
    csv_block = re.search(r"```csv\n(.*?)```", doc, re.S).group(1)
    assert [x.meter for x in read(csv_block).lines] == [OUT, REQ]
