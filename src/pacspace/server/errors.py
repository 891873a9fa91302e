"""The one place that turns exceptions into HTTP answers: ``{"error": code, "message": ...}``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import PacspaceError

log = logging.getLogger("pacspace.server")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


def error_middleware(
    before: Callable[[web.Request], Awaitable[None]] | None = None,
    after: Callable[[web.Request, web.StreamResponse | None], None] | None = None,
) -> Any:
    """The app's one middleware: awaits ``before`` (body limits, authentication, admission), then the handler,
    answers any error, and runs ``after`` with the answer (giving back what the request held, counting it).

    One layer, not one per concern: each aiohttp middleware costs about 10 µs a
    request (docs/performance.md).
    """

    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        response = None
        try:
            if before is not None:
                await before(request)
            response = await handler(request)
        except Exception as exc:
            response = _answer(request, exc)
        finally:
            if after is not None:
                after(request, response)
        return response

    return middleware


def _answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The JSON answer to an exception a handler raised; re-raises what is not an error (a redirect)."""
    if isinstance(exc, PacspaceError):
        retry_after = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        if exc.http_status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="pacspace"'}
        message = str(exc)
        if exc.public_message is not None:
            log.warning("%s %r: %s", request.method, request.path, message)
            message = exc.public_message
        return web.json_response(
            {"error": exc.code, "message": message, **exc.details()}, status=exc.http_status, headers=headers
        )
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = _HTTP_CODES.get(exc.status, "http_error")
        return json_error(exc.status, code, exc.reason, headers={k: v for k, v in exc.headers.items() if k == "Allow"})
    # The traceback goes to the operator's log; the client learns nothing internal.
    log.error("internal error serving %s %s", request.method, request.path, exc_info=exc)
    return json_error(500, "internal", "internal error")
