"""Operator commands for the log itself: init, serve, log-key, fsck."""

from __future__ import annotations

import argparse
import asyncio
import socket
import logging
import os
import sys
import time
from pathlib import Path

from .. import exitcodes
from ..config import DATABASE_ENV, DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_PORT, ServerConfig
from ..datadir import DEFAULT_ORIGIN, init_log, load_signer, log_exists, open_log, open_records, validate_origin
from ..errors import MalformedInput, MalformedNote, PacspaceError, WriterElsewhere
from ..files import read_text
from ..fsck import fsck, fsck_records
from ..note import Ed25519Verifier, parse_vkey
from ..sequencer import SequencerConfig
from ..storage.records import RECORDS_NAME, RecordStore
from ..storage.database_url import has_password, redact
from ..storage.s3 import S3Location
from .argtypes import port, seconds, whole
from .listen import inherited_listener, listen, reexec
from .progress import ProgressBar


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "init",
        help="create a new log and its signing key",
        description="Create a new log in DIR: its Ed25519 key (log.key, mode 0600) and its database, "
        "with a signed checkpoint of the empty tree. Prints the log's verifier key (vkey). "
        "Refuses to touch a directory that already holds a log.",
    )
    data_arg(p)
    database_arg(p)
    _origin_arg(p, DEFAULT_ORIGIN)
    p.set_defaults(run=cmd_init)

    p = sub.add_parser(
        "serve",
        help="run the log server",
        description="Serve the log over HTTP: C2SP tlog-tiles (/checkpoint, /tile/...), JSON proofs "
        "under /v1/proof/, /health and /metrics. Creates the log on first run if DIR holds none; refuses "
        "an existing log whose origin is not --origin.",
    )
    data_arg(p)
    database_arg(p)
    objects_arg(p)
    p.add_argument(
        "--frontend",
        action="store_true",
        help="with --database: serve the log read-only (checkpoints, tiles, proofs, health) from the database, on "
        "any machine, beside the serve that sequences it; DIR is not used; one process (docs/operations.md) "
        "(default: serve and sequence the log)",
    )
    p.add_argument(
        "--advertise",
        metavar="URL",
        help="with --database: where the log's other serves reach this one while it sequences (they forward "
        "writes to it and take over when it stops; docs/operations.md) (default: http://HOST:PORT)",
    )
    _origin_arg(p, None)
    p.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    p.add_argument("--port", type=port, default=DEFAULT_PORT, help="port to listen on")
    defaults = SequencerConfig()
    p.add_argument(
        "--pool-interval",
        type=seconds(0.5),
        default=defaults.pool_interval,
        metavar="SECONDS",
        help="least time between the starts of two batches (group commit: a lone submission is sequenced at once, "
        "and what arrives during a commit goes into the next); at most 1/SECONDS checkpoints a second; at most 0.5",
    )
    p.add_argument(
        "--batch-size",
        type=whole(1),
        default=defaults.batch_size,
        metavar="N",
        help="sequence at once when this many entries wait",
    )
    p.add_argument(
        "--pool-capacity",
        type=whole(1),
        default=defaults.pool_capacity,
        metavar="N",
        help="entries allowed to wait before submissions get 503, at least --batch-size",
    )
    p.add_argument(
        "--witness-policy",
        type=Path,
        metavar="FILE",
        help="a C2SP tlog-policy file: ask its witnesses to cosign each checkpoint and publish only those with its "
        "quorum (default: none, publish every checkpoint)",
    )
    p.add_argument("--witness-timeout", type=seconds(), default=5.0, metavar="SECONDS",
                   help="how long to wait for witnesses")
    p.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        metavar="N|auto",
        help="serve HTTP from N worker processes beside the one that sequences; 0 serves from one process; auto: "
        "one a core this process may run on, or 0 on a single core (see docs/operations.md)",
    )
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser(
        "log-key",
        help="print the log's verifier key (vkey)",
        description="Print the log's signed-note verifier key: what a client, monitor or witness pins.",
    )
    data_arg(p)
    p.set_defaults(run=cmd_log_key)

    p = sub.add_parser(
        "fsck",
        help="check the whole log: every tile, every checkpoint",
        description="Recompute every tile from the stored entries, and check every stored checkpoint's "
        "signature, its root, and its consistency with the checkpoint before it. Exit 0 if all is "
        "sound, 6 on any fault. Safe to run beside a live server.",
    )
    data_arg(p)
    database_arg(p)
    p.add_argument(
        "--log-key",
        metavar="VKEY",
        help="verify checkpoints against this vkey instead of the key in DIR, for an auditor with a copy of log.db "
        "(default: the key in DIR)",
    )
    p.set_defaults(run=cmd_fsck)

    p = sub.add_parser(
        "migrate",
        help="move a SQLite log's tables into PostgreSQL",
        description="Copy the log in DIR (log.db) into the PostgreSQL database at --database, in one transaction, "
        "then check that the copy reproduces the same latest checkpoint and root; then copy its parties, "
        "relationships and records (records.db and its blobs) the same way. DIR then holds the key and the "
        "mark of the database; the SQLite files move to DIR/sqlite-migrated. Run it with the server stopped. "
        "With --objects, the database records the bucket, and the next serve moves the bundles and blobs there. "
        "Serve the log afterwards with --database; clients see the same history. Exit 0 when moved.",
    )
    data_arg(p)
    database_arg(p)
    objects_arg(p)
    p.set_defaults(run=cmd_migrate)


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return whole(0, 64)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither auto nor a whole number from 0 to 64") from None


def data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA_DIR,
        metavar="DIR",
        help=f"the log's data directory (default: ./{DEFAULT_DATA_DIR})",
    )


def objects_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--objects",
        metavar="s3://BUCKET[/PREFIX]",
        help="with --database: keep the log's entry bundles, its records' sealed blobs and a copy of its tiles in "
        "this S3-compatible bucket from now on (endpoint and credentials from AWS_ENDPOINT_URL, AWS_REGION, "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); recorded in the database, so later runs and every other "
        "process use it without the flag (docs/operations.md) (default: the store the database records, if any)",
    )


def database_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database",
        metavar="URL",
        help=f"keep the log's tables in this PostgreSQL database, postgresql://USER@HOST[:PORT]/NAME (a password: "
        f"in ${DATABASE_ENV} or ~/.pgpass, never on the command line, which ps shows) "
        f"(needs pip install 'pacspace[postgres]'); DIR then holds only the log key (docs/operations.md) "
        f"(default: ${DATABASE_ENV} if set, else SQLite in DIR)",
    )


def database_url(args: argparse.Namespace, env: str = DATABASE_ENV) -> str | None:
    """--database, else $``env`` (PACSPACE_DATABASE), checked: a postgresql:// URL, with psycopg importable."""
    url: str | None = args.database or os.environ.get(env) or None
    if url is None:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        raise MalformedInput("--database takes a postgresql:// URL")
    if args.database and has_password(args.database):
        print("pacspace: warning: a password in --database is visible to every user of this machine (ps); set "
              f"{env} or use ~/.pgpass instead", file=sys.stderr)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise MalformedInput("--database needs psycopg: pip install 'pacspace[postgres]'") from None
    return url


def _origin_arg(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument(
        "--origin",
        default=default,
        help="the log's name in checkpoints and its key name: a schema-less URL such as example.com/billing-log"
        + ("" if default else f" (default: the existing log's; {DEFAULT_ORIGIN} for a new one)"),
    )


def _data_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise MalformedInput(f"--data {path} is not a directory")
    return path


def cmd_init(args: argparse.Namespace) -> int:
    database = database_url(args)
    signer = init_log(_data_dir(args.data), args.origin, int(time.time()), database)
    print(signer.verifier.vkey())
    where = args.data if database is None else f"{redact(database)} (its key in {args.data})"
    print(f"pacspace: created log {args.origin} in {where}", file=sys.stderr)
    return 0


def cmd_log_key(args: argparse.Namespace) -> int:
    print(load_signer(args.data).verifier.vkey())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ..policy import parse_policy
    from ..server.app import create_app
    from ..server.context import FATAL, SERVICE
    from ..server.gctune import tune_for_serving

    if args.frontend and (args.workers not in ("auto", 0) or args.origin is not None):
        raise MalformedInput("--frontend runs as one process of the log its database holds: leave out --workers and "
                             "--origin (run more frontends for more cores)")
    if args.workers == "auto":
        from ..server.supervisor import auto_workers

        args.workers = auto_workers()
    if args.pool_capacity < args.batch_size:
        raise MalformedInput(f"--pool-capacity {args.pool_capacity} is below --batch-size {args.batch_size}")
    database = database_url(args)
    try:
        config = ServerConfig(
            database=database,
            objects=args.objects,
            data_dir=_data_dir(args.data),
            host=args.host,
            port=args.port,
            sequencer=SequencerConfig(
                pool_interval=args.pool_interval, batch_size=args.batch_size, pool_capacity=args.pool_capacity
            ),
            witness_policy=args.witness_policy,
            witness_timeout=args.witness_timeout,
            advertise=args.advertise,
        )
    except ValueError as exc:  # the configurations' own checks, for what the argument types do not cover
        raise MalformedInput(str(exc)) from None
    if args.witness_policy is not None:
        parse_policy(read_text(args.witness_policy, "--witness-policy"))
    if args.frontend:
        return _serve_frontend(args, config)
    if args.advertise is not None and database is None:
        raise MalformedInput("--advertise needs --database: only serves of a log in PostgreSQL reach each other")
    origin = validate_origin(args.origin or DEFAULT_ORIGIN)
    exists = log_exists(args.data, database)
    if exists:
        signer = load_signer(args.data)
        if args.origin is not None and args.origin != signer.name:
            raise MalformedInput(f"the log in {args.data} is {signer.name}, not {args.origin}: leave out --origin, "
                                 "or give another --data for a new log")
    # Bound before anything is created: a port in use leaves no new data directory behind. A standby that takes
    # over hands its socket to the process it becomes (server/standby.py).
    sock = inherited_listener() or listen(args.host, args.port)
    if exists and database is not None and _sequenced_elsewhere(database):
        return _serve_standby(args, config, sock)
    if not exists:
        signer = init_log(args.data, origin, int(time.time()), database)
        where = args.data if database is None else f"{redact(database)} (its key in {args.data})"
        print(f"pacspace: created log {origin} in {where}", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def announce(app: web.Application) -> None:
        # Runs after the data directory passed its start-up checks, with the port bound.
        size = app[SERVICE].sequencer.latest.size
        print(f"pacspace: log {signer.name} at size {size:,}, vkey {signer.verifier.vkey()}", file=sys.stderr)
        objects = app[SERVICE].store.object_store()
        if objects:
            print(f"pacspace: its entry bundles and sealed blobs go to the object store {objects}", file=sys.stderr)
        workers = f" with {args.workers} HTTP workers" if args.workers else ""
        print(f"pacspace: serving on http://{args.host}:{args.port}/{workers} (Ctrl-C to stop)", file=sys.stderr)

    # A serve of a log in PostgreSQL that another serve beat to the writer's lock, or that lost it (its session
    # ended: a cut link, a database restart), becomes that one's standby: it executes itself again. Its socket
    # closed as it stopped, so that nothing waits on a port nobody will answer; the new process listens anew.
    if args.workers:
        from ..server.supervisor import serve_with_workers

        try:
            status = serve_with_workers(config, args.workers, announce, sock)
        except WriterElsewhere:
            reexec(None)
        if status:
            _standby_if_sequenced_elsewhere(database)
            print("pacspace: error: the server stopped on a failure (see the log above)", file=sys.stderr)
        return status
    app = create_app(config)

    async def on_startup(app: web.Application) -> None:
        announce(app)
        tune_for_serving()

    app.on_startup.append(on_startup)
    try:
        web.run_app(app, sock=sock, print=None, access_log=None)
    except WriterElsewhere:
        reexec(None)
    if app[FATAL]:
        _standby_if_sequenced_elsewhere(database)
        print(f"pacspace: error: the sequencer stopped: {app[FATAL][0]}", file=sys.stderr)
        return exitcodes.FAILURE
    return exitcodes.OK


def _standby_if_sequenced_elsewhere(database: str | None) -> None:
    """After the sequencer stopped on a failure: if another serve holds the writer's lock now, become its standby."""
    if database is None:
        return
    try:
        elsewhere = _sequenced_elsewhere(database)
    except PacspaceError:
        return
    if elsewhere:
        print("pacspace: another serve sequences the log now: this one becomes its standby", file=sys.stderr)
        reexec(None)


def _sequenced_elsewhere(database: str) -> bool:
    from ..storage.pgconnect import connect, writer_elsewhere

    probe = connect(database, "pacspace standby")
    try:
        return writer_elsewhere(probe)
    finally:
        probe.close()


def _serve_standby(args: argparse.Namespace, config: ServerConfig, sock: socket.socket) -> int:
    """Another serve sequences the log: serve reads, forward the rest to it, and take over when it stops."""
    from aiohttp import web

    from ..server.context import READS
    from ..server.gctune import tune_for_serving
    from ..server.standby import STANDBY, STOP_WAIT, check_object_store, create_standby_app

    check_object_store(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_standby_app(config, sock)

    async def on_startup(app: web.Application) -> None:
        reads = app[READS]
        where = await asyncio.to_thread(reads.store.sequencer_url)
        print(f"pacspace: log {reads.store.origin} at size {reads.latest.size:,} is sequenced by another serve "
              f"({where or 'not reachable yet'}): this one serves its reads, forwards the rest there, and takes over "
              "if it stops", file=sys.stderr)
        print(f"pacspace: serving on http://{args.host}:{args.port}/ as a standby (Ctrl-C to stop)", file=sys.stderr)
        tune_for_serving()

    app.on_startup.append(on_startup)
    web.run_app(app, sock=sock, print=None, access_log=None, shutdown_timeout=STOP_WAIT)
    if app[STANDBY].take_over:
        reexec(app[STANDBY].handoff)
    return exitcodes.OK


def _serve_frontend(args: argparse.Namespace, config: ServerConfig) -> int:
    from aiohttp import web

    from ..server.context import READS
    from ..server.frontend import create_frontend_app
    from ..server.gctune import tune_for_serving

    if config.database is None:
        raise MalformedInput("--frontend needs --database URL (or PACSPACE_DATABASE): it serves a log in PostgreSQL")
    if args.objects is not None:
        raise MalformedInput("--objects is given to the serve that sequences the log; its frontends read it from "
                             "the database")
    sock = listen(args.host, args.port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_frontend_app(config)

    async def on_startup(app: web.Application) -> None:
        reads = app[READS]
        print(f"pacspace: frontend of the log {reads.store.origin} at size {reads.latest.size:,}, vkey {reads.vkey}",
              file=sys.stderr)
        objects = reads.store.object_store()
        if objects:
            print(f"pacspace: its entry bundles are read from the object store {objects}", file=sys.stderr)
        from ..storage.postgres import PostgresLog

        assert isinstance(reads.store, PostgresLog)  # a frontend serves only a log in PostgreSQL
        private = await asyncio.to_thread(reads.store.private_tables_readable)
        if private:
            print(f"pacspace: warning: this frontend's database role may read {', '.join(private)}, which it never "
                  "needs: grant it only the log's tables (docs/operations.md, read-only frontends)", file=sys.stderr)
        print(f"pacspace: serving it read-only on http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
        tune_for_serving()

    app.on_startup.append(on_startup)
    web.run_app(app, sock=sock, print=None, access_log=None)
    return exitcodes.OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from ..logmove import move_to_database

    database = database_url(args)
    if database is None:
        raise MalformedInput("migrate needs --database URL (or PACSPACE_DATABASE)")
    if args.objects is not None:
        S3Location.parse(args.objects)  # a malformed URL is refused before anything moves
    moved = move_to_database(args.data, database, ProgressBar())
    print(f"pacspace: the log {moved.origin} (size {moved.size:,}) and its {moved.records:,} records are in "
          f"{redact(database)}; its SQLite files are in {moved.backup}. Serve it with --database.", file=sys.stderr)
    if args.objects is not None:
        from ..storage.postgres import PostgresLog

        # The log's writer records the bucket (once it answered); the next serve's mirrors copy the log there.
        PostgresLog(database, objects=args.objects, mirror=False).close()
        print(f"pacspace: its bundles and blobs go to the object store {args.objects} once it is served",
              file=sys.stderr)
    print(moved.root_hex)
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    if args.log_key:
        verifier = parse_vkey(args.log_key)
        if not isinstance(verifier, Ed25519Verifier):
            raise MalformedNote("--log-key must be an Ed25519 (type 0x01) vkey")
    else:
        verifier = load_signer(args.data).verifier
    database = database_url(args)
    store = open_log(args.data, database, readonly=True)
    try:
        report = fsck(store, verifier, ProgressBar())
        if report.ok and (database is not None or (args.data / RECORDS_NAME).exists()):
            # A records.db still beside a log in a database (an older pacspace's, not moved in yet) is the one checked.
            legacy = (args.data / RECORDS_NAME).exists()
            records = RecordStore(args.data, readonly=True) if legacy else open_records(args.data, database, readonly=True)
            try:
                fsck_records(store, records, report)
            finally:
                records.close()
    finally:
        store.close()
    for warning in report.warnings:
        print(f"pacspace: warning: {warning}", file=sys.stderr)
    for fault in report.faults:
        print(f"pacspace: fault: {fault}", file=sys.stderr)
    if not report.ok:
        print(f"pacspace: error: fsck found {len(report.faults)} fault(s) in {args.data}", file=sys.stderr)
        return exitcodes.VERIFICATION_FAILED
    print(
        f"fsck: ok: size {report.size:,}, {report.entries:,} entries and {report.tiles:,} tiles recomputed, "
        f"{report.checkpoints:,} checkpoints and {report.records:,} records verified"
        + (f", the object store {report.objects} checked" if report.objects else "")
    )
    return 0
