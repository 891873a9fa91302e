"""The mapping file: how an invoice's lines name pacspace meters and dimensions where the names differ. Pure.

```json
{"lines": [
  {"match": {"price": "price_1QOutTok"}, "meter": "llm.output.visible_tokens", "dimensions": {"model": "m-1"}},
  {"match": {"code": "output_tokens", "dimensions": {"model": "m-1"}}, "meter": "llm.output.visible_tokens"},
  {"match": {"price": "price_1QBase"}, "ignore": true},
  {"match": {"meter": "tokens_k"}, "meter": "llm.output.visible_tokens", "divide_by": "1000", "round": "up"}
]}
```

The first rule whose ``match`` holds names the line's meter (and its
dimensions, else the line's own are kept); ``ignore`` leaves the line out of
the check (a base fee). ``divide_by`` with ``round`` (``up`` or ``down``) says
the provider bills packages (Stripe's ``transform_quantity``): the committed
quantity is divided and rounded so before it is compared. docs/invoices.md
lists what each format lets a rule match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Any

from ..errors import MalformedInput
from ..records.body import DECIMAL_PRECISION, InvalidBody, canonical_decimal

MATCH_KEYS = ("meter", "price", "product", "lookup_key", "stripe_meter", "code", "filter", "dimensions")
_RULE_KEYS = {"match", "meter", "dimensions", "ignore", "divide_by", "round"}
_ROUNDING = ("up", "down")


@dataclass(frozen=True)
class Transform:
    """The provider bills packages of ``divide_by`` units, rounded ``up`` or ``down``."""

    divide_by: str
    round: str

    def apply(self, committed: str) -> str:
        """The committed quantity in whole packages, exactly (the remainder decides the rounding)."""
        quotient, remainder = Context(prec=DECIMAL_PRECISION).divmod(Decimal(committed), Decimal(self.divide_by))
        if self.round == "up" and remainder > 0:
            quotient += 1
        elif self.round == "down" and remainder < 0:
            quotient -= 1
        return canonical_decimal(quotient)

    def describe(self) -> str:
        return f"÷ {self.divide_by}, rounded {self.round}"


@dataclass(frozen=True)
class Rule:
    match: dict[str, str]
    match_dimensions: dict[str, str]
    meter: str | None = None
    dimensions: dict[str, str] | None = None
    ignore: bool = False
    transform: Transform | None = None

    def holds(self, ids: dict[str, str], dimensions: dict[str, str]) -> bool:
        return all(ids.get(k) == v for k, v in self.match.items()) and all(
            dimensions.get(k) == v for k, v in self.match_dimensions.items())


@dataclass(frozen=True)
class Mapping:
    rules: tuple[Rule, ...] = ()

    def rule_for(self, ids: dict[str, str], dimensions: dict[str, str]) -> Rule | None:
        return next((rule for rule in self.rules if rule.holds(ids, dimensions)), None)


def load_mapping(text: str) -> Mapping:
    """Parse a mapping file; MalformedInput naming the rule that is wrong."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise MalformedInput("the mapping file is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("lines"), list):
        raise MalformedInput('a mapping file is {"lines": [{"match": {...}, "meter": ..., "dimensions": {...}}, ...]}')
    return Mapping(tuple(_rule(item, n + 1) for n, item in enumerate(data["lines"])))


def _rule(item: Any, n: int) -> Rule:
    what = f"the mapping's rule {n}"
    if not isinstance(item, dict) or not isinstance(item.get("match"), dict) or not item["match"]:
        raise MalformedInput(f"{what} has no match object")
    unknown = set(item) - _RULE_KEYS | set(item["match"]) - set(MATCH_KEYS)
    if unknown:
        raise MalformedInput(f"{what} has unknown fields {', '.join(sorted(unknown))}")
    match = {k: _string(v, f"{what}'s match.{k}") for k, v in item["match"].items() if k != "dimensions"}
    ignore = item.get("ignore", False)
    if not isinstance(ignore, bool):
        raise MalformedInput(f"{what}: ignore is true or false")
    meter = item.get("meter")
    if not ignore and not isinstance(meter, str):
        raise MalformedInput(f"{what} names no meter (or says \"ignore\": true)")
    return Rule(match, _pairs(item["match"].get("dimensions"), f"{what}'s match.dimensions") or {}, meter,
                _pairs(item.get("dimensions"), f"{what}'s dimensions"), ignore, _transform(item, what))


def _transform(item: dict[str, Any], what: str) -> Transform | None:
    if "divide_by" not in item and "round" not in item:
        return None
    divide_by, rounding = item.get("divide_by"), item.get("round")
    if rounding not in _ROUNDING:
        raise MalformedInput(f"{what}: divide_by needs round, \"up\" or \"down\"")
    try:
        text = canonical_decimal(_string(divide_by, f"{what}'s divide_by"))
    except InvalidBody:
        text = "0"
    if Decimal(text) <= 0:
        raise MalformedInput(f"{what}: divide_by is a decimal above 0, as a string")
    return Transform(text, str(rounding))


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise MalformedInput(f"{what} is not a string")
    return value


def _pairs(value: Any, what: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise MalformedInput(f"{what} is an object of strings")
    return dict(value)
