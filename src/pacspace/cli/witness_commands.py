"""``pacspace witness init|serve``: run a C2SP tlog-witness beside a monitor, or anywhere."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..datadir import validate_origin
from ..durable import write_new_file
from ..errors import LogExists, LogNotFound, MalformedInput, UntrustedState
from ..files import read_text
from ..note import NoteSigner
from ..witness import parse_log_policy
from .argtypes import port
from .listen import listen

KEY_NAME = "witness.key"
# Not PACSPACE_DATABASE: a witness beside a log must never take the log's database by accident.
WITNESS_DATABASE_ENV = "PACSPACE_WITNESS_DATABASE"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    witness = sub.add_parser("witness", help="run a witness (C2SP tlog-witness)", description="A witness cosigns "
                             "checkpoints it has seen to be consistent, so a log cannot show two histories.")
    wsub = witness.add_subparsers(dest="witness_command", metavar="COMMAND", required=True)
    p = wsub.add_parser("init", help="create the witness's key and print its vkey",
                        description="Create the witness's Ed25519 key (witness.key, mode 0600) in DIR and print its "
                        "cosignature verifier key (type 0x04), which logs and clients put in their policy.")
    p.add_argument("--data", type=Path, default=Path("pacspace-witness"), metavar="DIR",
                   help="the witness's data directory")
    p.add_argument("--name", required=True, help="the witness's name, a schema-less URL such as witness.example/w1")
    p.set_defaults(run=cmd_init)
    p = wsub.add_parser("serve", help="serve POST /add-checkpoint",
                        description="Serve C2SP tlog-witness: POST /add-checkpoint cosigns checkpoints of the logs the "
                        "policy names (its 'log <vkey>' lines) after checking their consistency; GET /checkpoint?origin= "
                        "serves the latest one cosigned.")
    p.add_argument("--data", type=Path, default=Path("pacspace-witness"), metavar="DIR",
                   help="the witness's data directory")
    p.add_argument("--policy", type=Path, required=True, metavar="FILE",
                   help="a C2SP tlog-policy file; its 'log' lines are the logs witnessed")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=port, default=8081, help="port to listen on")
    p.add_argument("--database", metavar="URL",
                   help="keep the witness's state (the latest checkpoint cosigned per log) in this PostgreSQL "
                   "database, postgresql://USER@HOST[:PORT]/NAME, so that several witness processes with this key "
                   f"can share it (a password: in ${WITNESS_DATABASE_ENV} or ~/.pgpass) (default: "
                   f"${WITNESS_DATABASE_ENV} if set, else witness.db in DIR)")
    p.set_defaults(run=cmd_serve)


def _signer(data: Path) -> NoteSigner:
    path = data / KEY_NAME
    if not path.exists():
        raise LogNotFound(f"no witness key in {data} (run `pacspace witness init --data {data} --name ...`)")
    if path.stat().st_mode & 0o077:
        raise UntrustedState(f"{path} is readable by others; run chmod 600 {path}")
    try:
        return NoteSigner.from_private_key_text(read_text(path, "the witness key"))
    except MalformedInput:
        raise UntrustedState(f"{path} does not hold a valid witness key") from None


def cmd_init(args: argparse.Namespace) -> int:
    validate_origin(args.name)
    if args.data.exists() and not args.data.is_dir():
        raise MalformedInput(f"--data {args.data} is not a directory")
    args.data.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (args.data / KEY_NAME).exists():
        raise LogExists(f"a witness key already exists in {args.data}")
    signer = NoteSigner(args.name, Ed25519PrivateKey.generate())
    write_new_file(args.data / KEY_NAME, (signer.private_key_text() + "\n").encode(), mode=0o600)
    print(signer.cosignature_verifier.vkey())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ..server.witness_app import create_witness_app

    from .log_commands import database_url

    logs = parse_log_policy(read_text(args.policy, "--policy"))
    signer = _signer(args.data)
    database = database_url(args, WITNESS_DATABASE_ENV)
    sock = listen(args.host, args.port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..storage.database_url import redact
    from ..storage.witness import WITNESS_DB

    state = args.data / WITNESS_DB if database is None else redact(database)
    print(f"pacspace: witness {signer.name} ({signer.cosignature_verifier.vkey()}) for {len(logs)} log(s) "
          f"on http://{args.host}:{args.port}/, its state in {state}", file=sys.stderr)
    web.run_app(create_witness_app(args.data, signer, logs, database=database), sock=sock, print=None, access_log=None)
    return 0
