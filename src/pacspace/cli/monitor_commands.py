"""The customer's commands on its verified copy: monitor, bill verify, evidence export / verify / verify-event.

Exit codes are pacspace.exitcodes (docs/monitor.md): each means one thing.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import exitcodes
from ..errors import MalformedInput
from ..client.home import Home
from ..client.http import PacspaceClient, Unreachable
from .party import common, home_of, policy_of, print_witnessed, run

_PERIOD_HELP = "YYYY-MM"
# Log-level detections a running monitor stops for: the log itself cannot be trusted any more.
_FATAL = {"bad_checkpoint_signature", "inconsistent_checkpoints", "rollback"}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "monitor",
        help="(customer) keep a verified copy and report any misbehaviour",
        description="Poll the log: verify the checkpoint's signature and its consistency with the last one "
        "verified, then every new record of every relationship you accepted, each relationship on its own, and "
        "keep them in PACSPACE_HOME/monitor.db. A detection (a record or proof that fails) or a finding (an "
        "authentic record that breaks a protocol rule) prints one line and saves its evidence under "
        "PACSPACE_HOME/evidence/. With --once, exits 0 if all is consistent, 7 for new findings, or the "
        "detection's code (docs/monitor.md).",
    )
    p.add_argument("--once", action="store_true", help="poll once and exit with the poll's code")
    p.add_argument("--interval", type=float, default=60.0, metavar="SECONDS", help="seconds between polls (default 60)")
    p.add_argument("--json", action="store_true", help="one JSON object per poll on stdout")
    p.add_argument("--log-key", metavar="VKEY", help="verify against this vkey instead of the one pinned in PACSPACE_HOME")
    p.add_argument("--policy", type=Path, metavar="FILE",
                   help="a C2SP tlog-policy: accept only checkpoints with its witnesses' quorum (default: none)")
    common(p)
    p.set_defaults(run=cmd_monitor)

    bill = sub.add_parser("bill", help="bills", description="Check bills against the committed record.")
    bill_sub = bill.add_subparsers(dest="bill_command", metavar="COMMAND", required=True)
    p = bill_sub.add_parser(
        "verify",
        help="(customer) check a period's bill from the monitor's verified copy",
        description="Re-verify the monitor's copy offline and check the period's close: signed by the provider, "
        "covering exactly the period's records, with totals equal to their sum. With --invoice, compare every "
        "invoice line to the committed totals. Exit 0: everything matches; 4: the invoice differs; 5: the record "
        "is incomplete (no close yet); 6: the record failed verification; 7: the provider broke a protocol rule "
        "in this period (the findings are shown).",
    )
    p.add_argument("--relationship", required=True)
    p.add_argument("--period", required=True, help=_PERIOD_HELP)
    p.add_argument("--invoice", type=Path,
                   help='{"relationship", "period", "lines": [{"meter", "dimensions", "quantity"}]} (default: none)')
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format (default table)")
    p.add_argument("--report", type=Path, metavar="FILE.html", help="also write a self-contained HTML report")
    p.add_argument("--log-key", metavar="VKEY", help="verify against this vkey instead of the one pinned in PACSPACE_HOME")
    common(p, server=False)
    p.set_defaults(run=cmd_bill_verify)

    evidence = sub.add_parser("evidence", help="evidence for third parties",
                              description="Export and check evidence for third parties.")
    evidence_sub = evidence.add_subparsers(dest="evidence_command", metavar="COMMAND", required=True)
    p = evidence_sub.add_parser(
        "export",
        help="write what a third party needs to check one period",
        description="Write a bundle with the period's records, their ciphertexts, inclusion proofs, signed "
        "checkpoints and the per-record keys of those records only: enough to check the period offline, "
        "without the server and without the relationship secret.",
    )
    p.add_argument("--relationship", required=True)
    p.add_argument("--period", required=True, help=_PERIOD_HELP)
    p.add_argument("--out", type=Path, required=True, help="the bundle file to write")
    p.add_argument("--log-key", metavar="VKEY", help="verify against this vkey instead of the one pinned in PACSPACE_HOME")
    common(p, server=False)
    p.set_defaults(run=cmd_evidence_export)
    p = evidence_sub.add_parser(
        "verify",
        help="check an evidence bundle, or a monitor's fork evidence, offline",
        description="Check a period's bundle against the log's verifier key: every checkpoint, every inclusion "
        "proof, every record with its own key and the provider's signature, their continuity, and the close's "
        "totals; prints the totals. Or check a fork evidence file the monitor saved: two checkpoints signed by "
        "the log that no append-only tree has. Exit 0 when the file proves what it claims, 6 when it does not.",
    )
    p.add_argument("file", type=Path)
    p.add_argument("--log-key", metavar="VKEY", help="the log's vkey (default: the one pinned in PACSPACE_HOME)")
    p.add_argument("--provider-key", metavar="FINGERPRINT", help="refuse unless the provider's keys have this fingerprint")
    p.add_argument("--policy", type=Path, metavar="FILE", help="a C2SP tlog-policy: require its witnesses' quorum on the close")
    common(p, server=False)
    p.set_defaults(run=cmd_evidence_verify)

    p = evidence_sub.add_parser(
        "verify-event",
        help="check that one usage event was counted, exactly once, in a committed delta",
        description="Check an event proof from the provider (`pacspace recorder prove-event`) against the "
        "monitor's verified copy: the event's digest is under the events_root of the committed delta it names.",
    )
    p.add_argument("file", type=Path)
    common(p, server=False)
    p.set_defaults(run=cmd_evidence_verify_event)


# --- monitor -------------------------------------------------------------------


def cmd_monitor(args: argparse.Namespace) -> int:
    from ..client.monitor import Detection, poll
    from ..client.monitor_state import MonitorState
    from .progress import ProgressBar

    async def body(client: PacspaceClient, home: Home) -> int:
        log_key = home.log_key(args.log_key)
        policy = policy_of(args)
        state = MonitorState(home.path)
        bar = ProgressBar()
        try:
            while True:
                try:
                    code = _show_poll(args, await poll(client, home, state, log_key, bar, policy))
                except Detection as found:
                    _show_fatal(args, found)
                    if args.once or found.kind in _FATAL:
                        return found.exit_code
                    code = found.exit_code
                except Unreachable as exc:
                    if args.once:
                        raise
                    print(f"pacspace: error: {exc}; trying again in {args.interval:g} s", file=sys.stderr)
                    code = exitcodes.UNREACHABLE
                sys.stdout.flush()
                if args.once:
                    return code
                await asyncio.sleep(args.interval)
        finally:
            state.close()

    return run(args, body)


def _show_fatal(args: argparse.Namespace, found: Any) -> None:
    if args.json:
        print(json.dumps({"status": "detected", "kind": found.kind, "message": str(found), "evidence": found.evidence_path,
                          "detections": [_detection_json(found)]}))
    print(f"pacspace: DETECTED {found.kind}: {found} (evidence: {found.evidence_path}); nothing of this poll is stored",
          file=sys.stderr)


def _detection_json(found: Any) -> dict[str, Any]:
    return {"kind": found.kind, "relationship": found.relationship or None, "seq": None if found.seq < 0 else found.seq,
            "message": str(found), "evidence": found.evidence_path, "exit_code": found.exit_code}


def _show_poll(args: argparse.Namespace, report: Any) -> int:
    """Print a poll's report (detections and findings on stderr, one line each); return its exit code."""
    code = report.exit_code
    errors = [(o.relationship, o.error) for o in report.outcomes if o.error is not None]
    notes = [o.note for o in report.outcomes if o.note]
    for found in report.detections:
        where = f" in {found.relationship}" if found.relationship else ""
        print(f"pacspace: DETECTED {found.kind}{where}: {found} (evidence: {found.evidence_path})", file=sys.stderr)
    for f in report.findings:
        print(f"pacspace: FINDING {f.kind} in {f.relationship}: {f.message} (evidence: {f.evidence})", file=sys.stderr)
    for rid, exc in errors:
        print(f"pacspace: error: {rid}: {exc}", file=sys.stderr)
    for note in notes:
        print(f"pacspace: {note}", file=sys.stderr)
    if report.pending:
        names = ", ".join(f"{p['relationship']} from {p['provider']}" for p in report.pending)
        print(f"pacspace: {len(report.pending)} invitation(s) wait for your decision ({names}): "
              "pacspace relationship list", file=sys.stderr)
    summary = (f"checkpoint {report.checkpoint_size}, {report.new_records} new records verified "
               f"in {report.relationships} relationships")
    if args.json:
        status = "ok" if code == exitcodes.OK else "findings" if code == exitcodes.RULE_BROKEN else \
            "detected" if report.detections else "error"
        print(json.dumps({
            "status": status, "exit_code": code, "checkpoint_size": report.checkpoint_size,
            "new_records": report.new_records, "relationships": report.relationships,
            "detections": [_detection_json(d) for d in report.detections],
            "findings": [{"relationship": f.relationship, "seq": f.seq, "kind": f.kind, "period": f.period,
                          "message": f.message, "evidence": f.evidence} for f in report.findings],
            "errors": [{"relationship": rid, "message": str(exc)} for rid, exc in errors],
            "pending": [{"relationship": p["relationship"], "provider": p["provider"]} for p in report.pending],
        }))
    elif code == exitcodes.OK:
        print(f"ok: {summary}")
    else:
        print(summary)
    return int(code)


# --- bills ------------------------------------------------------------------------


def _check_period(period: str) -> None:
    from ..records.body import _PERIOD

    if not _PERIOD.fullmatch(period):
        raise MalformedInput("--period is YYYY-MM")


def cmd_bill_verify(args: argparse.Namespace) -> int:
    from ..client.bill import compare, load_invoice, render_html, render_table, verdict_text, verify_bill
    from ..client.monitor_state import MonitorState

    _check_period(args.period)
    home = home_of(args)
    log_key = home.log_key(args.log_key)
    invoice = None
    if args.invoice:
        try:
            text = args.invoice.read_text()
        except OSError as exc:
            raise MalformedInput(f"cannot read {args.invoice}: {exc.strerror}") from None
        invoice = load_invoice(text, args.relationship, args.period)
    state = MonitorState(home.path)
    try:
        bill = verify_bill(state, log_key, args.relationship, args.period)
    finally:
        state.close()
    if invoice is not None and bill.close is not None:
        compare(bill, invoice)
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
    for f in bill.findings:
        print(f"pacspace: FINDING {f.kind}: {f.message}", file=sys.stderr)
    if bill.other_findings:
        periods = ", ".join(sorted({f.period for f in bill.other_findings}))
        print(f"pacspace: note: {len(bill.other_findings)} finding(s) in other periods of {args.relationship} ({periods})",
              file=sys.stderr)
    for line in bill.stopped:
        print(f"pacspace: note: {line}", file=sys.stderr)
    print(f"pacspace: {args.relationship} {args.period}: {verdict_text(bill)}", file=sys.stderr)
    return bill.exit_code


# --- evidence -----------------------------------------------------------------------


def cmd_evidence_export(args: argparse.Namespace) -> int:
    from ..client.evidence import dumps, export_bundle
    from ..client.monitor_state import MonitorState

    _check_period(args.period)
    home = home_of(args)
    state = MonitorState(home.path)
    try:
        bundle = export_bundle(state, home.log_key(args.log_key), args.relationship, args.period)
    finally:
        state.close()
    args.out.write_text(dumps(bundle))
    print(f"pacspace: wrote {len(bundle['records'])} records of {args.period} to {args.out}", file=sys.stderr)
    return 0


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    from ..client.evidence import FORK_FORMAT, verify_bundle, verify_fork
    from ..keys import fingerprint_matches

    verifier = home_of(args).log_key(args.log_key)
    try:
        bundle = json.loads(args.file.read_text())
    except OSError as exc:
        raise MalformedInput(f"cannot read {args.file}: {exc.strerror}") from None
    except ValueError:
        raise MalformedInput(f"{args.file} is not JSON") from None
    if not isinstance(bundle, dict):
        raise MalformedInput(f"{args.file} is not an evidence file (a JSON object)")
    if bundle.get("format") == FORK_FORMAT:
        fork = verify_fork(bundle, verifier)
        print(f"ok: fork proven: {fork.origin} signed size {fork.earlier.size} with root "
              f"{fork.earlier.root_hash.hex()[:16]}... and size {fork.later.size} with root "
              f"{fork.later.root_hash.hex()[:16]}..., which no append-only tree has")
        return 0
    result = verify_bundle(bundle, verifier)
    if args.provider_key and not fingerprint_matches(result.provider_fingerprint, args.provider_key):
        raise MalformedInput(f"the bundle's provider key has fingerprint {result.provider_fingerprint}, not {args.provider_key}")
    when = datetime.fromtimestamp(result.close_signed_time, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if args.policy:
        from ..note import parse_note
        from ..receipt import parse_receipt

        print_witnessed(args, parse_note(parse_receipt(bundle["close_receipt"]).checkpoint))
    print(f"ok: {result.relationship} {result.period}: {result.record_count} records, closed in a checkpoint signed {when}, "
          f"provider key {result.provider_fingerprint}")
    for line in result.totals:
        dims = ",".join(f"{k}={v}" for k, v in sorted(line.dimensions.items()))
        print(f"{line.meter:<34} {dims:<28} {line.quantity:>16} {line.unit}")
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
    state = MonitorState(home_of(args).path)
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
