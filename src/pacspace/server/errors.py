"""The one place that turns exceptions into HTTP answers: ``{"error": code, "message": ...}``."""

from __future__ import annotations

import logging

from aiohttp import web

from ..errors import PacspaceError, PoolFull

log = logging.getLogger("pacspace.server")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    try:
        return await handler(request)
    except PacspaceError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, PoolFull) else None
        if exc.http_status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="pacspace"'}
        return web.json_response(
            {"error": exc.code, "message": str(exc), **exc.details()}, status=exc.http_status, headers=headers
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return json_error(exc.status, code, exc.reason, headers={k: v for k, v in exc.headers.items() if k == "Allow"})
    except Exception:
        # The traceback goes to the operator's log; the client learns nothing internal.
        log.exception("internal error serving %s %s", request.method, request.path)
        return json_error(500, "internal", "internal error")
