"""Operator commands for parties: ``pacspace admin party add|revoke|list``. They act on the log's records: in the
data directory, or in its PostgreSQL database (``--database``)."""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time

from ..datadir import WriteLock, has_log, log_exists, open_records
from ..errors import LogNotFound, MalformedInput
from ..storage.base import RecordTables
from ..storage.record_values import UnknownParty
from ..storage.records import RECORDS_NAME
from .log_commands import data_arg, database_arg, database_url

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    admin = sub.add_parser("admin", help="operator commands (parties)", description="Operator commands.")
    admin_sub = admin.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)
    party = admin_sub.add_parser("party", help="manage parties", description="Add, revoke and list parties.")
    party_sub = party.add_subparsers(dest="party_command", metavar="COMMAND", required=True)

    p = party_sub.add_parser(
        "add",
        help="add a provider or customer and print its bearer token once",
        description="Add a party and print its bearer token. The token is shown once; the server keeps "
        "only its hash. Give it to the party over a safe channel.",
    )
    p.add_argument("name", help="the party's name: lower-case letters, digits, '.', '_' or '-' (at most 64)")
    p.add_argument("--role", required=True, choices=["provider", "customer"], help="what the party may do")
    data_arg(p)
    database_arg(p)
    p.add_argument("--json", action="store_true", help='print {"name", "role", "token"}')
    p.set_defaults(run=cmd_add)

    p = party_sub.add_parser(
        "revoke", help="revoke a party's token at once", description="Revoke a party: its token stops working at once."
    )
    p.add_argument("name", help="the party's name")
    data_arg(p)
    database_arg(p)
    p.set_defaults(run=cmd_revoke)

    p = party_sub.add_parser("list", help="list parties", description="List parties (never their tokens).")
    data_arg(p)
    database_arg(p)
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(run=cmd_list)


def _store(args: argparse.Namespace) -> RecordTables:
    database = database_url(args)
    if not has_log(args.data):
        raise LogNotFound(f"no log at {args.data} (run `pacspace init --data {args.data}` or `pacspace serve`)")
    log_exists(args.data, database)  # refuses a --database that is not where the directory's log is
    if database is not None and (args.data / RECORDS_NAME).exists():
        from ..logmove import move_records

        lock = WriteLock(args.data)  # a running serve holds it (and moved them when it started)
        try:
            move_records(args.data, database)
        finally:
            lock.close()
    return open_records(args.data, database)


def cmd_add(args: argparse.Namespace) -> int:
    if not _NAME.fullmatch(args.name):
        raise MalformedInput(f"invalid party name {args.name!r}: use lower-case letters, digits, '.', '_' or '-'")
    token = "pst_" + secrets.token_urlsafe(32)
    store = _store(args)
    try:
        store.add_party(args.name, args.role, token, int(time.time()))
    finally:
        store.close()
    if args.json:
        print(json.dumps({"name": args.name, "role": args.role, "token": token}))
    else:
        print(token)
        print(f"pacspace: added {args.role} {args.name}; the token above is shown only once", file=sys.stderr)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        store.revoke_party(args.name, int(time.time()))
    except UnknownParty as exc:
        raise MalformedInput(str(exc)) from None
    finally:
        store.close()
    print(f"pacspace: revoked {args.name}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        parties = store.parties()
    finally:
        store.close()
    rows = [
        {
            "name": p.name,
            "role": p.role,
            "created_at": p.created_at,
            "revoked_at": p.revoked_at,
            "keys_registered": p.ed25519 is not None,
        }
        for p in parties
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'NAME':<24} {'ROLE':<9} {'KEYS':<5} STATUS")
    for r in rows:
        status = "revoked" if r["revoked_at"] else "active"
        print(f"{r['name']:<24} {r['role']:<9} {'yes' if r['keys_registered'] else 'no':<5} {status}")
    return 0
