"""``create_app(config)``: the aiohttp application shared by ``pacspace serve`` and the tests."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from aiohttp import web

from ..config import ServerConfig
from ..datadir import WriteLock, load_signer, load_state
from ..errors import PacspaceError
from ..sequencer import Sequencer
from ..storage.sqlite import SqliteLog
from . import read_api
from .context import CONFIG, FATAL, ON_FATAL, SERVICE, LogService
from .errors import error_middleware

log = logging.getLogger("pacspace.server")


def create_app(config: ServerConfig, on_fatal: Callable[[BaseException], None] | None = None) -> web.Application:
    """The application. ``on_fatal`` runs if the sequencer dies; by default the process terminates."""
    app = web.Application(middlewares=[error_middleware], client_max_size=1 << 20)
    app[CONFIG] = config
    app[FATAL] = []
    app[ON_FATAL] = on_fatal or _terminate
    app.cleanup_ctx.append(_log_service)
    read_api.add_routes(app)
    return app


async def _log_service(app: web.Application) -> AsyncIterator[None]:
    """Open the data directory, check it can be trusted, and run the sequencer for the app's lifetime."""
    config = app[CONFIG]
    lock = WriteLock(config.data_dir)
    store = None
    try:
        signer = load_signer(config.data_dir)
        store = SqliteLog.open(config.data_dir)
        state = load_state(store, signer)
        sequencer = Sequencer(store, signer, state, config.sequencer, clock=time.time)
        app[SERVICE] = LogService(
            store, sequencer, signer.verifier.vkey(), signer.cosignature_verifier.vkey()
        )
        task = asyncio.create_task(sequencer.run(), name="pacspace-sequencer")
        task.add_done_callback(lambda t: _on_sequencer_exit(app, t))
        log.info("log %s open at size %d", signer.name, state.size)
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except PacspaceError:
            pass
    finally:
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


def _terminate(exc: BaseException) -> None:
    # web.run_app turns SIGTERM into a graceful shutdown; serve then exits 1 because FATAL is set.
    os.kill(os.getpid(), signal.SIGTERM)
