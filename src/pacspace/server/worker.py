"""One HTTP worker of ``pacspace serve --workers N``: serves the whole API on the connections the parent hands it.

Started by the supervisor (supervisor.py), never by hand. The parent accepts
connections on the public port and passes each to a worker in turn over a
socket pair (SCM_RIGHTS); the worker serves it to the end. It parses, checks
and stores requests in records.db itself (SQLite serialises the workers'
transactions), reads log.db read-only for proofs and tiles, and reaches the
single sequencer in the parent through its private Unix socket. It holds no
signing key: the parent passes it the log's public keys only. It dies with the
parent (PR_SET_PDEATHSIG), so a SIGKILLed server never leaves workers behind
holding the port; the next start reconciles whatever they left unsettled.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ..config import DATABASE_ENV, EPOCH_ENV, ServerConfig
from ..datadir import open_log, open_records
from ..errors import PacspaceError
from ..note import Ed25519Verifier, parse_vkey
from ..policy import parse_policy
from ..storage import record_ops
from ..storage.records import RecordStore
from .app import create_app
from .context import CONFIG, READS, SERVICE, LogService
from .gctune import tune_for_serving
from .remote import RemoteSequencer
from .writer import GroupWriter

log = logging.getLogger("pacspace.server.worker")

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerLink:
    """What a worker is told by its parent: where the sequencer listens and the log's public keys."""

    ipc_path: Path
    vkey: str
    timestamp_vkey: str


LINK = web.AppKey("worker_link", WorkerLink)


def create_worker_app(config: ServerConfig, link: WorkerLink) -> web.Application:
    app = create_app(config, service=_worker_service)
    app[LINK] = link
    return app


async def _worker_service(app: web.Application) -> AsyncIterator[None]:
    config, link = app[CONFIG], app[LINK]
    verifier = parse_vkey(link.vkey)
    if not isinstance(verifier, Ed25519Verifier):
        raise PacspaceError("the parent passed a log key that is not Ed25519")
    policy = parse_policy(config.witness_policy.read_text()) if config.witness_policy is not None else None
    store = open_log(config.data_dir, config.database, readonly=True)
    epoch = os.environ.get(EPOCH_ENV)
    records = open_records(config.data_dir, config.database, epoch=None if epoch is None else int(epoch))
    session = aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(link.ipc_path), limit=0),
        timeout=aiohttp.ClientTimeout(total=None),
    )
    try:
        remote = RemoteSequencer(session, store, verifier, policy)
        # records.db's lock is local and brief: a large batch's transaction runs on the loop (writer.py).
        # PostgreSQL's round trips are not brief, and always run in a thread.
        writer = GroupWriter(records, inline=_large if isinstance(records, RecordStore) else None)
        service = LogService(store, remote, link.vkey, link.timestamp_vkey, records, writer, remote)
        app[SERVICE] = app[READS] = service
        tasks = [
            asyncio.create_task(remote.run(), name="pacspace-remote-sequencer"),
            asyncio.create_task(writer.run(), name="pacspace-records-writer"),
        ]
        yield
        await service.appender.settled()  # the parent's; whatever it cannot write, its next start settles from the log
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, PacspaceError):
                pass
    finally:
        await session.close()
        records.close()
        store.close()


# A transaction touching at least this many record rows runs on the worker's loop (GroupWriter).
INLINE_RECORDS = 256


def _large(ops: Sequence[Any]) -> bool:
    return record_ops.rows_touched(ops) >= INLINE_RECORDS


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel SIGKILLs this process when the parent dies; elsewhere, the check below at start only."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(1)  # the parent died before we could ask to follow it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pacspace-worker", description="an HTTP worker of pacspace serve (internal)")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--fd", type=int, required=True, help="the inherited socket the parent passes connections on")
    parser.add_argument("--ipc", type=Path, required=True, help="the parent's Unix socket")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--vkey", required=True)
    parser.add_argument("--timestamp-vkey", required=True)
    parser.add_argument("--witness-policy", type=Path)
    defaults = ServerConfig()
    parser.add_argument("--header-timeout", type=float, default=defaults.header_timeout)
    parser.add_argument("--body-timeout", type=float, default=defaults.body_timeout)
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections)
    parser.add_argument("--body-memory", type=int, default=defaults.body_memory)
    parser.add_argument("--log-rate", type=int, default=defaults.log_rate)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s[{os.getpid()}]: %(message)s")
    config = ServerConfig(
        data_dir=args.data, witness_policy=args.witness_policy, header_timeout=args.header_timeout,
        body_timeout=args.body_timeout, max_connections=args.max_connections, body_memory=args.body_memory,
        log_rate=args.log_rate, database=os.environ.get(DATABASE_ENV) or None,
    )
    app = create_worker_app(config, WorkerLink(args.ipc, args.vkey, args.timestamp_vkey))
    channel = socket.socket(fileno=args.fd)
    asyncio.run(serve_handed_connections(app, channel))
    return 0


READY = b"ready"


async def serve_handed_connections(app: web.Application, channel: socket.socket) -> None:
    """Serve each connection the parent passes on ``channel`` until SIGTERM/SIGINT or the parent closes it;
    then finish the requests in progress (aiohttp's graceful shutdown) and stop."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    tune_for_serving()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = runner.server
    assert server is not None
    channel.send(READY)  # the parent hands out no connection, and says "serving on", before every worker is here
    channel.setblocking(False)

    def receive() -> None:
        try:
            message, fds, _, _ = socket.recv_fds(channel, 16, 16)
        except BlockingIOError:
            return
        except OSError:
            message, fds = b"", []
        if not message and not fds:
            stop.set()  # the parent closed its end: it is stopping, or gone
            return
        for fd in fds:
            conn = socket.socket(fileno=fd)
            if stop.is_set():
                conn.close()  # refused rather than left unanswered
                continue
            task = asyncio.ensure_future(loop.connect_accepted_socket(server, conn))
            task.add_done_callback(_log_failed_connection)

    loop.add_reader(channel.fileno(), receive)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(channel.fileno())
        channel.close()  # connections still queued to us are closed with it
        await runner.cleanup()


def _log_failed_connection(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not serve a connection: %s", task.exception())


if __name__ == "__main__":
    sys.exit(main())
