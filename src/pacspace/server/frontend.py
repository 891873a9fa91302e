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
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from ..checkpoint import SignedCheckpoint
from ..config import ServerConfig
from ..datadir import open_log
from ..errors import FrontendReadOnly, UntrustedState
from ..note import Ed25519Verifier, parse_vkey
from ..policy import parse_policy
from ..storage.logtables import LogTables
from . import bodies, logbudget, read_api
from .context import CONFIG, FATAL, READS, LogReads
from .errors import error_middleware
from .protocol import LIMITS, ConnectionLimits, GuardedApplication, connection_cap
from .published import PublishedView


@dataclass
class FrontendReads:
    """A frontend's LogReads: the log's tables, read-only, and the published checkpoint found among them."""

    store: LogTables
    view: PublishedView
    vkey: str
    timestamp_vkey: str
    role: str = "frontend"

    @property
    def latest(self) -> SignedCheckpoint:
        return self.view.latest

    async def find_leaves(self, hashes: list[bytes], size: int) -> list[int | None]:
        # The database's leaf lookup is written in each batch's own transaction: complete, so read directly.
        return await asyncio.to_thread(lambda: [self.store.find_leaf(h, size) for h in hashes])

    async def metrics_text(self) -> str:
        return f"# TYPE pacspace_tree_size gauge\npacspace_tree_size {self.latest.size}\n"


def create_frontend_app(config: ServerConfig) -> web.Application:
    """The frontend's application: the read API, with the same connection and body limits as ``serve``'s."""
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
    app.router.add_route("*", "/{tail:.*}", _not_here)
    return app


async def _before_handler(request: web.Request) -> None:
    bodies.refuse_declared(request)


async def _not_here(request: web.Request) -> web.Response:
    raise FrontendReadOnly("this is a read-only frontend of the log: send writes, and requests for records, "
                           "relationships and parties, to the server that sequences it")


async def _frontend_reads(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = open_log(config.data_dir, config.database, readonly=True)
    try:
        keys = store.log_keys()
        if keys is None:
            raise UntrustedState("the log's public keys are not in the database yet: start its `pacspace serve "
                                 "--database ...` (of this version) once, then the frontend")
        verifier = parse_vkey(keys[0])
        if not isinstance(verifier, Ed25519Verifier) or verifier.name != store.origin:
            raise UntrustedState(f"the key recorded for the log is not an Ed25519 key named {store.origin}")
        policy = parse_policy(config.witness_policy.read_text()) if config.witness_policy is not None else None
        reads: LogReads = FrontendReads(store, PublishedView(store, verifier, policy), keys[0], keys[1])
        app[READS] = reads
        yield
    finally:
        store.close()
