"""HTTP connections: how many one process holds, how long a request head may take, what malformed framing gets.

aiohttp's server takes its connections' protocol from the application (``_make_handler``); pacspace's
gives it the limits below, so that every way of serving the app (``pacspace serve``, ``serve
--workers``, the tests' servers) has them:

- At most ``cap`` connections: past it, the connection that has waited longest for its next request
  head is closed to make room (a slow or idle one: a request in progress is never cut), or the
  newcomer if every connection is busy. The cap is derived from RLIMIT_NOFILE, so ``accept()`` never
  runs out of descriptors (which asyncio logs with a traceback each time it happens). A serving command
  first raises its soft limit to the hard one (``raise_open_file_limit``, as Go's runtime does at start):
  at the common soft default of 1,024, a thousand slow connections would reach the cap, and churn there
  overflows the kernel's listen queue, which delays an honest client's connection by its SYN retry (1 s).
- A request head must be complete ``header_timeout`` seconds after the connection opened or answered
  its previous request (aiohttp's keep-alive timer, which also closes idle keep-alive connections).
- Malformed framing (a NUL in a header, both Content-Length and Transfer-Encoding, not HTTP at all) is
  answered with the JSON error shape and one log line, never a traceback.
- An answer given before its request's body was read (an error, a refusal) reads and drops at most
  ``LINGER_BYTES`` more of that body before the connection is closed.
"""

from __future__ import annotations

import logging
import resource
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web, web_protocol, web_server
from aiohttp.abc import AbstractAccessLogger
from aiohttp.streams import StreamReader
from aiohttp.web_log import AccessLogger

from .errors import json_error

log = logging.getLogger("pacspace.server")

# Descriptors a serving process keeps for itself: SQLite's files (log.db, leaves.db, tags.db, records.db,
# each with its WAL and shared memory, for several connections), segment files, the records lock, the
# listening and private sockets, the event loop's own, and connections to witnesses.
FD_HEADROOM = 128
MIN_CONNECTIONS = 16
# However many descriptors the process may open (raise_open_file_limit takes the hard limit, often 524,288):
# memory, not descriptors, bounds idle connections then, at several KB each.
MAX_CONNECTIONS = 16384
# What is read and dropped of a body nobody will read (the request was answered without it) before the
# connection is closed: enough for a client to see its answer, too little to keep the server busy.
LINGER_BYTES = 256 << 10
LINGER_SECONDS = 2.0
# Where raise_open_file_limit stops when the hard limit is unlimited (or huge).
MAX_OPEN_FILES = 1 << 20
_MESSAGE_CHARS = 200


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (bounded by MAX_OPEN_FILES); the new soft limit.

    Inherited by the processes it starts (serve's workers). A limit that cannot be raised is kept.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(nofile: int | None = None) -> int:
    """Connections one process may hold with ``nofile`` descriptors (default: its soft RLIMIT_NOFILE), at most
    MAX_CONNECTIONS."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return min(max(nofile - FD_HEADROOM, MIN_CONNECTIONS), MAX_CONNECTIONS)


@dataclass(frozen=True)
class ConnectionLimits:
    cap: int
    header_timeout: float


LIMITS = web.AppKey("connection_limits", ConnectionLimits)

with warnings.catch_warnings():
    # aiohttp discourages subclassing its Application in general; this one changes only which server
    # protocol it makes, the one hook aiohttp has for that (and keeps its signature).
    warnings.simplefilter("ignore", DeprecationWarning)

    class GuardedApplication(web.Application):
        """An aiohttp application whose connections have the limits in ``app[LIMITS]``."""

        def _make_handler(
            self,
            *,
            loop: Any = None,
            access_log_class: type[AbstractAccessLogger] = AccessLogger,
            **kwargs: Any,
        ) -> web_server.Server:
            self._set_loop(loop)
            self.freeze()
            return GuardedServer(
                self._handle,
                request_factory=self._make_request,
                loop=self._loop,
                limits=self[LIMITS],
                debug=self._debug,
                access_log_class=access_log_class,
                **kwargs,
            )


class GuardedServer(web_server.Server):
    """aiohttp's server, with the connection cap: it knows which connections are waiting for a request head."""

    def __init__(self, handler: Callable[..., Awaitable[web.StreamResponse]], *, limits: ConnectionLimits, **kwargs: Any) -> None:
        kwargs.update(keepalive_timeout=limits.header_timeout, lingering_time=LINGER_SECONDS, auto_decompress=False)
        super().__init__(handler, **kwargs)
        self.limits = limits
        self._open = 0
        # Connections waiting for a request head, the longest-waiting first.
        self._waiting: OrderedDict[GuardedRequestHandler, None] = OrderedDict()

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)

    def opened(self, conn: GuardedRequestHandler) -> None:
        self._open += 1
        self._waiting[conn] = None
        if self._open > self.limits.cap:
            victim = next((c for c in self._waiting if c is not conn), conn)
            log.warning("at the cap of %d connections: closed the one longest without a request", self.limits.cap)
            victim.evict()

    def closed(self, conn: GuardedRequestHandler) -> None:
        self._open -= 1
        self._waiting.pop(conn, None)

    def busy(self, conn: GuardedRequestHandler) -> None:
        self._waiting.pop(conn, None)

    def waiting(self, conn: GuardedRequestHandler) -> None:
        self._waiting[conn] = None
        self._waiting.move_to_end(conn)


class GuardedRequestHandler(web_protocol.RequestHandler):
    """One connection: tells its server when it waits for a request head, drops unread bodies briefly, and
    answers malformed framing in JSON."""

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._counted = False
        self._unread: StreamReader | None = None
        self._drop_left = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._counted = True
        self._guard.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._uncount()
        super().connection_lost(exc)

    def evict(self) -> None:
        """Closed to make room: it stops counting at once, before its transport reports the loss."""
        self._uncount()
        self.force_close()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._guard.closed(self)

    def data_received(self, data: bytes) -> None:
        if self._unread is not None:
            if self._unread.is_eof():
                self._unread = None
            else:
                self._drop_left -= len(data)
                if self._drop_left < 0:
                    self.force_close()
                    return
        super().data_received(data)

    async def _handle_request(self, request: web.BaseRequest, start_time: float | None, request_handler: Any) -> Any:
        self._guard.busy(self)
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            if not request.content.is_eof():
                # Answered without its body: aiohttp drops the rest for a moment; only this much of it.
                self._unread, self._drop_left = request.content, LINGER_BYTES
            if self._counted:
                self._guard.waiting(self)

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """Malformed framing (400) and failures outside the app's middleware: the JSON error shape, one log line."""
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already being sent")
        if status == 400:
            # aiohttp's message goes on to quote the offending line, which may be a header holding a token:
            # the client gets its first line, the log only the kind of error.
            reason = (message or "malformed request").split("\n", 1)[0].rstrip(": ")[:_MESSAGE_CHARS]
            log.info("malformed HTTP request from %s (%s)", request.remote, type(exc).__name__)
            response = json_error(400, "bad_request", f"malformed HTTP request: {reason}")
        else:
            log.error("failed serving a request from %s: %r", request.remote, exc)
            response = json_error(status, "internal", "internal error")
        response.force_close()
        return response
