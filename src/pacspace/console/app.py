"""The console's aiohttp application: routes, the guard every request passes (console.security), errors as JSON
under /api/ and as a page elsewhere, and the background poll's life with the application's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from ..client.monitor_state import MonitorState
from ..errors import PacspaceError
from . import handlers as h
from . import pages
from .poller import Poller
from .security import NotSignedIn, check_request, frame
from .state import CONFIG, CONSOLE, MAX_UPLOAD, Console, ConsoleConfig

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("pacspace.console")
_logged: set[tuple[str, str]] = set()  # the unexpected errors logged already (bounded): each is logged once


def create_console_app(config: ConsoleConfig, background: bool = True) -> web.Application:
    """The console for ``config`` (it opens the verified copy now); with ``background`` it polls at start and then
    every ``config.interval`` seconds."""
    app = web.Application(middlewares=[_guard], client_max_size=MAX_UPLOAD)
    state = MonitorState(config.home.path)
    app[CONFIG] = config
    app[CONSOLE] = Console(config, state, Poller(config.home, state, config.log_key, config.server, config.interval))
    app.cleanup_ctx.append(_lifetime(background))
    _routes(app.router)
    return app


def _routes(r: web.UrlDispatcher) -> None:
    period = "/r/{rid}/p/{period}"
    r.add_get("/", h.home_page)
    r.add_get("/login", h.login_page)
    r.add_post("/login", h.login)
    r.add_get("/static/{name}", h.static_file)
    r.add_get("/evidence/{name}", h.evidence_file)
    r.add_get("/r/{rid}", h.relationship_page)
    r.add_get("/r/{rid}/records/{seq}", h.record_page)
    r.add_get(period, h.period_page)
    r.add_post(period + "/invoice", h.check_invoice_page)
    r.add_get(period + "/report.html", h.report_download)
    r.add_get(period + "/bill.csv", h.csv_download)
    r.add_get(period + "/evidence.json", h.evidence_download)
    r.add_post("/invitations/{rid}/accept", h.accept_invitation)
    r.add_post("/invitations/{rid}/decline", h.decline_invitation)
    r.add_post("/poll", h.poll_form)
    r.add_get("/api/poll", h.poll_status)
    r.add_post("/api/poll", h.poll_start)
    r.add_get("/api/r/{rid}/p/{period}", h.bill_api)
    r.add_post("/api/r/{rid}/p/{period}/invoice", h.check_invoice_api)


def _lifetime(background: bool) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        console = app[CONSOLE]
        task = asyncio.create_task(console.poller.run()) if background else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            console.state.close()

    return lifetime


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    api = request.path.startswith("/api/")
    try:
        await check_request(request.app[CONFIG].access, request)
        response = await handler(request)
    except web.HTTPException as exc:  # the router's own: no such route, or method
        response = _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, api)
    except NotSignedIn as exc:
        response = _error(exc.http_status, exc.code, str(exc), api) if api else h.redirect("/login")
    except PacspaceError as exc:
        response = _error(exc.http_status, exc.code, str(exc), api)
    except Exception as exc:  # noqa: BLE001 - a bug, or an input no check foresaw: an answer all the same
        _log_once(request, exc)
        response = _error(500, "internal", "the console could not answer this request (an unexpected "
                                           f"{type(exc).__name__}); its log has the details", api)
    return frame(response)


def _log_once(request: web.Request, exc: Exception) -> None:
    """Log an unexpected error with its traceback, once per kind and route: what a request sent repeatedly (a
    hostile upload, again and again) does not flood the log. Neither the request's body nor its headers (the
    console's token, a cookie) are logged."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else request.path
    seen = (type(exc).__name__, route)
    if seen in _logged:
        return
    if len(_logged) >= 256:
        _logged.clear()
    _logged.add(seen)
    log.error("unexpected error answering %s %s (logged once per route): %s", request.method, route,
              type(exc).__name__, exc_info=exc)


def _error(status: int, code: str, message: str, api: bool) -> web.Response:
    if api:
        return web.json_response({"error": code, "message": message}, status=status)
    return web.Response(text=pages.error(status, message), status=status, content_type="text/html", charset="utf-8")
