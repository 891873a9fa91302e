"""``pacspace serve --workers N``: one sequencing process, N HTTP worker processes on one port.

Why: one Python process runs its event loop, its records.db writer and its
sequencer under one interpreter lock, which caps a 2-core machine near 3,000
single-record appends a second with most of a core idle. Workers parse, check
and store requests in parallel; sequencing stays single, as the design says
(the write path is one sequencer).

The parent opens the data directory exactly as a single-process server does
(write lock, trust checks, reconciling records.db with the log), then serves
only a private Unix socket in a fresh 0700 directory, where the workers submit
entries (ipc.py). It listens on the public port itself and hands each new
connection to the next worker in turn (over a socket pair, SCM_RIGHTS), so a
client with a few long-lived connections gets the workers evenly. Both ways
the kernel could spread them left workers idle: a shared socket lets the first
worker to wake take most of a burst, and SO_REUSEPORT hashes each connection
to a worker, which put a batch client's 4 connections all on one worker in 3
of 9 runs (docs/performance.md).

Failure: if a worker exits on its own, the parent stops the others and exits
1 (a supervisor such as systemd restarts it, and the start settles whatever the
worker left half-done). If the parent dies, the kernel kills the workers.
Shutdown (SIGTERM, SIGINT): workers first, finishing their requests while the
sequencer still runs; then the sequencer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ..config import DATABASE_ENV, EPOCH_ENV, ServerConfig
from ..cores import helper_processes
from .app import create_app
from .context import FATAL, SERVICE
from .gctune import tune_for_serving
from .worker import READY

log = logging.getLogger("pacspace.server")

# A worker gets this long to finish its requests after SIGTERM before it is killed: longer than
# aiohttp's own 60 s shutdown timeout plus the 30 s it may wait for records.db.
WORKER_STOP_TIMEOUT = 120.0
# A worker must be serving this long after it was started (it imports pacspace and opens log.db read-only).
WORKER_START_TIMEOUT = 60.0
# After a failed accept (say, out of file descriptors), wait this long before the next.
ACCEPT_RETRY = 0.1
# The parent's interpreter switch interval, in seconds (see _run).
PARENT_SWITCH_INTERVAL = 0.001


def auto_workers() -> int:
    """``serve --workers auto``. On two cores the workers take the HTTP work off the sequencing process
    (docs/performance.md, "Fast defaults")."""
    return helper_processes()


class WorkerPool:
    """The worker processes: started with their end of a connection channel and the parent's Unix socket,
    handed connections in turn, watched, stopped."""

    def __init__(self, config: ServerConfig, count: int, ipc_path: Path, vkeys: tuple[str, str],
                 epoch: int | None = None) -> None:
        self._config = config
        self._count = count
        self._ipc_path = ipc_path
        self._vkeys = vkeys
        self._epoch = epoch
        self._procs: list[asyncio.subprocess.Process] = []
        self._channels: list[socket.socket] = []
        self._next = 0

    async def start(self) -> None:
        for _ in range(self._count):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            fd = theirs.fileno()
            argv = [
                sys.executable, "-m", "pacspace.server.worker",
                "--data", str(self._config.data_dir), "--fd", str(fd), "--ipc", str(self._ipc_path),
                "--parent", str(os.getpid()), "--vkey", self._vkeys[0], "--timestamp-vkey", self._vkeys[1],
            ]  # fmt: skip
            if self._config.witness_policy is not None:
                argv += ["--witness-policy", str(self._config.witness_policy)]
            argv += worker_limits_argv(self._config)
            try:
                # The database URL may hold a password: in the environment, never in argv (which `ps` shows).
                # Always set or unset: a worker never inherits another value than its parent's configuration.
                env = {k: v for k, v in os.environ.items() if k != DATABASE_ENV}
                if self._config.database:
                    env[DATABASE_ENV] = self._config.database
                env.pop(EPOCH_ENV, None)
                if self._epoch is not None:
                    env[EPOCH_ENV] = str(self._epoch)
                self._procs.append(await asyncio.create_subprocess_exec(*argv, pass_fds=(fd,), env=env))
            finally:
                theirs.close()
            self._channels.append(ours)

    async def ready(self, timeout: float) -> None:
        """Wait until every worker has said it serves (worker.READY); raises TimeoutError, or OSError if one died."""
        loop = asyncio.get_running_loop()

        async def one(channel: socket.socket) -> None:
            message = await loop.sock_recv(channel, 16)
            if message != READY:
                raise OSError("a worker stopped before it could serve")

        await asyncio.wait_for(asyncio.gather(*(one(c) for c in self._channels)), timeout)

    def hand_over(self, conn: socket.socket) -> bool:
        """Give an accepted connection to the next worker that takes it; False if none could."""
        for _ in range(len(self._channels)):
            channel = self._channels[self._next % len(self._channels)]
            self._next += 1
            try:
                socket.send_fds(channel, [b"c"], [conn.fileno()])
                return True
            except OSError:
                continue  # that worker's queue is full, or it is gone: the next one
        return False

    async def first_exit(self) -> int:
        """Wait until any worker exits; its exit status."""
        waits = [asyncio.ensure_future(p.wait()) for p in self._procs]
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()
        return next(iter(done)).result()

    async def stop(self) -> None:
        for proc in self._procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(self._reap(proc) for proc in self._procs))
        for channel in self._channels:
            channel.close()

    @staticmethod
    async def _reap(proc: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(proc.wait(), WORKER_STOP_TIMEOUT)
        except TimeoutError:
            log.error("worker %d did not stop within %.0f s; killing it", proc.pid, WORKER_STOP_TIMEOUT)
            proc.kill()
            await proc.wait()


def worker_limits_argv(config: ServerConfig) -> list[str]:
    """The limits a worker serves its connections with (worker.py reads them back): the parent's own."""
    argv = ["--header-timeout", repr(config.header_timeout), "--body-timeout", repr(config.body_timeout),
            "--body-memory", str(config.body_memory), "--log-rate", str(config.log_rate)]  # fmt: skip
    if config.max_connections is not None:
        argv += ["--max-connections", str(config.max_connections)]
    return argv


async def hand_out_connections(listener: socket.socket, pool: WorkerPool) -> None:
    """Accept connections on the public port and hand each to a worker in turn, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, _ = await loop.sock_accept(listener)
        except OSError as exc:
            # Out of file descriptors, or a connection reset before we took it: transient.
            log.warning("accepting a connection failed: %s", exc)
            await asyncio.sleep(ACCEPT_RETRY)
            continue
        with conn:  # our copy; the worker holds its own from here
            if not pool.hand_over(conn):
                log.warning("no worker could take a connection; closed it")


# The longest path a unix socket takes on Linux (sun_path is 108 bytes, with its NUL).
MAX_SOCKET_PATH = 107


def serve_with_workers(
    config: ServerConfig, workers: int, announce: Callable[[web.Application], None], listener: socket.socket | None = None
) -> int:
    """Run the parent until SIGTERM/SIGINT, a worker's death or the sequencer's; the exit status. ``listener``:
    the public port already bound (``pacspace serve`` binds it before anything else), else bound here."""
    if listener is None:
        # Without SO_REUSEPORT: a port someone else holds is refused as busy, never shared.
        listener = socket.create_server((config.host, config.port), backlog=4096)
    listener.setblocking(False)
    ipc_dir = Path(tempfile.mkdtemp(prefix="pacspace-"))  # 0700: only this user reaches the sequencer
    if len(bytes(ipc_dir / "sequencer.sock")) > MAX_SOCKET_PATH:  # a long $TMPDIR: a unix socket's path is short
        ipc_dir.rmdir()
        ipc_dir = Path(tempfile.mkdtemp(prefix="pacspace-", dir="/tmp"))
    try:
        return asyncio.run(_run(config, listener, workers, ipc_dir / "sequencer.sock", announce))
    finally:
        listener.close()
        shutil.rmtree(ipc_dir, ignore_errors=True)


async def _run(
    config: ServerConfig, listener: socket.socket, workers: int, ipc_path: Path, announce: Callable[[web.Application], None]
) -> int:
    stop = asyncio.Event()
    app = create_app(config, on_fatal=lambda exc: stop.set(), internal=True)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # opens and checks the data directory, starts the sequencer
    failed = False
    try:
        site = web.UnixSite(runner, str(ipc_path))
        await site.start()
        service = app[SERVICE]
        pool = WorkerPool(config, workers, ipc_path, (service.vkey, service.timestamp_vkey), service.epoch)
        await pool.start()
        try:
            await pool.ready(WORKER_START_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            log.error("the HTTP workers did not start (%s); stopping the server", exc or "timed out")
            await pool.stop()
            return 1
        tune_for_serving()
        # The parent's threads (records.db's settle writer, the sequencer's commit) hold a lock other
        # processes wait on while they need the interpreter lock between statements; the busy event
        # loop hands it over after at most this long (CPython: 5 ms). Batches: 48,200-51,100 records/s
        # against 45,600-50,800 (six interleaved runs, docs/performance.md).
        sys.setswitchinterval(PARENT_SWITCH_INTERVAL)
        handing = asyncio.ensure_future(hand_out_connections(listener, pool))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        announce(app)
        watch = asyncio.ensure_future(pool.first_exit())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([watch, stopped, handing], return_when=asyncio.FIRST_COMPLETED)
        # From here new connections are refused: nobody would answer them.
        handing.cancel()
        listener.close()
        if handing.done() and not handing.cancelled() and handing.exception() is not None:
            failed = True
            log.error("accepting connections failed: %s; stopping the server", handing.exception())
        elif watch.done():
            failed = True
            log.error("a worker exited (status %s); stopping the server", watch.result())
        else:
            watch.cancel()
            log.info("stopping: the HTTP workers finish their requests, then the sequencer stops")
        await pool.stop()
    finally:
        await runner.cleanup()  # settles, stops the sequencer, closes the data directory
    log.info("stopped")
    return 1 if failed or app[FATAL] else 0
