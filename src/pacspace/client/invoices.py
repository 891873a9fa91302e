"""Invoices as providers issue them: pacspace's JSON, a Stripe invoice, a Lago invoice, a CSV. Pure.

Each format is read into the lines it states (``SourceLine``: named as the
invoice names them), then mapped to pacspace meters and dimensions
(client.invoice_mapping) and summed per (meter, dimensions) into an
``Invoice``. Quantities and amounts are exact decimals, never floats: JSON
numbers are read as decimals, and an amount is in the currency's major unit
(Stripe and Lago state minor units, such as cents). docs/invoices.md describes
each format.
"""

from __future__ import annotations

import csv
import decimal
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from ..errors import MalformedInput
from ..records.body import InvalidBody, canonical_decimal, exact, period_bounds
from .invoice_mapping import Mapping, Transform

FORMATS = ("auto", "pacspace", "stripe", "lago", "csv")
# Currencies whose minor unit is not a hundredth (Stripe's and ISO 4217's lists); the rest have two decimals.
_ZERO_DECIMAL = {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf",
                 "xof", "xpf"}
_THREE_DECIMAL = {"bhd", "jod", "kwd", "omr", "tnd"}
_SLACK = timedelta(days=1)  # a line's billed time may pass its month by this much (time zones, anchors)
# The most lines an invoice may state: far more than any provider's invoice of one relationship's month, and few
# enough that reading one takes a moment.
MAX_LINES = 20_000
_LATEST = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second a line's period can name


@dataclass(frozen=True)
class SourceLine:
    """One line as the invoice states it, before mapping."""

    ref: str  # how to name it to a person: the line's id, the price it bills
    ids: dict[str, str]  # what a mapping matches: meter, price, product, lookup_key, stripe_meter, code, ...
    dimensions: dict[str, str]
    quantity: str
    amount: str | None = None
    usage: bool = True  # False: a base fee, an add-on, a one-off item: shown, not checked
    billed: tuple[datetime, datetime] | None = None  # the time the line bills for


@dataclass(frozen=True)
class Statement:
    """What an invoice file states, before mapping."""

    format: str
    number: str | None
    currency: str | None
    lines: list[SourceLine]


@dataclass(frozen=True)
class InvoiceLine:
    """The invoiced quantity (and amount) of one pacspace meter and dimensions, summed over the invoice's lines."""

    meter: str
    dimensions: dict[str, str]
    quantity: str
    amount: str | None
    refs: tuple[str, ...] = ()
    transform: Transform | None = None


@dataclass
class Invoice:
    format: str
    number: str | None
    currency: str | None
    lines: list[InvoiceLine]
    ignored: list[SourceLine] = field(default_factory=list)  # not usage, or ignored by the mapping
    notes: list[str] = field(default_factory=list)


def read_invoice(text: str, fmt: str, rid: str, period: str, mapping: Mapping | None = None) -> Invoice:
    """Read an invoice file of format ``fmt`` (or ``auto``) for ``rid`` and ``period``; MalformedInput if it is not."""
    statement = read_statement(text, fmt, rid, period)
    return build(statement, mapping or Mapping(), period)


def read_statement(text: str, fmt: str, rid: str, period: str) -> Statement:
    if fmt not in FORMATS:
        raise MalformedInput(f"the invoice format is one of {', '.join(FORMATS)}")
    data = _json(text) if fmt != "csv" else None
    kind = fmt if fmt != "auto" else detect(data)
    try:
        if kind == "csv":
            statement = _csv(text)
        elif kind == "stripe":
            statement = _stripe(_object(data))
        elif kind == "lago":
            statement = _lago(_object(data))
        else:
            statement = _pacspace(_object(data), rid, period)
    except InvalidBody as exc:
        raise MalformedInput(f"the {kind} invoice: {exc}") from None
    except (KeyError, TypeError, AttributeError, IndexError):
        raise MalformedInput(f"the invoice is not a {kind} invoice of the shape docs/invoices.md describes") from None
    except (ValueError, OverflowError, OSError, csv.Error, decimal.DecimalException, RecursionError) as exc:
        # A value no reader foresaw (a number beyond any date, a CSV field beyond the parser's limit): the invoice is
        # malformed, and says so, whatever the reader's own error.
        raise MalformedInput(f"the {kind} invoice holds a value pacspace cannot read ({type(exc).__name__}: "
                             f"{str(exc)[:120]})") from None
    return statement


def detect(data: Any) -> str:
    """The format of an invoice already read as JSON (None: not JSON, so a CSV)."""
    if data is None:
        return "csv"
    if not isinstance(data, dict):
        raise MalformedInput("the invoice is JSON, but not an object: not an invoice pacspace reads")
    if data.get("object") == "invoice" or isinstance(data.get("lines"), dict):
        return "stripe"
    if isinstance(data.get("invoice"), dict) or "fees" in data:
        return "lago"
    if "lines" in data:
        return "pacspace"
    raise MalformedInput("the invoice is neither pacspace's, Stripe's nor Lago's: name its format (--invoice-format)")


@dataclass
class _Sum:
    """One meter and dimensions while the invoice's lines are added up: exact sums, and the lines' refs in a list
    (so that n lines take O(n), not O(n²))."""

    meter: str
    dimensions: dict[str, str]
    quantity: Decimal
    amount: Decimal | None
    transform: Transform | None
    refs: list[str]


def build(statement: Statement, mapping: Mapping, period: str) -> Invoice:
    """Map each usage line to a meter and dimensions, and sum the lines that land on the same ones."""
    if len(statement.lines) > MAX_LINES:
        raise MalformedInput(_too_many(len(statement.lines)))
    ctx, bounds = exact(), _bounds(period)
    sums: dict[tuple[str, tuple[tuple[str, str], ...]], _Sum] = {}
    invoice = Invoice(statement.format, statement.number, statement.currency, [])
    try:
        for line in statement.lines:
            rule = mapping.rule_for(line.ids, line.dimensions)
            if not line.usage or (rule is not None and rule.ignore):
                invoice.ignored.append(line)
                continue
            invoice.notes += _billed_note(line, period, bounds)
            meter = rule.meter if rule is not None and rule.meter else default_meter(line.ids)
            dims = dict(rule.dimensions) if rule is not None and rule.dimensions is not None else dict(line.dimensions)
            transform = rule.transform if rule is not None else None
            key = (meter, tuple(sorted(dims.items())))
            amount = None if line.amount is None else Decimal(line.amount)
            before = sums.get(key)
            if before is None:
                sums[key] = _Sum(meter, dims, Decimal(line.quantity), amount, transform, [line.ref])
                continue
            if before.transform != transform:
                raise MalformedInput(f"the mapping gives {meter} two different divide_by rules "
                                     f"({', '.join(before.refs[:3])} and {line.ref})")
            before.quantity = ctx.add(before.quantity, Decimal(line.quantity))
            before.amount = None if before.amount is None or amount is None else ctx.add(before.amount, amount)
            before.refs.append(line.ref)
        invoice.lines = sorted((InvoiceLine(x.meter, x.dimensions, canonical_decimal(x.quantity),
                                            None if x.amount is None else canonical_decimal(x.amount),
                                            tuple(x.refs), x.transform) for x in sums.values()),
                               key=lambda x: (x.meter, sorted(x.dimensions.items())))
    except (decimal.DecimalException, InvalidBody):
        raise MalformedInput("the invoice's lines add up to more digits than pacspace states a quantity or an "
                             "amount with (64)") from None
    return invoice


def _too_many(n: int) -> str:
    return (f"the invoice states {n} lines or more; pacspace reads at most {MAX_LINES}: an invoice of one "
            "relationship's month has far fewer")


def default_meter(ids: dict[str, str]) -> str:
    """A line's meter when no mapping names one: the invoice's own name for what it bills."""
    for key in ("meter", "lookup_key", "code", "price", "product"):
        if ids.get(key):
            return ids[key]
    return "(unnamed)"


def _bounds(period: str) -> tuple[datetime, datetime]:
    """The period's first instant and the first after it, widened by the slack a line's billed time may have."""
    start, end = (datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) for t in period_bounds(period))
    return start - _SLACK, end + _SLACK


def _billed_note(line: SourceLine, period: str, bounds: tuple[datetime, datetime]) -> list[str]:
    """A note if the line bills for time outside the period (the invoice of another month?)."""
    if line.billed is None or (line.billed[0] >= bounds[0] and line.billed[1] <= bounds[1]):
        return []
    return [f"{line.ref} bills for {line.billed[0]:%Y-%m-%d} to {line.billed[1]:%Y-%m-%d}, not {period}: is this the "
            "invoice of another period?"]


# --- reading JSON ----------------------------------------------------------------


def _json(text: str) -> Any:
    """The text as JSON with every number an exact decimal; None if it is not JSON (then it may be a CSV)."""
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
    except ValueError:
        return None
    except RecursionError:
        # JSON, nested deeper than any invoice: not a CSV to try next.
        raise MalformedInput("the invoice is JSON nested too deeply: not an invoice pacspace reads") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MalformedInput("the invoice is not a JSON object")
    return data


def _decimal(value: Any, what: str) -> str:
    """A quantity or amount: a decimal string, or a JSON number (read exactly, never as a float)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise MalformedInput(f"{what} is not a decimal number: {str(value)[:40]!r}")
    try:
        return canonical_decimal(value.strip() if isinstance(value, str) else value)
    except InvalidBody:
        raise MalformedInput(f"{what} is not a decimal number: {str(value)[:40]!r}") from None


def _minor(value: Any, currency: str | None, what: str) -> str:
    """An amount in minor units (cents) as a decimal in the currency's major unit."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedInput(f"{what} is not a whole number of minor units (cents)")
    digits = 0 if currency in _ZERO_DECIMAL else 3 if currency in _THREE_DECIMAL else 2
    try:
        # Exactly: the default context's 28 digits would round a larger amount without a word.
        return canonical_decimal(exact().scaleb(Decimal(value), -digits))
    except (decimal.DecimalException, InvalidBody):
        raise MalformedInput(f"{what} has more digits than pacspace states an amount with (64)") from None


def _cap(items: Any) -> None:
    if isinstance(items, list) and len(items) > MAX_LINES:
        raise MalformedInput(_too_many(len(items)))


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedInput(f"{what} is not an object")
    return {str(k): _text(v) for k, v in value.items()}


def _text(value: Any) -> str:
    return format(value, "f") if isinstance(value, Decimal) else str(value)


# --- pacspace --------------------------------------------------------------------


def _pacspace(data: dict[str, Any], rid: str, period: str) -> Statement:
    """``{"relationship", "period", "currency"?, "lines": [{"meter", "dimensions", "quantity", "amount"?}]}``."""
    if not isinstance(data.get("lines"), list):
        raise MalformedInput('an invoice is {"relationship", "period", "lines": [...]}')
    if data.get("relationship") != rid or data.get("period") != period:
        raise MalformedInput(f"the invoice is for {data.get('relationship')} {data.get('period')}, not {rid} {period}")
    _cap(data["lines"])
    lines = []
    for n, line in enumerate(data["lines"]):
        if not isinstance(line, dict) or not isinstance(line.get("meter"), str):
            raise MalformedInput("each invoice line has a meter, dimensions and a decimal quantity")
        what = f"line {n + 1}"
        amount = None if line.get("amount") is None else _decimal(line["amount"], f"{what}'s amount")
        lines.append(SourceLine(what, {"meter": line["meter"]}, _strings(line.get("dimensions"), f"{what}'s dimensions"),
                                _decimal(line.get("quantity"), f"{what}'s quantity"), amount))
    currency = data.get("currency")
    return Statement("pacspace", None, currency.lower() if isinstance(currency, str) else None, lines)


# --- Stripe ----------------------------------------------------------------------


def _stripe(data: dict[str, Any]) -> Statement:
    """A Stripe invoice object (API or dashboard JSON), its line items under ``lines.data``."""
    listing = data["lines"]
    if isinstance(listing, dict):
        if listing.get("has_more"):
            raise MalformedInput("the invoice's line items are cut short (lines.has_more is true): download all of "
                                 "them (GET /v1/invoices/<id>/lines) and put them in lines.data")
        items = listing["data"]
    else:
        items = listing
    _cap(items)
    currency = str(data.get("currency") or "").lower() or None
    lines = [_stripe_line(item, currency) for item in items]
    number = data.get("number") or data.get("id")
    return Statement("stripe", str(number) if number else None, currency, lines)


def _stripe_line(item: dict[str, Any], currency: str | None) -> SourceLine:
    price = _stripe_price(item)
    ids = {k: v for k, v in price.items() if v}
    ref = " ".join(x for x in (str(item.get("id") or "line"), f"({ids['price']})" if "price" in ids else "") if x)
    quantity = item.get("quantity_decimal", item.get("quantity"))
    line_currency = str(item.get("currency") or currency or "").lower() or None
    amount = _minor(item["amount"], line_currency, f"{ref}'s amount") if item.get("amount") is not None else None
    usage = quantity is not None and _stripe_usage(item)
    billed = _stripe_period(item.get("period"), ref)
    return SourceLine(ref, ids, {}, _decimal(quantity if quantity is not None else 0, f"{ref}'s quantity"), amount,
                      usage, billed)


def _stripe_price(item: dict[str, Any]) -> dict[str, str]:
    """The line's price id, product, lookup key and meter: from ``pricing.price_details`` (API versions from
    2025-03-31 on) or the older ``price`` (and ``plan``), each an id or an expanded object."""
    details = (item.get("pricing") or {}).get("price_details") or {}
    price = details.get("price") or item.get("price") or item.get("plan") or ""
    obj = price if isinstance(price, dict) else {}
    price_id = obj.get("id") if obj else price if isinstance(price, str) else ""
    product = details.get("product") or obj.get("product") or ""
    recurring = obj.get("recurring") or {}
    return {"price": str(price_id or ""), "lookup_key": str(obj.get("lookup_key") or ""),
            "product": str(product.get("id", "") if isinstance(product, dict) else product),
            "stripe_meter": str(recurring.get("meter") or "")}


def _stripe_usage(item: dict[str, Any]) -> bool:
    """Whether a line bills usage: not a one-off invoice item, nor a licensed (per-seat or flat) price."""
    parent = item.get("parent") or {}
    if parent.get("type") == "invoice_item_details" or item.get("type") == "invoiceitem":
        return False
    details = (item.get("pricing") or {}).get("price_details") or {}
    price = details.get("price") if isinstance(details.get("price"), dict) else item.get("price") or item.get("plan")
    if isinstance(price, dict):
        recurring = price.get("recurring") or {}
        if price.get("type") == "one_time" or recurring.get("usage_type", price.get("usage_type")) == "licensed":
            return False
    return True


def _stripe_period(period: Any, ref: str) -> tuple[datetime, datetime] | None:
    if not isinstance(period, dict) or not all(isinstance(period.get(k), int) for k in ("start", "end")):
        return None
    if not all(0 <= period[k] <= _LATEST for k in ("start", "end")):
        raise MalformedInput(f"{ref}'s period is not a time Stripe states: its start and end are Unix seconds from "
                             "1970 to 9999")
    return (datetime.fromtimestamp(period["start"], timezone.utc), datetime.fromtimestamp(period["end"], timezone.utc))


# --- Lago ------------------------------------------------------------------------


def _lago(data: dict[str, Any]) -> Statement:
    """A Lago invoice (``{"invoice": {...}}`` as its API answers, or the invoice itself) and its ``fees``."""
    invoice = data.get("invoice", data)
    currency = str(invoice.get("currency") or "").lower() or None
    _cap(invoice["fees"])
    lines = [_lago_fee(fee, currency) for fee in invoice["fees"]]
    number = invoice.get("number") or invoice.get("lago_id")
    return Statement("lago", str(number) if number else None, currency, lines)


def _lago_fee(fee: dict[str, Any], currency: str | None) -> SourceLine:
    item = fee["item"]
    code = str(item.get("code") or "")
    ref = f"fee {fee.get('lago_id') or code} ({code})"
    grouped = fee.get("grouped_by") or item.get("grouped_by")
    ids = {"code": code, "filter": str(item.get("filter_invoice_display_name") or "")}
    fee_currency = str(fee.get("amount_currency") or currency or "").lower() or None
    amount = _minor(fee["amount_cents"], fee_currency, f"{ref}'s amount_cents") if "amount_cents" in fee else None
    return SourceLine(ref, {k: v for k, v in ids.items() if v}, _strings(grouped, f"{ref}'s grouped_by"),
                      _decimal(fee.get("units", 0), f"{ref}'s units"), amount, item.get("type") == "charge",
                      _lago_period(fee))


def _lago_period(fee: dict[str, Any]) -> tuple[datetime, datetime] | None:
    try:
        start, end = (datetime.fromisoformat(str(fee[k]).replace("Z", "+00:00")) for k in ("from_date", "to_date"))
    except (KeyError, ValueError):
        return None
    if start.tzinfo is None or end.tzinfo is None:
        return None
    return start, end


# --- CSV -------------------------------------------------------------------------


def _csv(text: str) -> Statement:
    """A header row naming ``meter`` and ``quantity`` (and optionally ``dimensions``, ``dim.<name>``, ``amount``,
    ``currency``), then one row per line."""
    rows = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(rows, [])]
    except csv.Error as exc:
        raise MalformedInput(f"the invoice is neither JSON nor a CSV pacspace reads ({exc})") from None
    if "meter" not in header or "quantity" not in header:
        raise MalformedInput("the invoice is neither JSON nor a CSV whose header names a meter and a quantity column")
    lines: list[SourceLine] = []
    currencies = set()
    n = 1
    while True:
        n += 1
        try:
            row = next(rows, None)
        except csv.Error as exc:  # a field beyond the parser's limit (128 KiB), a NUL, an unclosed quote
            raise MalformedInput(f"the invoice's CSV row {n} is not CSV pacspace reads: {exc}") from None
        if row is None:
            break
        if not any(cell.strip() for cell in row):
            continue
        if len(lines) >= MAX_LINES:
            raise MalformedInput(_too_many(len(lines) + 1))
        if len(row) != len(header):
            raise MalformedInput(f"the invoice's CSV row {n} has {len(row)} cells, its header {len(header)}")
        cells = dict(zip(header, (c.strip() for c in row)))
        lines.append(_csv_line(cells, f"row {n}"))
        if cells.get("currency"):
            currencies.add(cells["currency"].lower())
    if len(currencies) > 1:
        raise MalformedInput(f"the invoice's CSV has amounts in several currencies: {', '.join(sorted(currencies))}")
    return Statement("csv", None, currencies.pop() if currencies else None, lines)


def _csv_line(cells: dict[str, str], ref: str) -> SourceLine:
    dims = _csv_dimensions(cells.get("dimensions", ""), ref)
    dims.update({k[4:]: v for k, v in cells.items() if k.startswith("dim.") and v})
    amount = _decimal(cells["amount"], f"{ref}'s amount") if cells.get("amount") else None
    if not cells["meter"]:
        raise MalformedInput(f"the invoice's CSV {ref} names no meter")
    return SourceLine(ref, {"meter": cells["meter"]}, dims, _decimal(cells["quantity"], f"{ref}'s quantity"), amount)


def _csv_dimensions(text: str, ref: str) -> dict[str, str]:
    """``model=m-1;region=eu`` (what `bill verify --format csv` writes)."""
    dims: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise MalformedInput(f"the invoice's CSV {ref}: dimensions are name=value pairs separated by ';'")
        dims[name.strip()] = value.strip()
    return dims
