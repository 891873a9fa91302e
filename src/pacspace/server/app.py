"""``create_app(config)``: the aiohttp application shared by ``pacspace serve`` and the tests."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from aiohttp import web

from ..appending import SETTLE_WAIT, Sequencing, TagGuard, reconcile
from ..config import ServerConfig
from .. import highwater
from ..datadir import WriteLock, load_signer, load_state, open_log, open_records
from ..errors import PacspaceError, WriterElsewhere
from ..sequencer import Sequencer
from ..checkpoint import open_checkpoint
from ..note import NoteSigner
from ..policy import parse_policy
from ..logmove import move_records
from ..storage.records import RECORDS_NAME
from ..storage.logtables import LogTables
from .witnessing import WitnessPool, WitnessQuorumFailed
from .writer import GroupWriter
from . import bodies, consent_api, ipc, logbudget, openapi, read_api, records_api, refusals
from .protocol import LIMITS, ConnectionLimits, GuardedApplication, connection_cap
from .context import CONFIG, FATAL, ON_FATAL, READS, SERVICE, LogService
from .errors import error_middleware

log = logging.getLogger("pacspace.server")

PRIVATE_CHANNEL_IDLE = 3630.0  # aiohttp's own keep-alive default


def create_app(
    config: ServerConfig,
    on_fatal: Callable[[BaseException], None] | None = None,
    *,
    internal: bool = False,
    service: Callable[[web.Application], AsyncIterator[None]] | None = None,
) -> web.Application:
    """The application. ``on_fatal`` runs if the sequencer dies; by default the process terminates.

    ``internal`` adds the routes HTTP workers use to reach the sequencer (ipc.py): only for
    an application served on the supervisor's private Unix socket, never on TCP.
    """
    middleware = error_middleware(before=_before_handler, after=_after_handler)
    # Each route reads its body itself, within its own limit (bodies.LIMITS); this is only the largest.
    app = GuardedApplication(middlewares=[middleware], client_max_size=bodies.MAX_BODY)
    # The private channel's clients are this server's own workers, which keep their connections open.
    header_timeout = PRIVATE_CHANNEL_IDLE if internal else config.header_timeout
    app[LIMITS] = ConnectionLimits(config.max_connections or connection_cap(), header_timeout)
    app[bodies.BUDGET] = bodies.BodyBudget(config.body_memory)
    app[refusals.REFUSALS] = refusals.Refusals(config.refusal_rate)
    logbudget.install(config.log_rate)
    app.on_startup.append(lambda _: _install_log_budget(config.log_rate))  # and any handler added since
    app[CONFIG] = config
    app[FATAL] = []
    app[ON_FATAL] = on_fatal or _terminate
    app.cleanup_ctx.append(service or _log_service)
    read_api.add_routes(app)
    records_api.add_routes(app)
    consent_api.add_routes(app)
    openapi.add_routes(app)
    if internal:
        ipc.add_internal_routes(app)
    return app


async def _before_handler(request: web.Request) -> None:
    """What every request meets before its handler: a body too large for its route, authentication, then
    admission (a party, or an address giving bad tokens, that was refused too often waits and gets 429)."""
    bodies.refuse_declared(request)
    try:
        records_api.authenticate(request)
    except records_api.Unauthorized:
        await refusals.admit(request, f"addr:{request.remote}")
        raise
    party = request.get(records_api.PARTY)
    if party is not None:
        await refusals.admit(request, party.name)


async def _install_log_budget(rate: int) -> None:
    logbudget.install(rate)


def _after_handler(request: web.Request, response: web.StreamResponse | None) -> None:
    bodies.release(request)
    refusals.settle(request, response)


async def _log_service(app: web.Application) -> AsyncIterator[None]:
    """Open the data directory, check it can be trusted, and run the sequencer for the app's lifetime."""
    config = app[CONFIG]
    lock = WriteLock(config.data_dir)
    store = records = None
    try:
        signer = load_signer(config.data_dir)
        store = open_log(config.data_dir, config.database, objects=config.objects)
        state = load_state(store, signer)
        highwater.check(config.data_dir, store, state.size, signer.verifier)
        if config.database is not None:
            # Records an older pacspace kept in records.db beside this log move into the database first.
            moved = move_records(config.data_dir, config.database)
            if moved:
                log.info("moved %d records from %s into the database", moved, config.data_dir / RECORDS_NAME)
        records = open_records(config.data_dir, config.database)
        # Before reconcile: every row another serve that sequenced before can still write is refused from now on,
        # so the rows reconcile finds are all it ever wrote. Then the log's other serves forward writes here.
        epoch = records.claim_epoch()
        records.mirror_blobs()
        store.record_sequencer(config.advertised or "")
        sequencer = Sequencer(store, signer, state, config.sequencer, clock=time.time)
        if config.witness_policy is not None:
            await _use_witnesses(config, store, signer, sequencer)
        # Record rows a crash left between storing and sequencing: settled (against the published
        # checkpoint) or dropped (never in the log), before any request can see them (appending.py, step 7).
        log_db = store
        settled, dropped = reconcile(records, lambda h: log_db.find_leaf(h, state.size), sequencer.published.size)
        if settled or dropped:
            log.info("records reconciled with the log: %d settled, %d never acknowledged and dropped", settled, dropped)
        writer = GroupWriter(records)
        sequencing = Sequencing(sequencer, TagGuard(store.tags_in_log), store, writer)
        service = LogService(
            store, sequencer, signer.verifier.vkey(), signer.cosignature_verifier.vkey(), records, writer, sequencing,
            epoch=epoch,
        )
        app[SERVICE] = app[READS] = service
        # For frontends, which have no data directory: the public keys, and the witness policy that says which
        # checkpoints are published.
        policy_text = config.witness_policy.read_text() if config.witness_policy is not None else ""
        store.record_keys(service.vkey, service.timestamp_vkey, policy_text)
        task = asyncio.create_task(sequencer.run(), name="pacspace-sequencer")
        task.add_done_callback(lambda t: _on_sequencer_exit(app, t))
        writer_task = asyncio.create_task(writer.run(), name="pacspace-records-writer")

        def published() -> highwater.Published:
            return highwater.Published(sequencer.published.size, sequencer.published.root_hash)

        marker_task = asyncio.create_task(highwater.remember(config.data_dir, published), name="pacspace-published")
        # An idle sequencer writes nothing, so it would never learn that it lost the writer's lock: look every second.
        lease_task = asyncio.create_task(_watch_lease(app, store), name="pacspace-lease")
        log.info("log %s open at size %d", signer.name, state.size)
        yield
        await sequencing.settled(SETTLE_WAIT)
        sequencing.abandon_settles()  # records.db will not take the write: start-up settles these rows from the log
        writer_task.cancel()
        task.cancel()
        marker_task.cancel()
        lease_task.cancel()
        for t in (task, writer_task, marker_task, lease_task):
            try:
                await t
            except (asyncio.CancelledError, PacspaceError):
                pass
    finally:
        if records is not None:
            records.close()
        if store is not None:
            store.close()
        lock.close()


def _on_sequencer_exit(app: web.Application, task: asyncio.Task[None]) -> None:
    """If the sequencer dies, the server exits: it never keeps accepting writes without it."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        return
    app[FATAL].append(exc)
    log.error("sequencer stopped: %s; shutting down", exc)
    app[ON_FATAL](exc)


LEASE_INTERVAL = 1.0


async def _watch_lease(app: web.Application, store: LogTables) -> None:
    """Stop (FATAL) the moment this serve is no longer the log's writer, so that it steps down (cli: a standby)."""
    while True:
        await asyncio.sleep(LEASE_INTERVAL)
        try:
            await asyncio.to_thread(store.check_writer)
        except WriterElsewhere as exc:
            app[FATAL].append(exc)
            log.error("this serve no longer sequences the log: %s; stopping", exc)
            app[ON_FATAL](exc)
            return
        except Exception as exc:  # the database is down: the sequencer's next commit says so if it lasts
            log.debug("could not check the writer's lock: %s", exc)


def _terminate(exc: BaseException) -> None:
    # web.run_app turns SIGTERM into a graceful shutdown; serve then exits 1 because FATAL is set.
    os.kill(os.getpid(), signal.SIGTERM)


async def _use_witnesses(config: ServerConfig, store: LogTables, signer: NoteSigner, sequencer: Sequencer) -> None:
    """Publish only cosigned checkpoints: the latest stored one that has the quorum, after asking for the newest."""
    policy = parse_policy(config.witness_policy.read_text())  # type: ignore[union-attr]
    pool = WitnessPool(policy, store, config.witness_timeout)
    sequencer.witness = pool.cosign
    latest = sequencer.state.checkpoint
    if policy.satisfied(set(policy.cosigners(latest.note))):
        return
    try:
        cosigned = await pool.cosign(latest)
        store.replace_checkpoint(cosigned.size, cosigned.format())
        sequencer.published = cosigned
        return
    except WitnessQuorumFailed as exc:
        log.warning("%s", exc)
    for note in store.checkpoints_newest_first():
        checkpoint = open_checkpoint(note, signer.verifier)
        if policy.satisfied(set(policy.cosigners(checkpoint.note))) or checkpoint.size == 0:
            sequencer.published = checkpoint
            log.warning("publishing size %d, the latest checkpoint the witnesses' quorum cosigned", checkpoint.size)
            return
