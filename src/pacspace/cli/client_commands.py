"""Party commands: keys, relationships (and consent), record, close, records, the outbox, receipt verify.

They read PACSPACE_URL, PACSPACE_TOKEN and PACSPACE_HOME (or --url, --token, --home).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .. import exitcodes
from ..errors import MalformedInput, PacspaceError
from ..files import read_json, read_text
from ..receipt import verify_receipt
from ..records.body import Close, Delta, Genesis, Line, canonical_decimal
from ..client.home import Home, HomeError
from ..client.http import PacspaceClient, ServerError, Unreachable
from ..client.records import (
    RelationshipView,
    append_body,
    close_maker,
    create_relationship,
    delta_maker,
    finish_creation,
    load_relationship,
    receipt_of,
    send_waiting,
)

from .argtypes import fingerprint, whole
from .party import common, home_of, print_witnessed, run

_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


class NotWitnessedInTime(PacspaceError):
    """receipt verify --before: no witness cosigned the checkpoint before the time given."""

    code = "not_witnessed_in_time"
    exit_code = exitcodes.VERIFICATION_FAILED


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = sub.add_parser("keys", help="this party's keys", description="Create and show this party's keys.")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    p = keys_sub.add_parser(
        "init",
        help="create this party's keys and register the public halves",
        description="Create an X25519 and an Ed25519 key under PACSPACE_HOME (mode 0600, never sent anywhere), "
        "register the public keys with the server, and pin the log's verifier key.",
    )
    common(p)
    p.set_defaults(run=cmd_keys_init)
    p = keys_sub.add_parser(
        "show", help="print this party's key fingerprint", description="Print the fingerprint to compare out of band."
    )
    common(p, server=False)
    p.set_defaults(run=cmd_keys_show)

    rel = sub.add_parser("relationship", help="relationships",
                         description="Create, list, accept and decline relationships.")
    rel_sub = rel.add_subparsers(dest="relationship_command", metavar="COMMAND", required=True)
    p = rel_sub.add_parser(
        "create",
        help="(provider) create a relationship with a customer",
        description="Draw a relationship secret, wrap it (HPKE) to the customer and to yourself, and commit the "
        "signed genesis record naming both parties' keys. The relationship is pending until the customer accepts "
        "it; you may record meanwhile.",
    )
    p.add_argument("--customer", required=True, metavar="NAME", help="the customer's party name")
    p.add_argument("--cadence", default="daily", help="how often usage is recorded: daily, hourly or <N>m")
    p.add_argument("--billing-cycle", default="monthly", choices=["monthly"], help="the billing period")
    p.add_argument("--customer-key", metavar="FINGERPRINT", type=fingerprint,
                   help="refuse unless the customer's keys have this fingerprint, compared out of band (default: none; "
                   "an older 8-group fingerprint is its first half)")
    p.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    common(p)
    p.set_defaults(run=cmd_relationship_create)
    p = rel_sub.add_parser(
        "list", help="list your relationships and invitations",
        description="List the relationships you are part of, with their state: pending (the customer has not "
        "accepted yet), accepted or declined. A customer also sees the invitations waiting for it, with the "
        "provider's name and key fingerprint to compare out of band before accepting.")
    p.add_argument("--json", action="store_true", help="a JSON list; each relationship has a `state`")
    common(p)
    p.set_defaults(run=cmd_relationship_list)
    p = rel_sub.add_parser(
        "accept", help="(customer) accept an invitation, after verifying it",
        description="Verify the relationship's genesis record for you (its secret opens with your key, it is in "
        "the log, signed by the provider, and names your keys and the provider's), then sign the acceptance with "
        "your key. Your monitor follows accepted relationships only, from their genesis on.")
    p.add_argument("relationship", help="the relationship's id, as `relationship list` shows it")
    p.add_argument("--provider-key", metavar="FINGERPRINT", type=fingerprint,
                   help="refuse unless the provider's keys have this fingerprint, compared out of band (default: none; "
                   "an older 8-group fingerprint is its first half)")
    p.add_argument("--log-key", metavar="VKEY",
                   help="verify against this vkey (default: the one pinned in PACSPACE_HOME)")
    common(p)
    p.set_defaults(run=cmd_relationship_accept)
    p = rel_sub.add_parser(
        "decline", help="(customer) decline an invitation",
        description="Decline a relationship you have not accepted: your monitor never follows it, and its provider "
        "can no longer append to it.")
    p.add_argument("relationship", help="the relationship's id, as `relationship list` shows it")
    common(p)
    p.set_defaults(run=cmd_relationship_decline)

    p = sub.add_parser(
        "outbox", help="(provider) records sent but not yet acknowledged",
        description="List the sealed records this home sent and holds no receipt for (a timeout, a 503, a crash). "
        "Each command for a relationship sends its waiting records first; --send sends all of them now.")
    p.add_argument("--send", action="store_true", help="send every waiting record now")
    common(p)
    p.set_defaults(run=cmd_outbox)

    p = sub.add_parser(
        "record",
        help="(provider) commit a usage delta",
        description="Seal and commit one delta: a quantity of a meter in a window, with dimensions. "
        "Prints the receipt.",
    )
    p.add_argument("--relationship", required=True, metavar="R", help="the relationship's id")
    p.add_argument("--meter", help="e.g. llm.output.visible_tokens (default: none; give it, or --lines)")
    p.add_argument("--quantity", help="a decimal, e.g. 1234 or 0.5 (default: none; give it, or --lines)")
    p.add_argument("--unit", default="unit", help="the quantity's unit")
    p.add_argument("--dim", action="append", default=[], metavar="KEY=VALUE",
                   help="a dimension; repeat for more (default: none)")
    p.add_argument("--window", metavar="START/END", help="RFC 3339 UTC times (default: the last whole hour)")
    p.add_argument("--period", help="YYYY-MM (default: the month of the window's start; with --corrects, this month)")
    p.add_argument("--corrects", type=whole(1), metavar="SEQ",
                   help="record a correction of the earlier record SEQ, in the open period; its quantities may be "
                   "negative (default: none, a delta)")
    p.add_argument("--lines", type=Path, metavar="FILE",
                   help='a JSON file: [{"meter", "unit", "quantity", "dimensions"}, ...] (default: none; one line '
                   "from --meter and --quantity)")
    p.add_argument("--json", action="store_true", help="print the receipt as JSON")
    common(p)
    p.set_defaults(run=cmd_record)

    p = sub.add_parser(
        "close",
        help="(provider) close a billing period",
        description="Commit the period's close record (first/last seq, count, chain head, totals). Its receipt "
        "is what an invoice cites.",
    )
    p.add_argument("--relationship", required=True, metavar="R", help="the relationship's id")
    p.add_argument("--period", required=True, help="YYYY-MM")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="write the receipt (c2sp.org/tlog-proof) here (default: none, the receipt goes to stdout)")
    p.add_argument("--json", action="store_true", help="print the receipt and totals as JSON")
    common(p)
    p.set_defaults(run=cmd_close)

    p = sub.add_parser(
        "records",
        help="fetch, verify and decrypt a relationship's records",
        description="Fetch every record, verify it (inclusion under a signed checkpoint, tag, ct_hash, key "
        "commitment, signature, seq/prev chain), decrypt it, and print one row per line item.",
    )
    p.add_argument("--relationship", required=True, metavar="R", help="the relationship's id")
    p.add_argument("--period", help="YYYY-MM: only this period's records (default: all)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON object")
    fmt.add_argument("--csv", action="store_true", help="print CSV, one row per line item")
    p.add_argument("--log-key", metavar="VKEY", help="verify against this vkey (default: the one pinned in PACSPACE_HOME)")
    p.add_argument(
        "--provider-key",
        metavar="FINGERPRINT",
        type=fingerprint,
        help="refuse unless the provider's keys have this fingerprint (default: the one pinned when the "
        "relationship was first verified)",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="read the monitor's verified copy (PACSPACE_HOME/monitor.db) instead of the server",
    )
    common(p)
    p.set_defaults(run=cmd_records)

    receipt = sub.add_parser("receipt", help="receipts", description="Work with receipts.")
    receipt_sub = receipt.add_subparsers(dest="receipt_command", metavar="COMMAND", required=True)
    p = receipt_sub.add_parser(
        "verify",
        help="check a receipt offline",
        description="Check a c2sp.org/tlog-proof receipt offline: the checkpoint's signature and signed time, "
        "and the entry's inclusion.",
    )
    p.add_argument("file", type=Path, help="the receipt, a c2sp.org/tlog-proof file")
    p.add_argument("--log-key", metavar="VKEY", help="the log's vkey (default: the one pinned in PACSPACE_HOME)")
    p.add_argument("--policy", type=Path, metavar="FILE",
                   help="a C2SP tlog-policy: require its witnesses' quorum (default: none)")
    p.add_argument("--before", metavar="TIME", help="with --policy: exit 6 unless a witness cosigned it before this "
                   "RFC 3339 time, an invoice date say (default: none)")
    common(p, server=False)
    p.set_defaults(run=cmd_receipt_verify)


def cmd_keys_init(args: argparse.Namespace) -> int:
    async def body(client: PacspaceClient, home: Home) -> int:
        # The server, the token and the log key are checked before anything is written.
        me = await client.me()
        vkey = str((await client.log_info()).get("vkey", ""))
        home.check_log_key(vkey)
        fresh = not home.has_keys()
        if fresh and me.get("keys"):
            raise HomeError(f"{me['name']} registered other keys already, and they cannot be replaced: use the home "
                            "that holds them")
        keys = home.create_keys() if fresh else home.keys()
        try:
            await client.register_keys(keys.public.x25519, keys.public.ed25519)
        except ServerError:
            if fresh:
                home.discard_keys()  # refused: the attempt leaves nothing behind
            raise
        except Unreachable as exc:
            # Whether the server registered them is unknown; run again, it registers the same keys.
            raise Unreachable(f"{exc}; the new keys stay in {home.path}: run `pacspace keys init` again") from None
        home.pin_log_key(vkey)
        print(keys.public.fingerprint())
        print(f"pacspace: keys of {me['name']} in {home.path}; pinned log key {vkey}", file=sys.stderr)
        return 0

    return run(args, body)


def cmd_keys_show(args: argparse.Namespace) -> int:
    print(home_of(args).keys().public.fingerprint())
    return 0


def cmd_relationship_create(args: argparse.Namespace) -> int:
    async def body(client: PacspaceClient, home: Home) -> int:
        me = await client.me()
        result = await finish_creation(client, home, args.customer)
        if result is not None:
            print(f"pacspace: finished creating {result['relationship']}, sent earlier and not acknowledged then",
                  file=sys.stderr)
        else:
            result = await create_relationship(
                client, home.keys(), me["name"], args.customer, args.cadence, args.billing_cycle, args.customer_key, home
            )
        if args.json:
            print(json.dumps(result))
        else:
            print(result["relationship"])
            print(f"pacspace: relationship with {args.customer} created; genesis at log index {result['receipt']['index']}", file=sys.stderr)
        return 0

    return run(args, body)


def cmd_relationship_list(args: argparse.Namespace) -> int:
    async def body(client: PacspaceClient, home: Home) -> int:
        rels = await client.relationships(state="all")
        me = (await client.me())["name"]
        pending = [r for r in rels if r.get("state") == "pending" and r.get("customer") == me]
        for r in pending:
            # What the customer compares out of band before accepting: accepting checks the genesis names these keys.
            r["provider_fingerprint"] = ((await client.relationship(r["relationship"])).get("provider_keys") or {}).get(
                "fingerprint")
        if args.json:
            print(json.dumps(rels))
            return 0
        print(f"{'RELATIONSHIP':<30} {'PROVIDER':<16} {'CUSTOMER':<16} {'CADENCE':<8} STATE")
        for r in rels:
            print(f"{r['relationship']:<30} {r['provider']:<16} {r['customer']:<16} {r['cadence']:<8} {r.get('state', '')}")
        for r in pending:
            print(f"pacspace: invitation {r['relationship']} from {r['provider']}, provider key "
                  f"{r['provider_fingerprint']}: compare it with the provider out of band, then `pacspace relationship "
                  f"accept {r['relationship']} --provider-key FINGERPRINT` or `pacspace relationship decline "
                  f"{r['relationship']}`", file=sys.stderr)
        return 0

    return run(args, body)


def cmd_relationship_accept(args: argparse.Namespace) -> int:
    from ..client.consent import accept

    async def body(client: PacspaceClient, home: Home) -> int:
        result = await accept(client, home, args.relationship, home.log_key(args.log_key), args.provider_key)
        print(f"accepted: {result['relationship']} from {result['provider']}; your monitor follows it from its genesis")
        return 0

    return run(args, body)


def cmd_relationship_decline(args: argparse.Namespace) -> int:
    from ..client.consent import decline

    async def body(client: PacspaceClient, home: Home) -> int:
        result = await decline(client, args.relationship)
        print(f"declined: {result['relationship']} from {result['provider']}")
        return 0

    return run(args, body)


def cmd_outbox(args: argparse.Namespace) -> int:
    from ..client.outbox import Outbox

    async def body(client: PacspaceClient, home: Home) -> int:
        if args.send:
            for note in await send_waiting(client, home):
                print(f"pacspace: {note}", file=sys.stderr)
        waiting = Outbox(home.path).waiting()
        for item in waiting:
            print(f"{item.relationship} seq {item.seq}{' (creation)' if item.create else ''}: waiting for its receipt")
        print(f"pacspace: {len(waiting)} record(s) waiting in {Outbox(home.path).path}", file=sys.stderr)
        return 0

    return run(args, body)


def _parse_lines(args: argparse.Namespace) -> list[Line]:
    if args.lines:
        raw = read_json(args.lines, "--lines")
        if not isinstance(raw, list) or not raw or not all(isinstance(item, dict) for item in raw):
            raise MalformedInput(f"--lines {args.lines} must hold a non-empty JSON list of objects")
        lines = []
        for n, item in enumerate(raw, 1):
            dims = item.get("dimensions") or {}
            if not isinstance(dims, dict):
                raise MalformedInput(f"--lines {args.lines}: line {n}: dimensions is an object of names to values")
            lines.append(Line(str(item.get("meter")), str(item.get("unit", "unit")),
                              canonical_decimal(str(item.get("quantity"))),
                              {str(k): str(v) for k, v in dims.items()}))
        return lines
    if not args.meter or args.quantity is None:
        raise MalformedInput("give --meter and --quantity, or --lines FILE")
    dims = {}
    for d in args.dim:
        key, sep, value = d.partition("=")
        if not sep:
            raise MalformedInput(f"--dim {d!r} is not KEY=VALUE")
        dims[key] = value
    return [Line(args.meter, args.unit, canonical_decimal(args.quantity), dims)]


def _window(args: argparse.Namespace) -> tuple[str, str]:
    if args.window:
        start, sep, end = args.window.partition("/")
        if not sep:
            raise MalformedInput("--window is START/END")
        return start, end
    end_t = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return (end_t - timedelta(hours=1)).strftime(fmt), end_t.strftime(fmt)


def _print_receipt(receipt: dict[str, Any], rid: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"relationship": rid, **receipt}))
    else:
        print(receipt["proof"], end="")
        print(f"pacspace: committed seq {receipt['seq']} at log index {receipt['index']}", file=sys.stderr)


def _warn(view: RelationshipView) -> None:
    for note in view.notes:
        print(f"pacspace: {note}", file=sys.stderr)
    if view.findings:
        print(f"pacspace: warning: {len(view.findings)} record(s) of {view.rid} break protocol rules (first: "
              f"{view.findings[0].message}); your customer's monitor reports them", file=sys.stderr)


def cmd_record(args: argparse.Namespace) -> int:
    lines = _parse_lines(args)
    window = _window(args)
    default = datetime.now(timezone.utc).strftime("%Y-%m") if args.corrects is not None else window[0][:7]
    period = args.period or default
    if not _PERIOD.fullmatch(period):
        raise MalformedInput("--period is YYYY-MM")

    async def body(client: PacspaceClient, home: Home) -> int:
        view = await load_relationship(client, home, args.relationship, home.log_key())
        _warn(view)
        receipt = await append_body(client, home, view, delta_maker(period, window, lines, args.corrects))
        _print_receipt(receipt, args.relationship, args.json)
        return 0

    return run(args, body)


def cmd_close(args: argparse.Namespace) -> int:
    if not _PERIOD.fullmatch(args.period):
        raise MalformedInput("--period is YYYY-MM")

    async def body(client: PacspaceClient, home: Home) -> int:
        view = await load_relationship(client, home, args.relationship, home.log_key())
        _warn(view)
        closed = view.ledger.closed.get(args.period)
        if closed is not None:
            # Closed already (by this command, whose answer was lost, say): the same receipt again.
            print(f"pacspace: {args.period} was closed by seq {closed}; its receipt follows", file=sys.stderr)
            receipt = await receipt_of(client, view, closed)
            close = view.records[closed].body
        else:
            receipt = await append_body(client, home, view, close_maker(view, args.period))
            close = view.records[-1].body
        totals = [t.to_json() for t in close.totals] if isinstance(close, Close) else []
        if args.out:
            try:
                args.out.write_text(receipt["proof"])
            except OSError as exc:
                raise PacspaceError(f"the close is committed (seq {receipt['seq']}), but its receipt could not be "
                                    f"written to {args.out}: {exc.strerror}") from None
        if args.json:
            print(json.dumps({"relationship": args.relationship, **receipt, "totals": totals}))
            return 0
        _print_receipt(receipt, args.relationship, False)
        for t in totals:
            dims = ",".join(f"{k}={v}" for k, v in sorted(t["dimensions"].items()))
            print(f"pacspace: {args.period} total {t['meter']} {dims} {t['quantity']} {t['unit']}".replace("  ", " "),
                  file=sys.stderr)
        if not totals:
            print(f"pacspace: {args.period} closed with no usage", file=sys.stderr)
        return 0

    return run(args, body)


def _rows(view: RelationshipView, period: str | None) -> list[dict[str, Any]]:
    rows = []
    for r in view.records:
        b = r.body
        base = {"seq": r.seq, "index": r.index, "kind": b.kind}
        if isinstance(b, Delta):
            if period and b.period != period:
                continue
            for line in b.lines:
                rows.append({**base, "period": b.period, "window_start": b.window_start, "window_end": b.window_end,
                             "meter": line.meter, "unit": line.unit, "quantity": line.quantity,
                             "dimensions": line.dimensions})
        elif isinstance(b, Close):
            if period and b.period != period:
                continue
            for line in b.totals:
                rows.append({**base, "period": b.period, "meter": line.meter, "unit": line.unit,
                             "quantity": line.quantity, "dimensions": line.dimensions})
        elif isinstance(b, Genesis) and not period:
            rows.append({**base, "provider": b.provider.name, "customer": b.customer.name, "cadence": b.cadence})
    return rows


def _offline_view(home: Home, rid: str) -> Any:
    from types import SimpleNamespace

    from ..client.monitor_state import MonitorState
    from ..records.body import decode_body
    from .monitor_commands import NotHeld

    state = MonitorState(home.path)
    try:
        copies = state.copies(rid)
        checkpoint = state.latest_checkpoint()
    finally:
        state.close()
    if not copies:
        raise NotHeld(f"the monitor holds no records of {rid} (run `pacspace monitor --once`)")
    records = [SimpleNamespace(seq=c.seq, index=c.index, body=decode_body(c.body)) for c in copies]
    size = int((checkpoint or b"\n0\n").split(b"\n")[1])
    return SimpleNamespace(rid=rid, records=records, checkpoint=SimpleNamespace(size=size))


def cmd_records(args: argparse.Namespace) -> int:
    if args.period is not None and not _PERIOD.fullmatch(args.period):
        raise MalformedInput("--period is YYYY-MM")
    if args.offline:
        view = _offline_view(home_of(args), args.relationship)
        _print_rows(args, view, _rows(view, args.period))
        return 0

    async def body(client: PacspaceClient, home: Home) -> int:
        log_key = home.log_key(args.log_key)
        view = await load_relationship(client, home, args.relationship, log_key, args.provider_key)
        _warn(view)
        _print_rows(args, view, _rows(view, args.period))
        return 0

    return run(args, body)


def _print_rows(args: argparse.Namespace, view: Any, rows: list[dict[str, Any]]) -> None:
    if args.json:
        print(json.dumps({"relationship": view.rid, "checkpoint_size": view.checkpoint.size, "rows": rows}))
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["seq", "index", "kind", "period", "window_start", "window_end", "meter", "unit", "quantity", "dimensions"])
        for r in rows:
            writer.writerow([r["seq"], r["index"], r["kind"], r.get("period", ""), r.get("window_start", ""),
                             r.get("window_end", ""), r.get("meter", ""), r.get("unit", ""), r.get("quantity", ""),
                             ";".join(f"{k}={v}" for k, v in sorted(r.get("dimensions", {}).items()))])
    else:
        print(f"{'SEQ':>5} {'KIND':<10} {'PERIOD':<8} {'METER':<32} {'QUANTITY':>14} DIMENSIONS")
        for r in rows:
            dims = ",".join(f"{k}={v}" for k, v in sorted(r.get("dimensions", {}).items()))
            print(f"{r['seq']:>5} {r['kind']:<10} {r.get('period', ''):<8} {r.get('meter', ''):<32} {r.get('quantity', ''):>14} {dims}")
        print(f"pacspace: {len(view.records)} records verified against checkpoint {view.checkpoint.size}", file=sys.stderr)


def cmd_receipt_verify(args: argparse.Namespace) -> int:
    verifier = home_of(args).log_key(args.log_key)
    text = read_text(args.file, "the receipt")
    limit = None
    if args.before:
        if not args.policy:
            raise MalformedInput("--before needs --policy: the time must come from the witnesses")
        try:
            limit = datetime.fromisoformat(args.before.replace("Z", "+00:00"))
        except ValueError:
            raise MalformedInput("--before is an RFC 3339 time, e.g. 2026-12-01T00:00:00Z") from None
        if limit.tzinfo is None:
            raise MalformedInput("--before needs a time zone (end it with Z)")
    result = verify_receipt(text, verifier)
    when = datetime.fromtimestamp(result.checkpoint.timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"entry at index {result.index} is in {result.checkpoint.checkpoint.origin} at size {result.checkpoint.size}, signed {when}"
    # The witnesses are checked before anything says ok.
    first = print_witnessed(args, result.checkpoint.note)
    if limit is not None and (first is None or first >= limit.timestamp()):
        raise NotWitnessedInTime(f"{line}, but NOT before {args.before}: the earliest witness cosignature is later")
    print(f"ok: {line}")
    if limit is not None:
        print(f"ok: witnessed before {args.before}")
    return 0
