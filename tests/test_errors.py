"""The app's middleware: authentication first, then every error as a JSON answer with a stable code."""

from __future__ import annotations

import logging

from aiohttp import web

from pacspace.errors import PoolFull
from pacspace.server.errors import error_middleware
from pacspace.server.records_api import Unauthorized


async def _before(request: web.Request) -> None:
    if request.path.startswith("/private") and request.headers.get("Authorization") != "Bearer ok":
        raise Unauthorized("a valid bearer token is required")


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret-detail")


async def _full(request: web.Request) -> web.Response:
    raise PoolFull("busy", retry_after=3)


async def _moved(request: web.Request) -> web.Response:
    raise web.HTTPFound("/private/ok")


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def test_errors_are_json_with_stable_codes_and_internals_stay_in_the_log(aiohttp_client, caplog):
    app = web.Application(middlewares=[error_middleware(before=_before)])
    app.router.add_get("/private/ok", _ok)
    app.router.add_get("/boom", _boom)
    app.router.add_get("/full", _full)
    app.router.add_get("/moved", _moved)
    client = await aiohttp_client(app)

    resp = await client.get("/private/ok")
    assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="pacspace"'
    resp = await client.get("/private/ok", headers={"Authorization": "Bearer ok"})
    assert resp.status == 200 and await resp.json() == {"ok": True}

    with caplog.at_level(logging.ERROR, logger="pacspace.server"):
        resp = await client.get("/boom")
    body = await resp.json()
    assert resp.status == 500 and body == {"error": "internal", "message": "internal error"}
    assert "secret-detail" in caplog.text and "RuntimeError" in caplog.text

    resp = await client.get("/full")
    assert resp.status == 503 and resp.headers["Retry-After"] == "3"
    resp = await client.post("/full")
    assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed" and resp.headers["Allow"] == "GET,HEAD"
    resp = await client.get("/nowhere")
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    resp = await client.get("/moved", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/private/ok"
