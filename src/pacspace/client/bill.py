"""Bill verification from the monitor's verified copy: the period's close, its coverage, and an invoice against it.

Works offline: everything is re-checked from monitor.db alone (signatures with
the provider key the genesis names, the chain, the close, each record's
inclusion proof against the stored checkpoint signed by the pinned log key).
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .. import exitcodes
from ..checkpoint import SignedCheckpoint, open_checkpoint
from ..errors import MalformedInput, PacspaceError
from ..merkle import HASH_SIZE, leaf_hash, verify_inclusion
from ..note import Ed25519Verifier
from ..receipt import Receipt
from ..records.body import Close, Delta, Genesis, canonical_decimal, decode_body, exact
from ..records.chain import ChainError, ChainHead, check_next
from ..records.rules import Finding, Ledger
from ..records.seal import Opened, public_entry
from .monitor_state import MonitorState, StoredCopy

EXIT_MATCH = exitcodes.OK
EXIT_INVOICE_DIFFERS = exitcodes.INVOICE_DIFFERS
EXIT_INCOMPLETE = exitcodes.INCOMPLETE
EXIT_RECORD_FAILED = exitcodes.VERIFICATION_FAILED
EXIT_RULE_BROKEN = exitcodes.RULE_BROKEN

Key = tuple[str, tuple[tuple[str, str], ...]]


class BillError(PacspaceError):
    """The committed record itself failed verification."""

    code = "bill_unverifiable"
    exit_code = exitcodes.VERIFICATION_FAILED


class BillIncomplete(BillError):
    """The monitor's copy holds nothing of the relationship: the bill cannot be checked yet."""

    code = "bill_incomplete"
    exit_code = exitcodes.INCOMPLETE


@dataclass
class BillLine:
    meter: str
    dimensions: dict[str, str]
    committed: str
    invoiced: str | None = None

    @property
    def matches(self) -> bool:
        return self.invoiced is None or Decimal(self.invoiced) == Decimal(self.committed)


@dataclass(frozen=True)
class ClosedBy:
    """The record that closed the period, as verified: what the invoice cites."""

    seq: int
    index: int
    first_seq: int
    last_seq: int
    record_count: int
    chain_head: str
    checkpoint: SignedCheckpoint
    receipt: str


@dataclass
class Bill:
    relationship: str
    period: str
    close: ClosedBy | None  # None: the period has no valid close yet
    lines: list[BillLine]
    windows: list[tuple[str, str, str, str]] = field(default_factory=list)  # (window start, meter, dims, quantity)
    findings: list[Finding] = field(default_factory=list)  # of this period: authentic records that break a rule
    other_findings: list[Finding] = field(default_factory=list)  # of the relationship's other periods
    stopped: list[str] = field(default_factory=list)  # why the verified copy may end early (detections)
    invoice_checked: bool = False

    @property
    def matches(self) -> bool:
        return all(line.matches for line in self.lines)

    @property
    def verdict(self) -> str:
        if self.findings:
            return "rule broken"
        if self.close is None:
            return "incomplete"
        return "match" if self.matches else "invoice differs"

    @property
    def exit_code(self) -> int:
        return {"rule broken": EXIT_RULE_BROKEN, "incomplete": EXIT_INCOMPLETE, "match": EXIT_MATCH,
                "invoice differs": EXIT_INVOICE_DIFFERS}[self.verdict]

    def to_json(self) -> dict[str, Any]:
        close = self.close
        return {
            "relationship": self.relationship,
            "period": self.period,
            "verdict": self.verdict,
            "close": None if close is None else {
                "seq": close.seq, "index": close.index, "first_seq": close.first_seq, "last_seq": close.last_seq,
                "record_count": close.record_count, "chain_head": close.chain_head,
                "checkpoint_size": close.checkpoint.size, "signed_time": close.checkpoint.timestamp},
            "lines": [{"meter": x.meter, "dimensions": x.dimensions, "committed": x.committed, "invoiced": x.invoiced,
                       "matches": x.matches} for x in self.lines],
            "findings": [f.to_json() for f in self.findings],
            "other_findings": [f.to_json() for f in self.other_findings],
            "stopped": self.stopped,
        }


def _key(meter: str, dims: dict[str, str]) -> Key:
    return meter, tuple(sorted(dims.items()))


def reverify(
    state: MonitorState, log_key: Ed25519Verifier, rid: str
) -> tuple[list[StoredCopy], list[Opened], dict[int, SignedCheckpoint], Ledger, list[Finding]]:
    """Re-verify a relationship's whole copy offline; raises BillError on any failure.

    Every record's provider signature (the key its genesis names), the chain's
    continuity, and each inclusion proof under its stored checkpoint signed by
    the pinned log key. Returns the copies, the opened records, the checkpoints,
    the rules' view (records.rules) and the findings in the chain.
    """
    copies = state.copies(rid)
    if not copies:
        raise BillIncomplete(f"the monitor holds no records of {rid} (run `pacspace monitor --once`)")
    ledger = Ledger()
    findings: list[Finding] = []
    try:
        opened = [Opened(c.seq, decode_body(c.body), c.body, c.signature) for c in copies]
        genesis = opened[0].body
        if not isinstance(genesis, Genesis):
            raise BillError("the first stored record is not a genesis record")
        provider = Ed25519PublicKey.from_public_bytes(base64.b64decode(genesis.provider.ed25519))
        head: ChainHead | None = None
        for record in opened:
            provider.verify(record.signature, record.encoded)
            head = check_next(head, record)
            findings += ledger.add(record)
        checkpoints: dict[int, SignedCheckpoint] = {}
        for c in copies:
            _check_inclusion(state, log_key, c, checkpoints)
    except InvalidSignature:
        raise BillError("a stored record's provider signature does not verify") from None
    except (ChainError, MalformedInput, ValueError) as exc:
        raise BillError(f"the stored chain does not verify: {exc}") from None
    except BillError:
        raise
    except PacspaceError as exc:
        raise BillError(f"the stored copy does not verify: {exc}") from None
    return copies, opened, checkpoints, ledger, findings


def verify_bill(state: MonitorState, log_key: Ed25519Verifier, rid: str, period: str) -> Bill:
    """Re-verify the relationship's verified copy and return the period's committed bill; raises BillError."""
    copies, opened, checkpoints, ledger, findings = reverify(state, log_key, rid)
    stopped = [f"the verified copy stops before seq {d.seq}: {d.message} (evidence: {d.evidence})"
               for d in state.detections(rid)]
    mine = [f for f in findings if f.period == period]
    others = [f for f in findings if f.period != period]
    windows = [
        (o.body.window_start, line.meter, ",".join(f"{k}={v}" for k, v in sorted(line.dimensions.items())), line.quantity)
        for o in opened
        if isinstance(o.body, Delta) and o.body.period == period
        for line in o.body.lines
    ]
    seq = ledger.closed.get(period)
    if seq is None:
        return Bill(rid, period, None, [], windows, mine, others, stopped)
    copy = copies[seq]
    close = opened[seq].body
    if not isinstance(close, Close) or copy.seq != seq:
        raise AssertionError("the ledger names the seq of a close record")
    checkpoint = checkpoints[copy.checkpoint_size]
    path = tuple(copy.proof[i : i + HASH_SIZE] for i in range(0, len(copy.proof), HASH_SIZE))
    receipt = Receipt(copy.index, path, checkpoint.format(), _entry(copy)).format()
    closed_by = ClosedBy(copy.seq, copy.index, close.first_seq, close.last_seq, close.record_count, close.chain_head,
                         checkpoint, receipt)
    lines = [BillLine(t.meter, dict(t.dimensions), t.quantity) for t in close.totals]
    return Bill(rid, period, closed_by, lines, windows, mine, others, stopped)


def _entry(copy: StoredCopy) -> bytes:
    return public_entry(copy.tag, copy.blob)


def _check_inclusion(state: MonitorState, log_key: Ed25519Verifier, copy: StoredCopy, cache: dict[int, SignedCheckpoint]) -> None:
    checkpoint = cache.get(copy.checkpoint_size)
    if checkpoint is None:
        note = state.checkpoint(copy.checkpoint_size)
        if note is None:
            raise BillError(f"the checkpoint of size {copy.checkpoint_size} is missing from the monitor's copy")
        checkpoint = cache[copy.checkpoint_size] = open_checkpoint(note, log_key)
    path = [copy.proof[i : i + HASH_SIZE] for i in range(0, len(copy.proof), HASH_SIZE)]
    verify_inclusion(copy.index, checkpoint.size, leaf_hash(_entry(copy)), path, checkpoint.root_hash)


def load_invoice(text: str, rid: str, period: str) -> dict[Key, str]:
    """``{"relationship", "period", "lines": [{"meter", "dimensions", "quantity"}]}`` -> quantity per (meter, dims)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise MalformedInput("the invoice is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("lines"), list):
        raise MalformedInput('an invoice is {"relationship", "period", "lines": [...]}')
    if data.get("relationship") != rid or data.get("period") != period:
        raise MalformedInput(f"the invoice is for {data.get('relationship')} {data.get('period')}, not {rid} {period}")
    out: dict[Key, str] = {}
    ctx = exact()
    for line in data["lines"]:
        if not isinstance(line, dict) or not isinstance(line.get("meter"), str):
            raise MalformedInput("each invoice line has a meter, dimensions and a decimal quantity")
        dims = line.get("dimensions") or {}
        if not isinstance(dims, dict):
            raise MalformedInput("invoice dimensions are an object of strings")
        key = _key(line["meter"], {str(k): str(v) for k, v in dims.items()})
        quantity = canonical_decimal(str(line.get("quantity")))
        out[key] = canonical_decimal(ctx.add(Decimal(out.get(key, "0")), Decimal(quantity)))
    return out


def compare(bill: Bill, invoice: dict[Key, str]) -> None:
    """Put each invoiced quantity beside the committed one; lines only one side has count as differences."""
    bill.invoice_checked = True
    committed: dict[Key, BillLine] = {}
    for line in bill.lines:
        key = _key(line.meter, line.dimensions)
        if key in committed:
            # Same meter and dimensions under two units: add them up for the comparison.
            committed[key].committed = canonical_decimal(Decimal(committed[key].committed) + Decimal(line.committed))
        else:
            committed[key] = line
    for key, quantity in invoice.items():
        if key in committed:
            committed[key].invoiced = quantity
        else:
            committed[key] = BillLine(key[0], dict(key[1]), "0", quantity)
    for line in committed.values():
        if line.invoiced is None:
            line.invoiced = "0"
    bill.lines = sorted(committed.values(), key=lambda x: (x.meter, sorted(x.dimensions.items())))


def render_table(bill: Bill) -> str:
    rows = [f"{'METER':<34} {'DIMENSIONS':<28} {'COMMITTED':>16} {'INVOICED':>16}  OK"]
    for x in bill.lines:
        dims = ",".join(f"{k}={v}" for k, v in sorted(x.dimensions.items()))
        rows.append(f"{x.meter:<34} {dims:<28} {x.committed:>16} {x.invoiced if x.invoiced is not None else '-':>16}  "
                    f"{'yes' if x.matches else 'NO'}")
    if bill.close is None:
        rows.append(f"(no close record for {bill.period} yet: the bill cannot be confirmed)")
    for f in bill.findings:
        rows.append(f"FINDING {f.kind}: {f.message}")
    return "\n".join(rows)


def verdict_text(bill: Bill) -> str:
    """One sentence for humans, the same in the table, the report and the console."""
    if bill.findings:
        return (f"The provider broke {len(bill.findings)} protocol rule{'s' if len(bill.findings) > 1 else ''} "
                f"in {bill.period}: see the findings.")
    if bill.close is None:
        return f"{bill.period} has no close record yet: the bill cannot be confirmed."
    if not bill.matches:
        return "The invoice differs from the committed record."
    return "The invoice matches the committed record." if bill.invoice_checked else "The committed record verifies."


def render_html(bill: Bill) -> str:
    """One self-contained page: verdict, table, a chart of usage per window per meter, and the evidence."""
    color = "#1a7f37" if bill.verdict == "match" else "#9a6700" if bill.verdict == "incomplete" else "#b42318"
    rows = "".join(
        f"<tr><td>{html.escape(x.meter)}</td><td>{html.escape(', '.join(f'{k}={v}' for k, v in sorted(x.dimensions.items())))}</td>"
        f"<td class=n>{html.escape(x.committed)}</td><td class=n>{html.escape(x.invoiced or '-')}</td>"
        f"<td>{'✓' if x.matches else '✗'}</td></tr>"
        for x in bill.lines
    )
    findings = "".join(f"<li><b>{html.escape(f.kind)}</b>: {html.escape(f.message)}</li>" for f in bill.findings)
    findings_html = f"<h2>Findings</h2><ul>{findings}</ul>" if findings else ""
    chart = _svg_chart(bill.windows)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bill verification {html.escape(bill.relationship)} {bill.period}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem;color:#222}}
.verdict{{font-size:1.4rem;padding:1rem;border-radius:.5rem;color:#fff;background:{color}}}
table{{border-collapse:collapse;width:100%;margin:1rem 0}}td,th{{border-bottom:1px solid #ddd;padding:.4rem;text-align:left}}
td.n{{text-align:right;font-variant-numeric:tabular-nums}}pre{{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.8rem}}
</style></head><body>
<h1>Bill verification</h1>
<p>Relationship <code>{html.escape(bill.relationship)}</code>, period <b>{bill.period}</b>.</p>
<div class="verdict" data-verdict="{html.escape(bill.verdict)}">{html.escape(verdict_text(bill))}</div>
{findings_html}
<h2>Committed totals{' and the invoice' if bill.invoice_checked else ''}</h2>
<table><tr><th>Meter</th><th>Dimensions</th><th>Committed</th><th>Invoiced</th><th></th></tr>{rows}</table>
<h2>Usage per window</h2>
{chart}
<h2>Evidence</h2>
{_close_html(bill.close)}
</body></html>
"""


def _close_html(close: ClosedBy | None) -> str:
    if close is None:
        return "<p>No close record yet.</p>"
    signed = datetime.fromtimestamp(close.checkpoint.timestamp, timezone.utc)
    return f"""<p>The close record (seq {close.seq}, log index {close.index}) covers seq {close.first_seq} to {close.last_seq}
({close.record_count} records), chain head <code>{close.chain_head}</code>. It was committed under the checkpoint of size
{close.checkpoint.size}, which the log signed at <b>{signed:%Y-%m-%d %H:%M:%S} UTC</b>.</p>
<p>Receipt (c2sp.org/tlog-proof), verifiable offline with <code>pacspace receipt verify</code>:</p>
<pre>{html.escape(close.receipt)}</pre>"""


def _svg_chart(windows: list[tuple[str, str, str, str]]) -> str:
    if not windows:
        return "<p>No usage records in this period.</p>"
    series: dict[str, dict[str, Decimal]] = {}
    for start, meter, dims, quantity in windows:
        name = meter + (f" ({dims})" if dims else "")
        series.setdefault(name, {})
        series[name][start] = series[name].get(start, Decimal(0)) + Decimal(quantity)
    starts = sorted({w[0] for w in windows})
    width, height, pad = 760, 240, 40
    peak = max((v for s in series.values() for v in s.values()), default=Decimal(1)) or Decimal(1)
    palette = ["#0969da", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#cf222e"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40 + 14 * len(series)}" role="img">',
             f'<line x1="{pad}" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/>']
    step = (width - pad) / max(1, len(starts) - 1)
    for i, (name, values) in enumerate(sorted(series.items())):
        points = []
        for j, start in enumerate(starts):
            y = height - float(values.get(start, Decimal(0)) / peak) * (height - 20)
            points.append(f"{pad + j * step:.1f},{y:.1f}")
        color = palette[i % len(palette)]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(points)}"/>')
        parts.append(f'<text x="{pad}" y="{height + 34 + 14 * i}" fill="{color}" font-size="12">{html.escape(name)}</text>')
    parts.append(f'<text x="0" y="14" font-size="11">{html.escape(str(peak))}</text>')
    parts.append(f'<text x="{pad}" y="{height + 14}" font-size="10">{html.escape(starts[0])}</text>')
    parts.append(f'<text x="{width - 130}" y="{height + 14}" font-size="10">{html.escape(starts[-1])}</text>')
    parts.append("</svg>")
    return "".join(parts)
