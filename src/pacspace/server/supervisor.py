"""``pacspace serve --workers N``: one sequencing process, N HTTP worker processes on one port.

Why: one Python process runs its event loop, its records.db writer and its
sequencer under one interpreter lock, which caps a 2-core machine near 3,000
single-record appends a second with most of a core idle. Workers parse, check
and store requests in parallel; sequencing stays single, as the design says
(the write path is one sequencer).

The parent opens the data directory exactly as a single-process server does
(write lock, trust checks, reconciling records.db with the log), then serves
only a private Unix socket in a fresh 0700 directory, where the workers submit
entries (ipc.py). It binds the public port, one SO_REUSEPORT socket per
worker, and hands each worker its own: the kernel spreads connections evenly
(a shared socket lets the first worker to wake take most of a burst).

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

from ..config import ServerConfig
from .app import create_app
from .context import FATAL, SERVICE

log = logging.getLogger("pacspace.server")

# A worker gets this long to finish its requests after SIGTERM before it is killed: longer than
# aiohttp's own 60 s shutdown timeout plus the 30 s it may wait for records.db.
WORKER_STOP_TIMEOUT = 120.0


class WorkerPool:
    """The worker processes: started with the listening socket and the parent's Unix socket, watched, stopped."""

    def __init__(
        self, config: ServerConfig, listeners: list[socket.socket], ipc_path: Path, vkeys: tuple[str, str]
    ) -> None:
        self._config = config
        self._listeners = listeners
        self._ipc_path = ipc_path
        self._vkeys = vkeys
        self._procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        for listener in self._listeners:
            fd = listener.fileno()
            argv = [
                sys.executable, "-m", "pacspace.server.worker",
                "--data", str(self._config.data_dir), "--fd", str(fd), "--ipc", str(self._ipc_path),
                "--parent", str(os.getpid()), "--vkey", self._vkeys[0], "--timestamp-vkey", self._vkeys[1],
            ]  # fmt: skip
            if self._config.witness_policy is not None:
                argv += ["--witness-policy", str(self._config.witness_policy)]
            self._procs.append(await asyncio.create_subprocess_exec(*argv, pass_fds=(fd,)))

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

    @staticmethod
    async def _reap(proc: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(proc.wait(), WORKER_STOP_TIMEOUT)
        except TimeoutError:
            log.error("worker %d did not stop within %.0f s; killing it", proc.pid, WORKER_STOP_TIMEOUT)
            proc.kill()
            await proc.wait()


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """One listening socket per worker on the same port (SO_REUSEPORT: the kernel spreads connections
    evenly over them); where the platform lacks it, one socket they all accept from.

    A port someone else holds is refused as busy, never shared: the first socket is bound
    without SO_REUSEPORT to find out, then replaced by the group on the same port.
    """
    probe = socket.create_server((host, port), backlog=4096)
    if not hasattr(socket, "SO_REUSEPORT") or count == 1:
        return [probe] * count
    port = probe.getsockname()[1]  # the one the system chose, for --port 0
    probe.close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(socket.create_server((host, port), backlog=4096, reuse_port=True))
    except OSError:
        for s in sockets:
            s.close()
        raise
    return sockets


def serve_with_workers(config: ServerConfig, workers: int, announce: Callable[[web.Application], None]) -> int:
    """Run the parent until SIGTERM/SIGINT, a worker's death or the sequencer's; the exit status."""
    listeners = listening_sockets(config.host, config.port, workers)
    ipc_dir = Path(tempfile.mkdtemp(prefix="pacspace-"))  # 0700: only this user reaches the sequencer
    try:
        return asyncio.run(_run(config, listeners, ipc_dir / "sequencer.sock", announce))
    finally:
        for listener in listeners:
            listener.close()
        shutil.rmtree(ipc_dir, ignore_errors=True)


async def _run(
    config: ServerConfig, listeners: list[socket.socket], ipc_path: Path, announce: Callable[[web.Application], None]
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
        pool = WorkerPool(config, listeners, ipc_path, (service.vkey, service.timestamp_vkey))
        await pool.start()
        # The workers hold the listening sockets now. Ours would keep accepting connections that
        # nobody answers once the workers close theirs at shutdown (or one dies): close them.
        for listener in listeners:
            listener.close()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        announce(app)
        watch = asyncio.ensure_future(pool.first_exit())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([watch, stopped], return_when=asyncio.FIRST_COMPLETED)
        if watch.done():
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
