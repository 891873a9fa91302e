"""One month of a provider's usage for the console's and the invoices' tests, and the invoices that bill it.

tests/fixtures/invoices/ holds the provider's invoices of this month as Stripe (API version 2025-03-31 and
later: ``pricing.price_details``), Lago and CSV issue them, with the mapping files and the price sheet that
connect their names to pacspace's. One dimension value is hostile (quotes and markup): every page must escape it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pacspace.records.body import Line

FIXTURES = Path(__file__).parent / "fixtures" / "invoices"
HOSTILE_MODEL = 'm-"2" <img src=x onerror=alert(1)>'
PERIOD = "2026-11"
OUT, IN, REQ = "llm.output.visible_tokens", "llm.input.uncached_tokens", "llm.requests"
USAGE: list[tuple[tuple[str, str], list[Line]]] = [
    (("2026-11-02T00:00:00Z", "2026-11-02T01:00:00Z"),
     [Line(OUT, "token", "1234000", {"model": "m-1"}), Line(IN, "token", "4000000", {"model": "m-1"}),
      Line(REQ, "request", "1200")]),
    (("2026-11-09T00:00:00Z", "2026-11-09T01:00:00Z"),
     [Line(OUT, "token", "766000", {"model": "m-1"}), Line(IN, "token", "6000000", {"model": "m-1"}),
      Line(REQ, "request", "1300"), Line(OUT, "token", "10000", {"model": HOSTILE_MODEL})]),
    (("2026-11-15T12:00:00Z", "2026-11-15T13:00:00Z"),
     [Line(OUT, "token", "500000", {"model": "m-1"}), Line(REQ, "request", "1500")]),
]
TOTALS = {(OUT, "m-1"): "2500000", (OUT, HOSTILE_MODEL): "10000", (IN, "m-1"): "10000000", (REQ, None): "4000"}


def fixture(name: str) -> Path:
    return FIXTURES / name


async def record_month(client: Any, home: Any, view: Any) -> None:
    """The provider records the month's usage and closes it (library calls, as its billing code would)."""
    from pacspace.client.records import append_body, close_maker, delta_maker

    for window, lines in USAGE:
        await append_body(client, home, view, delta_maker(PERIOD, window, lines))
    await append_body(client, home, view, close_maker(view, PERIOD))


def lines_files(folder: Path) -> list[tuple[str, Path]]:
    """The month's deltas as `pacspace record --lines` files: (window, file) per delta."""
    out = []
    for n, (window, lines) in enumerate(USAGE):
        path = folder / f"lines-{n}.json"
        path.write_text(json.dumps([line.to_json() for line in lines]))
        out.append((f"{window[0]}/{window[1]}", path))
    return out


async def month_world(aiohttp_client: Any, tmp_path: Path, database: str | None = None) -> Any:
    """A log server in process (its tables in ``database``, a PostgreSQL URL, if given); acme records and closes the
    month for bob, who accepts; acme also invites bob to a second relationship, left pending."""
    from types import SimpleNamespace

    from helpers import accept_as, served_log_with_two_homes

    from pacspace.client.http import PacspaceClient
    from pacspace.client.records import create_relationship, load_relationship

    url, acme, bob = await served_log_with_two_homes(aiohttp_client, tmp_path, database)
    async with PacspaceClient(url, "tok-acme") as c:
        rid = (await create_relationship(c, acme.keys(), "acme", "bob"))["relationship"]
        view = await load_relationship(c, acme, rid, acme.log_key())
        await record_month(c, acme, view)
        invited = (await create_relationship(c, acme.keys(), "acme", "bob"))["relationship"]
    await accept_as(url, bob, "tok-bob", rid)
    return SimpleNamespace(url=url, acme=acme, bob=bob, rid=rid, invited=invited, view=view)


async def monitor_once(world: Any) -> Any:
    """bob's monitor polls once: its verified copy then holds the month."""
    from pacspace.client.http import PacspaceClient
    from pacspace.client.monitor import poll
    from pacspace.client.monitor_state import MonitorState

    state = MonitorState(world.bob.path)
    try:
        async with PacspaceClient(world.url, "tok-bob") as c:
            return await poll(c, world.bob, state, world.bob.log_key())
    finally:
        state.close()
