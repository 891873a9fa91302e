"""Price sheets: the unit price of each meter and dimensions, tiers allowed, in exact decimals. Pure.

```json
{"currency": "usd", "round_to": "0.01", "rounding": "half_up",
 "prices": [
   {"meter": "llm.output.visible_tokens", "dimensions": {"model": "m-1"}, "unit_price": "0.00002"},
   {"meter": "llm.requests", "tiers_mode": "graduated",
    "tiers": [{"up_to": "1000", "unit_price": "0"}, {"up_to": null, "unit_price": "0.001", "flat": "5"}]}
 ]}
```

A line's price is the entry for its meter whose dimensions it has, the one
naming the most dimensions if several do. Graduated tiers price each unit at
the tier it falls in (adding a tier's ``flat`` fee once the quantity reaches
the tier); volume tiers price every unit at the tier the whole quantity falls
in. Amounts are computed exactly, then rounded to ``round_to`` (if given) as
the invoice rounds them. docs/invoices.md has the details.
"""

from __future__ import annotations

import decimal
import json
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_UP, Decimal
from functools import cached_property
from typing import Any

from ..errors import MalformedInput
from ..records.body import InvalidBody, canonical_decimal, exact

ROUNDINGS = {"half_up": ROUND_HALF_UP, "half_even": ROUND_HALF_EVEN, "up": ROUND_UP, "down": ROUND_DOWN}
_SHEET_KEYS = {"currency", "round_to", "rounding", "prices"}
_PRICE_KEYS = {"meter", "dimensions", "unit_price", "tiers", "tiers_mode"}


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None  # None: no upper bound (the last tier)
    unit_price: Decimal
    flat: Decimal = Decimal(0)


@dataclass(frozen=True)
class Price:
    meter: str
    dimensions: dict[str, str]
    tiers: tuple[Tier, ...]  # a flat unit price is one unbounded tier
    mode: str = "graduated"  # or "volume"

    def amount(self, quantity: Decimal) -> Decimal:
        ctx = exact()
        if quantity <= 0:  # nothing used (or a net credit): the first tier's unit price, no flat fee
            return ctx.multiply(quantity, self.tiers[0].unit_price)
        if self.mode == "volume":
            tier = next(t for t in self.tiers if t.up_to is None or quantity <= t.up_to)
            return ctx.add(ctx.multiply(quantity, tier.unit_price), tier.flat)
        total, below = Decimal(0), Decimal(0)
        for tier in self.tiers:
            top = quantity if tier.up_to is None else min(quantity, tier.up_to)
            total = ctx.add(total, ctx.add(ctx.multiply(ctx.subtract(top, below), tier.unit_price), tier.flat))
            if tier.up_to is None or quantity <= tier.up_to:
                break
            below = tier.up_to
        return total


@dataclass(frozen=True)
class PriceSheet:
    currency: str | None
    prices: tuple[Price, ...]
    round_to: Decimal | None = None
    rounding: str = "half_up"

    @cached_property  # a frozen dataclass's __dict__ still takes it: built once, at the first line priced
    def _by_meter(self) -> dict[str, list[Price]]:
        out: dict[str, list[Price]] = {}
        for p in self.prices:
            out.setdefault(p.meter, []).append(p)
        return out

    def price_for(self, meter: str, dimensions: dict[str, str]) -> Price | None:
        fitting = [p for p in self._by_meter.get(meter, ())
                   if all(dimensions.get(k) == v for k, v in p.dimensions.items())]
        return max(fitting, key=lambda p: len(p.dimensions), default=None)

    def amount(self, meter: str, dimensions: dict[str, str], quantity: str) -> str | None:
        """The amount of ``quantity`` (canonical decimal, rounded as the sheet says); None if no price applies.

        Exact throughout: the price in the exact() context (200 digits, nothing rounded), then rounded to
        ``round_to`` once, in a context of the same precision (never the default 28 digits, which would round a
        29-digit quantity's amount, or refuse to quantize it)."""
        price = self.price_for(meter, dimensions)
        if price is None:
            return None
        try:
            amount = price.amount(Decimal(quantity))
            if self.round_to is not None:
                ctx = exact()
                ctx.traps[decimal.Inexact] = False  # rounding to round_to is the point
                ctx.rounding = ROUNDINGS[self.rounding]
                amount = ctx.quantize(amount, self.round_to)
            return canonical_decimal(amount)
        except (decimal.DecimalException, InvalidBody):
            raise MalformedInput(f"the amount of {quantity} {meter} needs more digits than pacspace states an amount "
                                 "with (64)") from None


def load_prices(text: str) -> PriceSheet:
    """Parse a price sheet; MalformedInput naming what is wrong. Numbers may be strings or JSON numbers (read
    exactly, never as floats)."""
    try:
        data = json.loads(text, parse_float=Decimal)
    except (ValueError, RecursionError):
        raise MalformedInput("the price sheet is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("prices"), list) or set(data) - _SHEET_KEYS:
        raise MalformedInput('a price sheet is {"currency", "round_to"?, "rounding"?, "prices": [...]}')
    rounding = data.get("rounding", "half_up")
    if rounding not in ROUNDINGS:
        raise MalformedInput(f"the price sheet's rounding is one of {', '.join(ROUNDINGS)}")
    round_to = _decimal(data["round_to"], "the price sheet's round_to") if data.get("round_to") is not None else None
    if round_to is not None and round_to <= 0:
        raise MalformedInput("the price sheet's round_to is above 0, such as \"0.01\"")
    currency = data.get("currency")
    if currency is not None and not isinstance(currency, str):
        raise MalformedInput("the price sheet's currency is a currency code, such as \"usd\"")
    prices = tuple(_price(item, n + 1) for n, item in enumerate(data["prices"]))
    return PriceSheet(currency.lower() if currency else None, prices, round_to, rounding)


def _price(item: Any, n: int) -> Price:
    what = f"the price sheet's price {n}"
    if not isinstance(item, dict) or not isinstance(item.get("meter"), str) or set(item) - _PRICE_KEYS:
        raise MalformedInput(f"{what} is {{\"meter\", \"dimensions\"?, \"unit_price\" or \"tiers\"}}")
    dims = item.get("dimensions") or {}
    if not isinstance(dims, dict) or not all(isinstance(v, str) for v in dims.values()):
        raise MalformedInput(f"{what}: dimensions is an object of strings")
    mode = item.get("tiers_mode", "graduated")
    if mode not in ("graduated", "volume"):
        raise MalformedInput(f"{what}: tiers_mode is graduated or volume")
    if ("unit_price" in item) == ("tiers" in item):
        raise MalformedInput(f"{what} has a unit_price or tiers (one of them)")
    tiers = (Tier(None, _decimal(item["unit_price"], f"{what}'s unit_price")),) if "unit_price" in item \
        else _tiers(item["tiers"], what)
    return Price(item["meter"], dict(dims), tiers, mode)


def _tiers(items: Any, what: str) -> tuple[Tier, ...]:
    if not isinstance(items, list) or not items or not all(isinstance(t, dict) for t in items):
        raise MalformedInput(f"{what}: tiers is a list of {{\"up_to\", \"unit_price\", \"flat\"?}}")
    tiers = tuple(Tier(None if t.get("up_to") is None else _decimal(t["up_to"], f"{what}'s up_to"),
                       _decimal(t.get("unit_price", "0"), f"{what}'s unit_price"),
                       _decimal(t.get("flat", "0"), f"{what}'s flat")) for t in items)
    bounds = [t.up_to for t in tiers[:-1]]
    if tiers[-1].up_to is not None or None in bounds or bounds != sorted(set(bounds)):  # type: ignore[type-var]
        raise MalformedInput(f"{what}: tiers rise (up_to increasing) and the last has \"up_to\": null")
    return tiers


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise MalformedInput(f"{what} is not a decimal number")
    try:
        return Decimal(canonical_decimal(value))
    except InvalidBody:
        raise MalformedInput(f"{what} is not a decimal number: {str(value)[:40]!r}") from None
