"""A read-only frontend of a log in PostgreSQL: ``pacspace serve --frontend --database URL``.

It serves what a stranger needs to verify the log (``/checkpoint``, ``/tile/...``, ``/v1/log``, the proofs,
``/health`` and ``/metrics``) from the database, and from the log's object store if it has one, on any
machine, beside the ``serve`` that sequences it, which must have run once with this version (it records the
log's public keys in the database). It never writes: it holds no key, no records and no lock, so any number
of frontends may run, and killing one loses nothing. What it serves is exactly what the sequencer published:
the published checkpoint is read from the stored ones as an HTTP worker reads it (published.py), never one
that still awaits its witnesses, and every tile and proof comes from the same committed tables.

Every other path (records, relationships, parties) answers ``421 frontend_read_only``, the same for every
party and every path, so a frontend reveals nothing of who has a relationship.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from ..checkpoint import SignedCheckpoint
from ..config import ServerConfig
from ..datadir import open_log
from ..errors import FrontendReadOnly, PacspaceError, UntrustedState
from ..note import CosignatureVerifier, Ed25519Verifier, parse_vkey
from ..policy import parse_policy
from ..storage.logtables import LogTables
from . import bodies, logbudget, read_api
from .context import CONFIG, FATAL, READS, LogReads
from .errors import error_middleware
from .protocol import LIMITS, ConnectionLimits, GuardedApplication, connection_cap
from .published import PublishedView

log = logging.getLogger("pacspace.server.frontend")


# How often a frontend reads the newest stored checkpoint, in a thread: requests never wait on the database for
# it, and a flood of requests to a frontend costs the database nothing more.
REFRESH_INTERVAL = 0.1
# /health answers 503 once the database has not answered a refresh for this long.
STALE_AFTER = 5.0


@dataclass
class FrontendReads:
    """A frontend's LogReads: the log's tables, read-only, and the published checkpoint found among them, kept
    fresh by ``run`` rather than read by each request."""

    store: LogTables
    view: PublishedView
    vkey: str
    timestamp_vkey: str
    role: str = "frontend"
    _refreshed_at: float = field(default_factory=time.monotonic)
    _failing: str | None = None
    _refresh: asyncio.Task[SignedCheckpoint] | None = None

    @property
    def latest(self) -> SignedCheckpoint:
        return self.view.published

    async def newest(self, wanted: int) -> SignedCheckpoint:
        """A request for a size beyond what this frontend has seen (a receipt the sequencer just gave out) reads
        the store again first; concurrent ones share one read."""
        if wanted > self.view.published.size:
            await self._refreshed()
        return self.view.published

    async def run(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            await self._refreshed()

    async def _refreshed(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(asyncio.to_thread(self.view.refresh))
        try:
            await asyncio.shield(self._refresh)
        except Exception as exc:  # the database: serve what was published, and say so at /health after a while
            message = str(exc) if isinstance(exc, PacspaceError) else type(exc).__name__
            # /health shows the public words only: where the database is stays in the log.
            public = (exc.public_message if isinstance(exc, PacspaceError) else None) or message
            if public != self._failing:
                log.warning("the frontend could not read the log's newest checkpoint: %s", message)
            self._failing = public
            return
        self._refreshed_at = time.monotonic()
        self._failing = None

    def problem(self) -> str | None:
        stale = time.monotonic() - self._refreshed_at
        if stale < STALE_AFTER:
            return None
        return f"the database has not answered for {stale:.0f} s" + (f": {self._failing}" if self._failing else "")

    async def find_leaves(self, hashes: list[bytes], size: int) -> list[int | None]:
        # The database's leaf lookup is written in each batch's own transaction: complete, so read directly.
        return await asyncio.to_thread(lambda: [self.store.find_leaf(h, size) for h in hashes])

    async def metrics_text(self) -> str:
        return f"# TYPE pacspace_tree_size gauge\npacspace_tree_size {self.latest.size}\n"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_frontend_app(config: ServerConfig, forward: Handler | None = None) -> web.Application:
    """The frontend's application: the read API, with the same connection and body limits as ``serve``'s.
    ``forward`` takes every other request (a standby's, standby.py); without it they answer 421."""
    if config.database is None:
        raise UntrustedState("a frontend serves a log in PostgreSQL: give --database")
    middleware = error_middleware(before=_before_handler, after=lambda request, _: bodies.release(request))
    app = GuardedApplication(middlewares=[middleware], client_max_size=bodies.MAX_BODY)
    app[LIMITS] = ConnectionLimits(config.max_connections or connection_cap(), config.header_timeout)
    app[bodies.BUDGET] = bodies.BodyBudget(config.body_memory)
    logbudget.install(config.log_rate)
    app[CONFIG] = config
    app[FATAL] = []
    app.cleanup_ctx.append(_frontend_reads)
    read_api.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", forward or _not_here)
    return app


async def _before_handler(request: web.Request) -> None:
    bodies.refuse_declared(request)


async def _not_here(request: web.Request) -> web.Response:
    raise FrontendReadOnly("this is a read-only frontend of the log: send writes, and requests for records, "
                           "relationships and parties, to the server that sequences it")


async def _frontend_reads(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = open_log(config.data_dir, config.database, readonly=True)
    task = None
    try:
        keys = _recorded_keys(store)
        reads = FrontendReads(store, _published_view(store, config, keys), keys[0], keys[1])
        problem = await asyncio.to_thread(store.object_store_problem)
        if problem:  # it serves all but the bundles that moved there; a store that is down may come back
            log.warning("the frontend cannot use the log's object store: %s", problem)
        app[READS] = reads
        task = asyncio.create_task(reads.run(), name="pacspace-frontend-refresh")
        yield
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        store.close()


def _recorded_keys(store: LogTables) -> tuple[str, str, str]:
    """The log's (vkey, timestamp_vkey, witness policy) as its sequencing serve recorded them, checked."""
    recorded = store.log_keys()
    if recorded is None:
        raise UntrustedState("the log's public keys are not in the database yet: start its `pacspace serve "
                             "--database ...` (of this version) once, then the frontend")
    vkey, timestamp_vkey, _ = recorded
    try:
        verifier = parse_vkey(vkey)
    except PacspaceError as exc:
        raise UntrustedState(f"the log's key recorded in the database is not a key: {exc}") from None
    if not isinstance(verifier, Ed25519Verifier) or verifier.name != store.origin:
        raise UntrustedState(f"the key recorded in the database is not an Ed25519 key named {store.origin}")
    # The timestamp key is the same key's, as the sequencer derives it: one recorded otherwise is not served.
    if CosignatureVerifier(verifier.name, verifier.public_key).vkey() != timestamp_vkey:
        raise UntrustedState("the log's timestamp key recorded in the database is not its key's")
    return recorded


def _published_view(store: LogTables, config: ServerConfig, keys: tuple[str, str, str]) -> PublishedView:
    """The checkpoints the sequencer published, under the witness policy it recorded (``--witness-policy``, if
    given, must be that one); its key must verify the stored checkpoints."""
    vkey, _, recorded_policy = keys
    if config.witness_policy is not None and config.witness_policy.read_text() != recorded_policy:
        raise UntrustedState("--witness-policy is not the policy the log's sequencing serve recorded: leave it out, "
                             "and the frontend publishes what the sequencer does")
    policy = parse_policy(recorded_policy) if recorded_policy else None
    verifier = parse_vkey(vkey)
    assert isinstance(verifier, Ed25519Verifier)
    try:
        return PublishedView(store, verifier, policy)
    except PacspaceError as exc:
        raise UntrustedState(f"the log's key recorded in the database does not verify its stored checkpoints: {exc}") from None
