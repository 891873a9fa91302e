"""The console against hostile answers and uploads: a log server that sends one bad field, an invoice no reader
foresaw, a bug in a handler. Each gets an answer (a page, JSON, a poll marked failed), never a dead poll or a bare
HTTP 500."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import aiohttp
import pytest
from aiohttp import web
from billing_scenario import PERIOD, month_world
from test_console import CONSOLE_ONLY, check, start

import pacspace.console.app as console_app
import pacspace.console.handlers as handlers
import pacspace.console.poller as poller


@pytest.fixture
async def world(aiohttp_client, tmp_path, log_database):
    """The month's world, its log and records on each backend (log_database: SQLite, then PostgreSQL)."""
    return await month_world(aiohttp_client, tmp_path, log_database)


async def rewriting_proxy(aiohttp_client, upstream: str, created_at):
    """A log server that forwards to ``upstream`` and rewrites each pending invitation's ``created_at``."""

    async def forward(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with aiohttp.ClientSession() as session:
            async with session.request(request.method, upstream + request.path_qs, data=await request.read(),
                                       headers=headers) as answer:
                body, status, ctype = await answer.read(), answer.status, answer.content_type
        if request.path == "/v1/relationships" and request.query.get("state") == "pending":
            data = json.loads(body)
            for rel in data["relationships"]:
                rel["created_at"] = created_at
            body = json.dumps(data).encode()
        return web.Response(body=body, status=status, content_type=ctype)

    app = web.Application(client_max_size=1 << 26)
    app.router.add_route("*", "/{tail:.*}", forward)
    return str((await aiohttp_client(app)).make_url("")).rstrip("/")


BAD_CREATED_AT = [("a string", "soon"), ("1e20", 10**20), ("negative", -5), ("a float", 1.5), ("true", True),
                  ("null", None), ("an object", {"t": 1})]


# Every bad value on SQLite; on PostgreSQL one: the invitations the proxy rewrites are the log's pending relationships
# (read from its records), and what the console does with the bad value is the same on both.
@pytest.mark.parametrize("log_database,created_at",
                         [("sqlite", v) for _, v in BAD_CREATED_AT] + [("postgres", BAD_CREATED_AT[0][1])],
                         ids=[f"sqlite-{n}" for n, _ in BAD_CREATED_AT] + [f"postgres-{BAD_CREATED_AT[0][0]}"],
                         indirect=["log_database"])
async def test_one_bad_field_from_the_server_hides_one_date_not_the_poll(aiohttp_client, world, created_at):
    url = await rewriting_proxy(aiohttp_client, world.url, created_at)
    client, console = await start(aiohttp_client, world, url=url, poll=False)
    await console.poller.poll_once()
    status = console.poller.status
    assert status.ok is True, status.message
    assert [i.relationship for i in status.invitations] == [world.invited]
    assert status.invitations[0].created_at is None
    home = await client.get("/")
    page = await home.text()
    assert home.status == 200 and f'data-relationship="{world.invited}"' in page
    assert "since a time the log server did not say" in page


@CONSOLE_ONLY
async def test_a_good_created_at_is_shown(aiohttp_client, world):
    url = await rewriting_proxy(aiohttp_client, world.url, 1_796_000_000)
    client, console = await start(aiohttp_client, world, url=url)
    assert console.poller.status.invitations[0].created_at == 1_796_000_000
    assert "since 2026-11-30 " in await (await client.get("/")).text()


@CONSOLE_ONLY
async def test_an_unexpected_failure_marks_the_poll_failed_is_logged_once_and_polling_goes_on(
        aiohttp_client, world, monkeypatch, caplog):
    calls = []

    async def broken(*args, **kwargs):
        calls.append(1)
        raise ValueError("invalid literal for int() with base 10: 'soon'")

    monkeypatch.setattr(poller, "poll", broken)
    client, console = await start(aiohttp_client, world, poll=False)
    console.poller.interval = 0.05
    with caplog.at_level(logging.ERROR, logger="pacspace.console"):
        task = asyncio.create_task(console.poller.run())
        try:
            for _ in range(200):
                if len(calls) >= 3:
                    break
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert len(calls) >= 3  # the loop polled again after each failure
    status = console.poller.status
    assert status.ok is False and not status.running
    assert "unexpected error (ValueError)" in status.message and "polls again" in status.message
    logged = [r for r in caplog.records if r.name == "pacspace.console"]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with its traceback
    assert "tok-bob" not in caplog.text
    page = await (await client.get("/")).text()
    assert 'data-state="failed"' in page and "unexpected error (ValueError)" in page


HOSTILE_INVOICES = [
    ("a Stripe period in the year 3e10", json.dumps({"object": "invoice", "currency": "usd", "lines": {"data": [
        {"id": "il_1", "quantity": 5, "amount": 10, "price": "llm.requests",
         "period": {"start": 10**18, "end": 10**18}}]}})),
    ("a Stripe period before year 1", json.dumps({"object": "invoice", "currency": "usd", "lines": {"data": [
        {"id": "il_1", "quantity": 5, "amount": 10, "price": "llm.requests",
         "period": {"start": -10**12, "end": 0}}]}})),
    ("a CSV field over 128 KiB", "meter,quantity\n" + "a" * 200_000 + ",1\n"),
    ("JSON nested 100000 deep", "[" * 100_000 + "]" * 100_000),
]


@CONSOLE_ONLY
@pytest.mark.parametrize("name,invoice", HOSTILE_INVOICES, ids=[name for name, _ in HOSTILE_INVOICES])
async def test_a_hostile_invoice_gets_a_clear_refusal_not_a_500(aiohttp_client, world, name, invoice):
    client, _ = await start(aiohttp_client, world)
    api = await check(client, world, invoice.encode(), api=True)
    assert api.status == 400 and api.content_type == "application/json", name
    body = await api.json()
    assert body["error"] == "malformed" and body["message"], body
    page = await check(client, world, invoice.encode())
    assert page.status == 400 and 'id="invoice-error"' in await page.text()


@CONSOLE_ONLY
async def test_an_unexpected_error_under_api_answers_json_and_is_logged_once(aiohttp_client, world, monkeypatch,
                                                                               caplog):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(handlers, "_checked_bill", broken)
    monkeypatch.setattr(console_app, "_logged", set())
    client, _ = await start(aiohttp_client, world)
    with caplog.at_level(logging.ERROR, logger="pacspace.console"):
        for _ in range(3):
            resp = await client.get(f"/api/r/{world.rid}/p/{PERIOD}")
            assert resp.status == 500 and resp.content_type == "application/json"
            body = await resp.json()
            assert body["error"] == "internal" and "ZeroDivisionError" in body["message"]
        page = await client.get(f"/r/{world.rid}/p/{PERIOD}/bill.csv")
        assert page.status == 500 and page.content_type == "text/html"
        assert "Content-Security-Policy" in page.headers  # framed as every answer is
    logged = [r for r in caplog.records if r.name == "pacspace.console"]
    assert len(logged) == 2  # once per route, not once per request
    assert world.rid not in caplog.text  # the route's pattern is logged, not what the request named


@CONSOLE_ONLY
async def test_the_invoice_is_read_off_the_event_loop(aiohttp_client, world, monkeypatch):
    threads = []
    real = handlers.read_invoice

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(handlers, "read_invoice", spy)
    client, _ = await start(aiohttp_client, world)
    resp = await check(client, world, "stripe-invoice.json", "stripe-mapping.json", "prices.json", api=True)
    assert resp.status == 200
    assert threads and threads[0] is not threading.main_thread()
