"""The customer's commands on its verified copy: monitor, bill verify, evidence export / verify / verify-event.

Exit codes are pacspace.exitcodes (docs/monitor.md): each means one thing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import exitcodes
from ..errors import MalformedInput, PacspaceError
from ..files import read_json_object, read_text
from ..client.home import Home
from ..client.invoices import FORMATS as INVOICE_FORMATS
from ..client.http import PacspaceClient
from ..keys import fingerprint_matches
from .argtypes import fingerprint, seconds
from .party import common, home_of, policy_of, print_witnessed, run

_PERIOD_HELP = "YYYY-MM"
# Log-level detections a running monitor stops for: the log itself cannot be trusted any more.
_FATAL = {"bad_checkpoint_signature", "inconsistent_checkpoints", "rollback"}


class NotHeld(PacspaceError):
    """The monitor's verified copy does not hold what was asked for (yet): run `pacspace monitor --once`."""

    code = "not_held"
    exit_code = exitcodes.INCOMPLETE


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
    p.add_argument("--interval", type=seconds(), default=60.0, metavar="SECONDS", help="seconds between polls")
    p.add_argument("--json", action="store_true", help="one JSON object per poll on stdout")
    p.add_argument("--log-key", metavar="VKEY", help="verify against this vkey (default: the one pinned in PACSPACE_HOME)")
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
        "in this period (the findings are shown). With --prices, each line's amount is checked too.",
    )
    p.add_argument("--relationship", required=True, metavar="R", help="the relationship's id")
    p.add_argument("--period", required=True, help=_PERIOD_HELP)
    p.add_argument("--invoice", type=Path, metavar="FILE",
                   help="the provider's invoice: pacspace's JSON, a Stripe or Lago invoice, or a CSV of meter, "
                   "dimensions and quantity (docs/invoices.md) (default: none)")
    p.add_argument("--invoice-format", choices=list(INVOICE_FORMATS), default="auto",
                   help="the invoice's format; auto tells them apart")
    p.add_argument("--mapping", type=Path, metavar="FILE",
                   help="how the invoice's lines name meters and dimensions where they differ (default: the "
                   "invoice's own names)")
    p.add_argument("--prices", type=Path, metavar="FILE",
                   help="a price sheet: also check each line's amount, in exact decimals (default: quantities only)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    p.add_argument("--report", type=Path, metavar="FILE.html",
                   help="also write a self-contained HTML report (default: none)")
    p.add_argument("--log-key", metavar="VKEY", help="verify against this vkey (default: the one pinned in PACSPACE_HOME)")
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
    p.add_argument("--relationship", required=True, metavar="R", help="the relationship's id")
    p.add_argument("--period", required=True, help=_PERIOD_HELP)
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="the bundle file to write")
    p.add_argument("--log-key", metavar="VKEY", help="verify against this vkey (default: the one pinned in PACSPACE_HOME)")
    common(p, server=False)
    p.set_defaults(run=cmd_evidence_export)
    p = evidence_sub.add_parser(
        "verify",
        help="check an evidence bundle, or a monitor's fork evidence, offline",
        description="Check a period's bundle against the log's verifier key: every checkpoint, every inclusion "
        "proof, every record with its own key and the provider's signature, their continuity, and the close's "
        "totals; prints the totals. Or check a fork evidence file the monitor saved: two checkpoints signed by "
        "the log that no append-only tree has. Exit 0 when the file proves what it claims, 6 when it does not, "
        "2 when it is not an evidence file.",
    )
    p.add_argument("file", type=Path, help="an evidence bundle (`evidence export`) or a monitor's fork evidence file")
    p.add_argument("--log-key", metavar="VKEY", help="the log's vkey (default: the one pinned in PACSPACE_HOME)")
    p.add_argument("--provider-key", metavar="FINGERPRINT", type=fingerprint,
                   help="exit 6 unless the provider's keys have this fingerprint (default: none; an older 8-group "
                   "fingerprint is its first half)")
    p.add_argument("--policy", type=Path, metavar="FILE",
                   help="a C2SP tlog-policy: require its witnesses' quorum on the close (default: none)")
    common(p, server=False)
    p.set_defaults(run=cmd_evidence_verify)

    p = evidence_sub.add_parser(
        "verify-event",
        help="check that one usage event was counted, exactly once, in a committed delta",
        description="Check an event proof from the provider (`pacspace recorder prove-event`) against the "
        "monitor's verified copy: the event's digest is under the events_root of the committed delta it names. "
        "Every item is checked before anything is printed. Exit 0 when all are proven, 6 when one is not, 5 when "
        "the monitor does not hold the delta yet (run `pacspace monitor --once`), 2 when it is not an event proof.",
    )
    p.add_argument("file", type=Path, help="the event proof (`pacspace recorder prove-event` prints it)")
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
                except PacspaceError as exc:
                    # The server unreachable, an error answer, another monitor busy: nothing proven either way.
                    if args.once:
                        raise
                    print(f"pacspace: error: {exc}; trying again in {args.interval:g} s", file=sys.stderr)
                    code = exc.exit_code
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
    from ..client.bill import compare, render_csv, render_table, verdict_text, verify_bill
    from ..client.monitor_state import MonitorState
    from ..client.report import render_html

    _check_period(args.period)
    home = home_of(args)
    log_key = home.log_key(args.log_key)
    invoice, prices = _invoice_of(args), _prices_of(args)
    state = MonitorState(home.path)
    try:
        bill = verify_bill(state, log_key, args.relationship, args.period)
    finally:
        state.close()
    if invoice is not None and bill.close is not None:
        compare(bill, invoice, prices)
    if args.format == "json":
        print(json.dumps(bill.to_json()))
    elif args.format == "csv":
        sys.stdout.write(render_csv(bill))
    else:
        print(render_table(bill))
    if args.report:
        _write(args.report, render_html(bill), "the report")
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


def _invoice_of(args: argparse.Namespace) -> Any:
    """The --invoice file in its format, mapped with --mapping (None without --invoice)."""
    from ..client.invoice_mapping import load_mapping
    from ..client.invoices import read_invoice

    if args.mapping and not args.invoice:
        raise MalformedInput("--mapping maps the lines of an --invoice: give the invoice too")
    if not args.invoice:
        return None
    mapping = load_mapping(read_text(args.mapping, "--mapping")) if args.mapping else None
    return read_invoice(read_text(args.invoice, "--invoice"), args.invoice_format, args.relationship, args.period,
                        mapping)


def _prices_of(args: argparse.Namespace) -> Any:
    from ..client.prices import load_prices

    if args.prices and not args.invoice:
        raise MalformedInput("--prices checks the amounts of an --invoice: give the invoice too")
    return load_prices(read_text(args.prices, "--prices")) if args.prices else None


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
    _write(args.out, dumps(bundle), "the bundle")
    print(f"pacspace: wrote {len(bundle['records'])} records of {args.period} to {args.out}", file=sys.stderr)
    return 0


def _write(path: Path, text: str, what: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise PacspaceError(f"cannot write {what} to {path}: {exc.strerror}") from None


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    from ..client.evidence import FORK_FORMAT, EvidenceError, verify_bundle, verify_fork

    verifier = home_of(args).log_key(args.log_key)
    bundle = read_json_object(args.file, "the evidence file")
    if bundle.get("format") == FORK_FORMAT:
        fork = verify_fork(bundle, verifier)
        print(f"ok: fork proven: {fork.origin} signed size {fork.earlier.size} with root "
              f"{fork.earlier.root_hash.hex()[:16]}... and size {fork.later.size} with root "
              f"{fork.later.root_hash.hex()[:16]}..., which no append-only tree has")
        return 0
    result = verify_bundle(bundle, verifier)
    if args.provider_key and not fingerprint_matches(result.provider_fingerprint, args.provider_key):
        raise EvidenceError(f"the bundle's provider key has fingerprint {result.provider_fingerprint}, not "
                            f"{args.provider_key}")
    when = datetime.fromtimestamp(result.close_signed_time, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if args.policy:
        from ..note import parse_note
        from ..receipt import parse_receipt

        print_witnessed(args, parse_note(parse_receipt(bundle["close_receipt"]).checkpoint))
    summary = (f"{result.relationship} {result.period}: {result.record_count} records, closed in a checkpoint "
               f"signed {when}, provider key {result.provider_fingerprint}")
    # Authentic, and in the log; but a record that breaks a protocol rule is no "ok".
    print(f"ok: {summary}" if not result.findings else f"{summary}; {len(result.findings)} record(s) break a rule")
    for line in result.totals:
        dims = ",".join(f"{k}={v}" for k, v in sorted(line.dimensions.items()))
        print(f"{line.meter:<34} {dims:<28} {line.quantity:>16} {line.unit}")
    for finding in result.findings:
        print(f"pacspace: FINDING {finding.kind}: {finding.message}", file=sys.stderr)
    return exitcodes.RULE_BROKEN if result.findings else 0


def cmd_evidence_verify_event(args: argparse.Namespace) -> int:
    import hashlib

    from .. import jsonshape as shape
    from ..client.evidence import EvidenceError
    from ..client.monitor_state import MonitorState
    from ..merkle import HASH_SIZE, leaf_hash, verify_inclusion
    from ..records import canonical
    from ..records.body import Delta, decode_body

    proof = read_json_object(args.file, "the event proof")
    items = shape.field(proof, "proofs", list, f"the event proof {args.file}")
    if not items:
        raise MalformedInput(f"the event proof {args.file} holds no proofs")
    home = home_of(args)
    proven = []
    state = MonitorState(home.path)
    try:
        # Every item is checked before any is reported: an `ok:` line is never followed by a failure.
        for n, item in enumerate(items):
            what = f"the event proof's item {n}"
            rid, seq = shape.field(item, "relationship", str, what), shape.field(item, "seq", int, what)
            index, size = shape.field(item, "index", int, what), shape.field(item, "size", int, what)
            root = shape.hex_bytes(item, "events_root", what, HASH_SIZE)
            path = shape.b64_list(item, "path", what, HASH_SIZE)
            event = shape.field(item, "event", dict, what)
            for key in ("id", "meter", "quantity"):
                shape.field(event, key, str, f"{what}'s event")
            copy = {c.seq: c for c in state.copies(rid)}.get(seq)
            if copy is None:
                raise NotHeld(f"the monitor holds no seq {seq} of {rid} (run `pacspace monitor --once`)")
            body = decode_body(copy.body)
            if not isinstance(body, Delta) or not body.evidence or body.evidence.get("events_root") != root.hex():
                raise EvidenceError(f"{rid} seq {seq} does not commit to events_root {root.hex()[:16]}...")
            if size != int(body.evidence.get("events_count", -1)):
                raise EvidenceError(f"{what}: its tree size is not the events_count of {rid} seq {seq}")
            digest = hashlib.sha256(canonical.encode(event)).digest()
            verify_inclusion(index, size, leaf_hash(digest), path, root)
            proven.append(f"ok: {event['meter']} {event['quantity']} of event {event['id']} is counted in {rid} seq "
                          f"{seq} (window {body.window_start})")
    finally:
        state.close()
    for line in proven:
        print(line)
    return 0
