"""A ``serve`` of a log in PostgreSQL while another one sequences it: a standby, which takes over when it stops.

Any number of ``pacspace serve --database URL`` processes may run against one log, on any machines, each with
the log key in its ``--data`` directory. The one that holds the writer's lock (storage/pgconnect.py) sequences;
each of the others is a standby. A standby:

- serves the reads a stranger verifies the log with as a frontend does (frontend.py), from the database;
- forwards every other request (records, relationships, parties, consent) to the sequencer, at the URL the
  sequencer recorded in the database when it started (``--advertise``, else http://HOST:PORT), and sends
  back its answer as it is. If the sequencer does not answer, the request gets ``503 sequencer_unavailable``:
  it may or may not have been taken, and a retry is safe (a record is stored once, at its seq);
- watches the lock, and takes over when the sequencer's session ends.

The takeover, step by step:

1. Every PROBE_INTERVAL the standby tries the writer's lock on a connection of its own, and lets go at once if
   it got it. While the sequencer's session lives, it cannot: PostgreSQL ends that session, and with it the
   lock, when the sequencer's connection closes (a stop, kill -9: its kernel closes the socket), or when its
   keep-alives go unanswered (a machine that vanished: about 40 s, pgconnect.connect).
2. The lock is free: the standby stops serving (requests under way get STOP_WAIT to finish) and executes its
   own command line again, keeping its listening socket (cli/listen.py, ``reexec``), so connections wait in
   its backlog rather than being refused.
3. The new process is a ``serve`` like any other: it takes the lock with its writer connection and sequences
   (load_state checks the log; reconcile settles or drops the rows the dead sequencer left; it records its
   URL), or, if another standby won the lock meanwhile, it is a standby again.

Fencing: a sequencer whose session ended lost its lock with it; its writer cannot take the lock back while
another session holds it (pgconnect.take_writer_lock), and every commit compare-and-swaps the log's size in
the batch's own transaction (postgres.py), so a commit it still had in flight either landed before the new
sequencer loaded the log, or never lands. No two checkpoints of one size are ever stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from .. import highwater
from ..checkpoint import open_checkpoint
from ..config import ServerConfig
from ..datadir import load_signer
from ..errors import MalformedInput, ObjectStoreFailed, SequencerUnavailable, UntrustedState
from ..storage.objects import check_mark, kept_store
from ..storage.s3 import S3Bucket, S3Location
from ..storage.pgconnect import Connection, connect, writer_elsewhere
from ..storage.record_values import token_hash
from ..storage.records import RECORDS_NAME
from . import bodies
from .context import READS
from .records_api import PRIVATE_PREFIXES, Unauthorized

log = logging.getLogger("pacspace.server.standby")

PROBE_INTERVAL = 0.5
# How long a standby forwards to the URL it read before reading it again.
TARGET_TTL = 1.0
STOP_WAIT = 5.0
# How long a token found in the database is taken without looking again (the sequencer checks every request).
TOKEN_TTL = 5.0
UNKNOWN_TTL = 1.0
MAX_KNOWN = 10_000
# How long a forwarded request may take: a record's answer can wait for the witnesses' cosignatures.
# (``connect`` covers the wait for one of the session's connections too.)
FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=5, sock_read=120)
# Set on every request a standby forwards: one that arrives with it came from a standby, so the URL the sequencer
# recorded leads to a standby (a load balancer, a stale or shared address); forwarding it again would loop.
FORWARDED = "Pacspace-Forwarded"
# Headers that belong to one connection, not to the request (RFC 9110 7.6.1), and those aiohttp sets itself.
_HOP = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                  "transfer-encoding", "upgrade", "host", "content-length"))

@dataclass
class Standby:
    """The standby's state: the session it forwards with, and whether it is to take over."""

    config: ServerConfig
    # The socket this serve listens on; at a takeover, a duplicate of it (``handoff``) outlives the app, which
    # closes the original as it stops, for the process the takeover executes.
    listener: socket.socket | None = None
    session: aiohttp.ClientSession | None = None
    take_over: bool = False
    handoff: socket.socket | None = None
    _probe: Connection | None = field(default=None, repr=False)
    _target: str | None = field(default=None, repr=False)
    _target_at: float = field(default=0.0, repr=False)
    _tokens: Connection | None = field(default=None, repr=False)
    _tokens_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Token hash -> when it was last found (or, in _unknown, not found).
    _known: dict[bytes, float] = field(default_factory=dict, repr=False)
    _unknown: dict[bytes, float] = field(default_factory=dict, repr=False)
    # Lookups wait here, one at a time: a flood of bad tokens never takes the threads the lock's probe runs in.
    _lookups: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="pacspace-standby-tokens"), repr=False)

    async def _sequencer_url(self, request: web.Request) -> str | None:
        """The URL the sequencer recorded, read again after TARGET_TTL or after a forward to it failed."""
        if self._target is None or time.monotonic() - self._target_at > TARGET_TTL:
            self._target = await asyncio.to_thread(request.app[READS].store.sequencer_url)
            self._target_at = time.monotonic()
        return self._target

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Send ``request`` to the sequencer as it came, and its answer back as it is."""
        if FORWARDED in request.headers:
            log.warning("a forwarded request reached a standby: the sequencer's recorded URL does not lead to it "
                        "(give the sequencing serve an --advertise URL that reaches only it)")
            raise SequencerUnavailable("the log's sequencer is not reachable at the address it recorded: retry later")
        target = await self._sequencer_url(request)
        if target is None or self.session is None:
            raise SequencerUnavailable("the log's sequencer has not said where it is reached (it listens on every "
                                       "address and was given no --advertise): retry later")
        if request.path.startswith(PRIVATE_PREFIXES) and not await self._token_known(request):
            # Refused here, before its body is read: a flood of bad tokens costs the sequencer nothing, and takes
            # no share of this standby's body budget from the parties it serves. The sequencer checks again.
            raise Unauthorized("a valid bearer token is required")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers[FORWARDED] = "1"
        body = await bodies.read_forwarded(request)
        try:
            async with self.session.request(request.method, target.rstrip("/") + request.path_qs, headers=headers,
                                            data=body, allow_redirects=False) as answer:
                payload = await answer.read()
                back = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
                return web.Response(status=answer.status, body=payload, headers=back)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self._target = None  # a new sequencer records its URL as it starts
            log.warning("could not forward %s %s to the sequencer at %s: %s", request.method, request.path, target,
                        type(exc).__name__)
            raise SequencerUnavailable("the log's sequencer did not answer (another serve may be taking over); "
                                       "the request may not have been taken: retry (a record is stored once)") from None

    async def _token_known(self, request: web.Request) -> bool:
        """Whether the request's bearer token is an active party's (found in the last TOKEN_TTL seconds)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        key = token_hash(token.strip())
        now = time.monotonic()
        if now - self._known.get(key, -TOKEN_TTL) < TOKEN_TTL:
            return True
        if now - self._unknown.get(key, -UNKNOWN_TTL) < UNKNOWN_TTL:
            return False
        try:
            found = await asyncio.get_running_loop().run_in_executor(self._lookups, self._find_token, key)
        except Exception as exc:  # the database is down: let the sequencer answer for the token
            log.debug("could not look up a token: %s", exc)
            return True
        seen = self._known if found else self._unknown
        if len(seen) >= MAX_KNOWN:
            seen.clear()
        seen[key] = now
        return found

    def _find_token(self, key: bytes) -> bool:
        assert self.config.database is not None
        with self._tokens_lock:
            if self._tokens is None or self._tokens.closed or self._tokens.broken:
                self._tokens = connect(self.config.database, "pacspace standby")
                self._tokens.execute("SET statement_timeout = '5s'")
            row = self._tokens.execute("SELECT 1 FROM parties WHERE token_hash = %s AND revoked_at IS NULL",
                                       (key,)).fetchone()
            return row is not None

    async def watch(self) -> None:
        """Step 1: probe the writer's lock until it is free, then stop this process for the takeover (step 2)."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                elsewhere = await asyncio.to_thread(self._lock_elsewhere)
            except Exception as exc:  # the database is down: nobody can sequence now; keep probing
                log.debug("could not probe the sequencer's lock: %s", exc)
                continue
            if not elsewhere:
                log.info("the log's sequencer stopped: this serve takes over")
                self.take_over = True
                if self.listener is not None:
                    self.handoff = self.listener.dup()
                os.kill(os.getpid(), signal.SIGTERM)  # web.run_app's graceful stop
                return

    def _lock_elsewhere(self) -> bool:
        assert self.config.database is not None
        if self._probe is None or self._probe.closed or self._probe.broken:
            self._probe = connect(self.config.database, "pacspace standby")
        try:
            return writer_elsewhere(self._probe)
        except Exception:
            self._probe.close()
            raise

    def close(self) -> None:
        self._lookups.shutdown(wait=False, cancel_futures=True)
        for conn in (self._probe, self._tokens):
            if conn is not None:
                conn.close()


STANDBY = web.AppKey("standby", Standby)


def check_object_store(config: ServerConfig) -> None:
    """Before a standby serves: refuse one that could not use the log's object store if it took over (another
    bucket given, no credentials for the log's, or an endpoint that does not lead to it), rather than find out
    then."""
    assert config.database is not None
    probe = connect(config.database, "pacspace standby")
    try:
        row = probe.execute("SELECT url, mark FROM objects").fetchone()
    finally:
        probe.close()
    if row is None:
        return
    held, mark = str(row[0]), None if row[1] is None else str(row[1])
    if config.objects is not None:
        kept_store(held, config.objects)
    try:
        bucket = S3Bucket.from_env(S3Location.parse(held))
    except MalformedInput as exc:
        raise UntrustedState(f"this serve could not use the log's object store if it took over: {exc}") from None
    if mark is None:
        return
    try:
        check_mark(bucket, mark)  # UntrustedState, refused: the endpoint leads to another store
    except ObjectStoreFailed as exc:
        # Down, or a wrong address: one cannot tell, and a store that is down must not cost the log its standbys
        # (the sequencer, too, starts without it). Reads and a takeover wait for it, and say so.
        log.warning("the log's object store does not answer now: %s", exc)


async def standby_context(app: web.Application) -> AsyncIterator[None]:
    """The forwarding session and the lock's watcher, for the app's lifetime; a key in ``--data`` that is not the
    log's is refused now, not when this serve takes over."""
    standby, reads = app[STANDBY], app[READS]
    data_dir = standby.config.data_dir
    verifier = load_signer(data_dir).verifier
    if verifier.vkey() != reads.vkey:
        raise UntrustedState(f"the key in {data_dir} is not the key of the log in the database: this serve could "
                             "never sequence it")
    if (data_dir / RECORDS_NAME).exists():
        raise UntrustedState(f"{data_dir / RECORDS_NAME} is there: this serve could not take over while it is (its "
                             "records are not the database's). If the log's records were moved into the database "
                             f"from another directory, this is an old copy: move it aside")
    # As a sequencer does (highwater.py): a database behind what this directory saw published is refused, and what
    # it sees published is remembered, so a takeover after the database comes back older is refused too.
    stored = await asyncio.to_thread(lambda: open_checkpoint(reads.store.latest_checkpoint(), verifier).size)
    await asyncio.to_thread(highwater.check, data_dir, reads.store, stored, verifier)
    # No cap of its own on connections to the sequencer, which caps what it takes (protocol.py): a pool of 100
    # that one party's slow requests filled would stall every other party's.
    standby.session = aiohttp.ClientSession(timeout=FORWARD_TIMEOUT, auto_decompress=False,
                                            connector=aiohttp.TCPConnector(limit=0))

    def published() -> highwater.Published:
        return highwater.Published(reads.latest.size, reads.latest.checkpoint.root_hash)

    tasks = [asyncio.create_task(standby.watch(), name="pacspace-standby-watch"),
             asyncio.create_task(highwater.remember(data_dir, published), name="pacspace-published")]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await standby.session.close()
        await asyncio.to_thread(standby.close)


def create_standby_app(config: ServerConfig, listener: socket.socket | None = None) -> web.Application:
    """A frontend (frontend.py) that forwards what it does not serve, and takes over when the sequencer stops."""
    from .frontend import create_frontend_app

    standby = Standby(config, listener)
    app = create_frontend_app(config, forward=standby.forward)
    app[STANDBY] = standby
    app.cleanup_ctx.append(standby_context)
    return app
