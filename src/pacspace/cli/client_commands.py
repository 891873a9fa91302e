"""Party commands: keys, relationships, record, close, records, receipt verify.

They read PACSPACE_URL, PACSPACE_TOKEN and PACSPACE_HOME (or --url, --token, --home).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..errors import MalformedInput
from ..note import Ed25519Verifier, parse_vkey
from ..receipt import verify_receipt
from ..records.body import Close, Delta, Genesis, Line, canonical_decimal
from ..client.home import Home, default_home
from ..client.http import PacspaceClient
from ..client.records import (
    RelationshipView,
    append_body,
    close_maker,
    create_relationship,
    delta_maker,
    load_relationship,
)

_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


def _common(p: argparse.ArgumentParser, server: bool = True) -> None:
    p.add_argument("--home", type=Path, default=None, help="party state directory (default $PACSPACE_HOME or ~/.pacspace)")
    if server:
        p.add_argument("--url", default=None, help="server URL (default $PACSPACE_URL or http://127.0.0.1:8080)")
        p.add_argument("--token", default=None, help="bearer token (default $PACSPACE_TOKEN)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = sub.add_parser("keys", help="this party's keys", description="Create and show this party's keys.")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    p = keys_sub.add_parser(
        "init",
        help="create this party's keys and register the public halves",
        description="Create an X25519 and an Ed25519 key under PACSPACE_HOME (mode 0600, never sent anywhere), "
        "register the public keys with the server, and pin the log's verifier key.",
    )
    _common(p)
    p.set_defaults(run=cmd_keys_init)
    p = keys_sub.add_parser(
        "show", help="print this party's key fingerprint", description="Print the fingerprint to compare out of band."
    )
    _common(p, server=False)
    p.set_defaults(run=cmd_keys_show)

    rel = sub.add_parser("relationship", help="relationships", description="Create and list relationships.")
    rel_sub = rel.add_subparsers(dest="relationship_command", metavar="COMMAND", required=True)
    p = rel_sub.add_parser(
        "create",
        help="(provider) create a relationship with a customer",
        description="Draw a relationship secret, wrap it (HPKE) to the customer and to yourself, and commit the "
        "signed genesis record naming both parties' keys.",
    )
    p.add_argument("--customer", required=True)
    p.add_argument("--cadence", default="daily", help="daily (default), hourly or <N>m")
    p.add_argument("--billing-cycle", default="monthly", choices=["monthly"])
    p.add_argument("--customer-key", metavar="FINGERPRINT", help="refuse unless the customer's keys have this fingerprint")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(run=cmd_relationship_create)
    p = rel_sub.add_parser("list", help="list your relationships", description="List the relationships you are part of.")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(run=cmd_relationship_list)

    p = sub.add_parser(
        "record",
        help="(provider) commit a usage delta",
        description="Seal and commit one delta: a quantity of a meter in a window, with dimensions. "
        "Prints the receipt.",
    )
    p.add_argument("--relationship", required=True)
    p.add_argument("--meter", help="e.g. llm.output.visible_tokens")
    p.add_argument("--quantity", help="a decimal, e.g. 1234 or 0.5")
    p.add_argument("--unit", default="unit")
    p.add_argument("--dim", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--window", metavar="START/END", help="RFC 3339 UTC times (default: the last hour)")
    p.add_argument("--period", help="YYYY-MM (default: the month of the window's start)")
    p.add_argument("--lines", type=Path, help='a JSON file: [{"meter", "unit", "quantity", "dimensions"}, ...]')
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(run=cmd_record)

    p = sub.add_parser(
        "close",
        help="(provider) close a billing period",
        description="Commit the period's close record (first/last seq, count, chain head, totals). Its receipt "
        "is what an invoice cites.",
    )
    p.add_argument("--relationship", required=True)
    p.add_argument("--period", required=True, help="YYYY-MM")
    p.add_argument("--out", type=Path, help="write the receipt (c2sp.org/tlog-proof) here")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(run=cmd_close)

    p = sub.add_parser(
        "records",
        help="fetch, verify and decrypt a relationship's records",
        description="Fetch every record, verify it (inclusion under a signed checkpoint, tag, ct_hash, key "
        "commitment, signature, seq/prev chain), decrypt it, and print one row per line item.",
    )
    p.add_argument("--relationship", required=True)
    p.add_argument("--period")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    p.add_argument("--log-key", metavar="VKEY", help="verify against this vkey instead of the pinned one")
    p.add_argument(
        "--provider-key",
        metavar="FINGERPRINT",
        help="refuse unless the provider's keys have this fingerprint (otherwise the first one seen is pinned)",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="read the monitor's verified copy (PACSPACE_HOME/monitor.db) instead of the server",
    )
    _common(p)
    p.set_defaults(run=cmd_records)

    p = sub.add_parser(
        "monitor",
        help="(customer) keep a verified copy and report any misbehaviour",
        description="Poll the log: verify the checkpoint's signature and its consistency with the last one "
        "verified, then verify every new record of every relationship fully, and keep them in "
        "PACSPACE_HOME/monitor.db. A detection prints one line, saves its evidence under "
        "PACSPACE_HOME/evidence/ and exits with its code (docs/monitor.md).",
    )
    p.add_argument("--once", action="store_true", help="poll once; exit 0 if all is consistent")
    p.add_argument("--interval", type=float, default=60.0, metavar="SECONDS", help="seconds between polls (default 60)")
    p.add_argument("--json", action="store_true", help="one JSON object per poll")
    p.add_argument("--log-key", metavar="VKEY", help="verify against this vkey instead of the pinned one")
    p.add_argument("--policy", type=Path, metavar="FILE", help="a C2SP tlog-policy: accept only checkpoints with its witnesses' quorum")
    _common(p)
    p.set_defaults(run=cmd_monitor)

    bill = sub.add_parser("bill", help="bills", description="Check bills against the committed record.")
    bill_sub = bill.add_subparsers(dest="bill_command", metavar="COMMAND", required=True)
    p = bill_sub.add_parser(
        "verify",
        help="(customer) check a period's bill from the monitor's verified copy",
        description="Re-verify the monitor's copy offline and check the period's close: signed by the provider, "
        "covering exactly the period's records, with totals equal to their sum. With --invoice, compare every "
        "invoice line to the committed totals. Exit 0: everything matches; 1: the invoice differs; 2: the "
        "record itself failed verification or is incomplete.",
    )
    p.add_argument("--relationship", required=True)
    p.add_argument("--period", required=True, help="YYYY-MM")
    p.add_argument("--invoice", type=Path, help='{"relationship", "period", "lines": [{"meter", "dimensions", "quantity"}]}')
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--report", type=Path, metavar="FILE.html", help="write a self-contained HTML report")
    p.add_argument("--log-key", metavar="VKEY", help="verify against this vkey instead of the pinned one")
    _common(p, server=False)
    p.set_defaults(run=cmd_bill_verify)

    evidence = sub.add_parser("evidence", help="evidence bundles", description="Evidence for third parties.")
    evidence_sub = evidence.add_subparsers(dest="evidence_command", metavar="COMMAND", required=True)
    p = evidence_sub.add_parser(
        "export",
        help="write what a third party needs to check one period",
        description="Write a bundle with the period's records, their ciphertexts, inclusion proofs, signed "
        "checkpoints and the per-record keys of those records only: enough to check the period offline, "
        "without the server and without the relationship secret.",
    )
    p.add_argument("--relationship", required=True)
    p.add_argument("--period", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--log-key", metavar="VKEY")
    _common(p, server=False)
    p.set_defaults(run=cmd_evidence_export)
    p = evidence_sub.add_parser(
        "verify",
        help="check an evidence bundle offline and print the totals",
        description="Check a bundle against the log's verifier key: every checkpoint, every inclusion proof, every "
        "record with its own key and the provider's signature, their continuity, and the close's totals.",
    )
    p.add_argument("file", type=Path)
    p.add_argument("--log-key", required=True, metavar="VKEY")
    p.add_argument("--provider-key", metavar="FINGERPRINT", help="refuse unless the provider's keys have this fingerprint")
    p.add_argument("--policy", type=Path, metavar="FILE", help="a C2SP tlog-policy: require its witnesses' quorum on the close")
    p.set_defaults(run=cmd_evidence_verify)

    p = evidence_sub.add_parser(
        "verify-event",
        help="check that one usage event was counted, exactly once, in a committed delta",
        description="Check an event proof from the provider (`pacspace recorder prove-event`) against the "
        "monitor's verified copy: the event's digest is under the events_root of the committed delta it names.",
    )
    p.add_argument("file", type=Path)
    _common(p, server=False)
    p.set_defaults(run=cmd_evidence_verify_event)

    receipt = sub.add_parser("receipt", help="receipts", description="Work with receipts.")
    receipt_sub = receipt.add_subparsers(dest="receipt_command", metavar="COMMAND", required=True)
    p = receipt_sub.add_parser(
        "verify",
        help="check a receipt offline",
        description="Check a c2sp.org/tlog-proof receipt offline: the checkpoint's signature and signed time, "
        "and the entry's inclusion.",
    )
    p.add_argument("file", type=Path)
    p.add_argument("--log-key", required=True, metavar="VKEY")
    p.add_argument("--policy", type=Path, metavar="FILE", help="a C2SP tlog-policy: require its witnesses' quorum")
    p.add_argument("--before", metavar="TIME", help="with --policy: exit 1 unless a witness cosigned it before this "
                   "RFC 3339 time (an invoice date, say)")
    p.set_defaults(run=cmd_receipt_verify)


def _home(args: argparse.Namespace) -> Home:
    return Home(args.home or default_home())


def _run(args: argparse.Namespace, body: Callable[[PacspaceClient, Home], Awaitable[int]]) -> int:
    url = args.url or os.environ.get("PACSPACE_URL") or "http://127.0.0.1:8080"
    token = args.token or os.environ.get("PACSPACE_TOKEN")
    if not token:
        raise MalformedInput("no token: set PACSPACE_TOKEN or pass --token")

    async def main() -> int:
        async with PacspaceClient(url, token) as client:
            return await body(client, _home(args))

    return asyncio.run(main())


def cmd_keys_init(args: argparse.Namespace) -> int:
    async def body(client: PacspaceClient, home: Home) -> int:
        me = await client.me()
        keys = home.keys() if home.has_keys() else home.create_keys()
        await client.register_keys(keys.public.x25519, keys.public.ed25519)
        info = await client.log_info()
        home.pin_log_key(info["vkey"])
        print(keys.public.fingerprint())
        print(f"pacspace: keys of {me['name']} in {home.path}; pinned log key {info['vkey']}", file=sys.stderr)
        return 0

    return _run(args, body)


def cmd_keys_show(args: argparse.Namespace) -> int:
    print(_home(args).keys().public.fingerprint())
    return 0


def cmd_relationship_create(args: argparse.Namespace) -> int:
    async def body(client: PacspaceClient, home: Home) -> int:
        me = await client.me()
        result = await create_relationship(
            client, home.keys(), me["name"], args.customer, args.cadence, args.billing_cycle, args.customer_key, home
        )
        if args.json:
            print(json.dumps(result))
        else:
            print(result["relationship"])
            print(f"pacspace: relationship with {args.customer} created; genesis at log index {result['receipt']['index']}", file=sys.stderr)
        return 0

    return _run(args, body)


def cmd_relationship_list(args: argparse.Namespace) -> int:
    async def body(client: PacspaceClient, home: Home) -> int:
        rels = await client.relationships()
        if args.json:
            print(json.dumps(rels))
            return 0
        print(f"{'RELATIONSHIP':<30} {'PROVIDER':<16} {'CUSTOMER':<16} CADENCE")
        for r in rels:
            print(f"{r['relationship']:<30} {r['provider']:<16} {r['customer']:<16} {r['cadence']}")
        return 0

    return _run(args, body)


def _parse_lines(args: argparse.Namespace) -> list[Line]:
    if args.lines:
        try:
            raw = json.loads(args.lines.read_text())
        except (OSError, ValueError) as exc:
            raise MalformedInput(f"cannot read {args.lines}: {exc}") from None
        if not isinstance(raw, list) or not raw:
            raise MalformedInput("--lines must hold a non-empty JSON list")
        return [
            Line(
                str(item.get("meter")),
                str(item.get("unit", "unit")),
                canonical_decimal(str(item.get("quantity"))),
                {str(k): str(v) for k, v in (item.get("dimensions") or {}).items()},
            )
            for item in raw
        ]
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


def cmd_record(args: argparse.Namespace) -> int:
    lines = _parse_lines(args)
    window = _window(args)
    period = args.period or window[0][:7]
    if not _PERIOD.fullmatch(period):
        raise MalformedInput("--period is YYYY-MM")

    async def body(client: PacspaceClient, home: Home) -> int:
        view = await load_relationship(client, home, args.relationship, home.log_key())
        receipt = await append_body(client, home, view, delta_maker(period, window, lines))
        _print_receipt(receipt, args.relationship, args.json)
        return 0

    return _run(args, body)


def cmd_close(args: argparse.Namespace) -> int:
    if not _PERIOD.fullmatch(args.period):
        raise MalformedInput("--period is YYYY-MM")

    async def body(client: PacspaceClient, home: Home) -> int:
        view = await load_relationship(client, home, args.relationship, home.log_key())
        receipt = await append_body(client, home, view, close_maker(view, args.period))
        if args.out:
            args.out.write_text(receipt["proof"])
        _print_receipt(receipt, args.relationship, args.json)
        return 0

    return _run(args, body)


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

    state = MonitorState(home.path)
    try:
        copies = state.copies(rid)
        checkpoint = state.latest_checkpoint()
    finally:
        state.close()
    if not copies:
        raise MalformedInput(f"the monitor holds no records of {rid} (run `pacspace monitor --once`)")
    records = [SimpleNamespace(seq=c.seq, index=c.index, body=decode_body(c.body)) for c in copies]
    size = int((checkpoint or b"\n0\n").split(b"\n")[1])
    return SimpleNamespace(rid=rid, records=records, checkpoint=SimpleNamespace(size=size))


def cmd_records(args: argparse.Namespace) -> int:
    if args.offline:
        view = _offline_view(_home(args), args.relationship)
        _print_rows(args, view, _rows(view, args.period))
        return 0

    async def body(client: PacspaceClient, home: Home) -> int:
        log_key = home.log_key(args.log_key)
        view = await load_relationship(client, home, args.relationship, log_key, args.provider_key)
        _print_rows(args, view, _rows(view, args.period))
        return 0

    return _run(args, body)


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
    verifier = parse_vkey(args.log_key)
    if not isinstance(verifier, Ed25519Verifier):
        raise MalformedInput("--log-key must be an Ed25519 (type 0x01) vkey")
    try:
        text = args.file.read_text()
    except OSError as exc:
        raise MalformedInput(f"cannot read {args.file}: {exc.strerror}") from None
    result = verify_receipt(text, verifier)
    when = datetime.fromtimestamp(result.checkpoint.timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"ok: entry at index {result.index} is in {result.checkpoint.checkpoint.origin} at size {result.checkpoint.size}, signed {when}")
    first = _print_witnessed(args, result.checkpoint.note)
    if getattr(args, "before", None):
        if first is None:
            raise MalformedInput("--before needs --policy: the time must come from the witnesses")
        try:
            limit = datetime.fromisoformat(args.before.replace("Z", "+00:00"))
        except ValueError:
            raise MalformedInput("--before is an RFC 3339 time, e.g. 2026-12-01T00:00:00Z") from None
        if limit.tzinfo is None:
            raise MalformedInput("--before needs a time zone (end it with Z)")
        if first >= limit.timestamp():
            print(f"NOT before {args.before}: the earliest witness cosignature is later", file=sys.stderr)
            return 1
        print(f"before {args.before}: yes")
    return 0


def _policy(args: argparse.Namespace) -> Any:
    from ..policy import parse_policy

    if not getattr(args, "policy", None):
        return None
    try:
        return parse_policy(args.policy.read_text())
    except OSError as exc:
        raise MalformedInput(f"cannot read {args.policy}: {exc.strerror}") from None


def _print_witnessed(args: argparse.Namespace, note: Any) -> int | None:
    """With --policy: require the quorum, report the earliest witness time (independent proof of when), return it."""
    from ..policy import require_quorum

    policy = _policy(args)
    if policy is None:
        return None
    cosigners = require_quorum(policy, note)
    if not cosigners:
        return None
    name, first = min(cosigners.items(), key=lambda item: item[1])
    when = datetime.fromtimestamp(first, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"witnessed: by {', '.join(sorted(cosigners))}; earliest cosignature {when} ({name})")
    return first


def cmd_monitor(args: argparse.Namespace) -> int:
    from ..client.monitor import Detection, poll, save_evidence
    from ..client.monitor_state import MonitorState
    from .progress import ProgressBar

    async def body(client: PacspaceClient, home: Home) -> int:
        log_key = home.log_key(args.log_key)
        state = MonitorState(home.path)
        bar = ProgressBar()
        try:
            while True:
                try:
                    report = await poll(client, home, state, log_key, bar, _policy(args))
                except Detection as found:
                    where = save_evidence(home, found)
                    if args.json:
                        print(json.dumps({"status": "detected", "kind": found.kind, "message": str(found), "evidence": where}))
                    print(f"pacspace: DETECTED {found.kind}: {found} (evidence: {where})", file=sys.stderr)
                    return found.exit_code
                if args.json:
                    print(json.dumps({"status": "ok", "checkpoint_size": report.checkpoint_size,
                                      "new_records": report.new_records, "relationships": report.relationships}))
                else:
                    print(f"ok: checkpoint {report.checkpoint_size}, {report.new_records} new records verified "
                          f"in {report.relationships} relationships")
                sys.stdout.flush()
                if args.once:
                    return 0
                await asyncio.sleep(args.interval)
        finally:
            state.close()

    return _run(args, body)


def cmd_bill_verify(args: argparse.Namespace) -> int:
    from ..client.bill import EXIT_RECORD_FAILED, BillError, compare, load_invoice, render_html, render_table, verify_bill
    from ..client.monitor_state import MonitorState

    if not _PERIOD.fullmatch(args.period):
        raise MalformedInput("--period is YYYY-MM")
    home = _home(args)
    log_key = home.log_key(args.log_key)
    state = MonitorState(home.path)
    try:
        bill = verify_bill(state, log_key, args.relationship, args.period)
    except BillError as exc:
        print(f"pacspace: record failed verification: {exc}", file=sys.stderr)
        return EXIT_RECORD_FAILED
    finally:
        state.close()
    if args.invoice:
        try:
            text = args.invoice.read_text()
        except OSError as exc:
            raise MalformedInput(f"cannot read {args.invoice}: {exc.strerror}") from None
        compare(bill, load_invoice(text, args.relationship, args.period))
    if args.format == "json":
        print(json.dumps(bill.to_json()))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["meter", "dimensions", "committed", "invoiced", "matches"])
        for x in bill.lines:
            writer.writerow([x.meter, ";".join(f"{k}={v}" for k, v in sorted(x.dimensions.items())), x.committed,
                             x.invoiced if x.invoiced is not None else "", "yes" if x.matches else "no"])
    else:
        print(render_table(bill))
    if args.report:
        args.report.write_text(render_html(bill))
    verdict = "matches" if bill.matches else "DIFFERS from the committed record"
    what = "the invoice " + verdict if bill.invoice_checked else "the committed record verifies"
    print(f"pacspace: {args.relationship} {args.period}: {what}", file=sys.stderr)
    return bill.exit_code


def cmd_evidence_export(args: argparse.Namespace) -> int:
    from ..client.bill import BillError
    from ..client.evidence import dumps, export_bundle
    from ..client.monitor_state import MonitorState

    home = _home(args)
    state = MonitorState(home.path)
    try:
        bundle = export_bundle(state, home.log_key(args.log_key), args.relationship, args.period)
    except BillError as exc:
        print(f"pacspace: record failed verification: {exc}", file=sys.stderr)
        return 2
    finally:
        state.close()
    args.out.write_text(dumps(bundle))
    print(f"pacspace: wrote {len(bundle['records'])} records of {args.period} to {args.out}", file=sys.stderr)
    return 0


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    from ..client.evidence import verify_bundle

    verifier = parse_vkey(args.log_key)
    if not isinstance(verifier, Ed25519Verifier):
        raise MalformedInput("--log-key must be an Ed25519 (type 0x01) vkey")
    try:
        bundle = json.loads(args.file.read_text())
    except (OSError, ValueError) as exc:
        raise MalformedInput(f"cannot read {args.file}: {exc}") from None
    result = verify_bundle(bundle, verifier)
    if args.provider_key and result.provider_fingerprint != args.provider_key.strip().lower():
        raise MalformedInput(f"the bundle's provider key has fingerprint {result.provider_fingerprint}, not {args.provider_key}")
    when = datetime.fromtimestamp(result.close_signed_time, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"ok: {result.relationship} {result.period}: {result.record_count} records, closed in a checkpoint signed {when}, "
          f"provider key {result.provider_fingerprint}")
    for line in result.totals:
        dims = ",".join(f"{k}={v}" for k, v in sorted(line.dimensions.items()))
        print(f"{line.meter:<34} {dims:<28} {line.quantity:>16} {line.unit}")
    if args.policy:
        from ..receipt import parse_receipt
        from ..note import parse_note as _parse_note

        _print_witnessed(args, _parse_note(parse_receipt(bundle["close_receipt"]).checkpoint))
    return 0


def cmd_evidence_verify_event(args: argparse.Namespace) -> int:
    import base64
    import hashlib

    from ..client.monitor_state import MonitorState
    from ..merkle import leaf_hash, verify_inclusion
    from ..records import canonical
    from ..records.body import Delta, decode_body

    try:
        proof = json.loads(args.file.read_text())
        items = proof["proofs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MalformedInput(f"cannot read the event proof {args.file}: {exc}") from None
    state = MonitorState(_home(args).path)
    try:
        for item in items:
            copies = {c.seq: c for c in state.copies(item["relationship"])}
            copy = copies.get(int(item["seq"]))
            if copy is None:
                raise MalformedInput(f"the monitor holds no seq {item['seq']} of {item['relationship']} (run `pacspace monitor --once`)")
            body = decode_body(copy.body)
            if not isinstance(body, Delta) or not body.evidence or body.evidence.get("events_root") != item["events_root"]:
                raise MalformedInput(f"seq {item['seq']} does not commit to events_root {item['events_root'][:16]}...")
            digest = hashlib.sha256(canonical.encode(item["event"])).digest()
            verify_inclusion(int(item["index"]), int(item["size"]), leaf_hash(digest),
                             [base64.b64decode(h) for h in item["path"]], bytes.fromhex(item["events_root"]))
            if int(item["size"]) != int(body.evidence.get("events_count", -1)):
                raise MalformedInput("the proof's tree size is not the delta's events_count")
            print(f"ok: {item['event']['meter']} {item['event']['quantity']} of event {item['event']['id']} is counted in "
                  f"{item['relationship']} seq {item['seq']} (window {item['window_start']})")
    finally:
        state.close()
    return 0
