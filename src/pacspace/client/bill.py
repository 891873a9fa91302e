"""Bill verification from the monitor's verified copy: the period's close, its coverage, and an invoice against it.

Works offline: everything is re-checked from monitor.db alone (signatures with
the provider key the genesis names, the chain, the close, each record's
inclusion proof against the stored checkpoint signed by the pinned log key).
"""

from __future__ import annotations

import base64
import csv
import io
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
from ..records.body import Close, Delta, Genesis, Line, canonical_decimal, decode_body, exact
from ..records.chain import ChainError, ChainHead, check_next
from ..records.rules import Finding, Ledger
from ..records.seal import Opened, public_entry
from .invoices import Invoice, InvoiceLine, read_invoice
from .monitor_state import MonitorState, StoredCopy
from .prices import PriceSheet

EXIT_MATCH = exitcodes.OK
EXIT_INVOICE_DIFFERS = exitcodes.INVOICE_DIFFERS
EXIT_INCOMPLETE = exitcodes.INCOMPLETE
EXIT_RECORD_FAILED = exitcodes.VERIFICATION_FAILED
EXIT_RULE_BROKEN = exitcodes.RULE_BROKEN

Key = tuple[str, tuple[tuple[str, str], ...]]


class BillError(PacspaceError):
    """The committed record itself failed verification."""

    code = "bill_unverifiable"
    http_status = 422
    exit_code = exitcodes.VERIFICATION_FAILED


class BillIncomplete(BillError):
    """The monitor's copy holds nothing of the relationship: the bill cannot be checked yet."""

    code = "bill_incomplete"
    http_status = 409
    exit_code = exitcodes.INCOMPLETE


@dataclass
class BillLine:
    """One meter and dimensions: the committed total beside what the invoice says (quantity, and amount with prices)."""

    meter: str
    dimensions: dict[str, str]
    committed: str
    invoiced: str | None = None
    unit: str = ""
    expected: str | None = None  # the committed quantity in the invoice's packages (a mapping's divide_by)
    package: str | None = None  # how ``expected`` was computed, for people
    invoiced_amount: str | None = None
    expected_amount: str | None = None  # from the price sheet: what the committed quantity costs
    amount_checked: bool = False
    refs: tuple[str, ...] = ()  # the invoice's own names of its lines

    @property
    def quantity_matches(self) -> bool:
        return self.invoiced is None or Decimal(self.invoiced) == Decimal(self.expected or self.committed)

    @property
    def amount_matches(self) -> bool:
        if not self.amount_checked:
            return True
        return None not in (self.invoiced_amount, self.expected_amount) and \
            Decimal(self.invoiced_amount or 0) == Decimal(self.expected_amount or 0)

    @property
    def matches(self) -> bool:
        return self.quantity_matches and self.amount_matches

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"meter": self.meter, "dimensions": self.dimensions, "unit": self.unit,
                               "committed": self.committed, "invoiced": self.invoiced, "matches": self.matches}
        if self.expected is not None:
            out.update(expected=self.expected, package=self.package)
        if self.amount_checked or self.invoiced_amount is not None:
            out.update(invoiced_amount=self.invoiced_amount, expected_amount=self.expected_amount,
                       amount_checked=self.amount_checked)
        if self.refs:
            out["invoice_lines"] = list(self.refs)
        return out


@dataclass(frozen=True)
class Usage:
    """One line of one delta or correction of the period, with its window: what the chart and the table show."""

    seq: int
    start: str
    end: str
    line: Line


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


OUTCOMES = ("match", "differs", "incomplete", "failed")


@dataclass
class Bill:
    relationship: str
    period: str
    close: ClosedBy | None  # None: the period has no valid close yet
    lines: list[BillLine]
    usage: list[Usage] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # of this period: authentic records that break a rule
    other_findings: list[Finding] = field(default_factory=list)  # of the relationship's other periods
    stopped: list[str] = field(default_factory=list)  # why the verified copy may end early (detections)
    invoice_checked: bool = False
    invoice: Invoice | None = None
    prices_checked: bool = False
    totals: tuple[Line, ...] = ()  # the close's totals, as signed (with their units)

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
    def outcome(self) -> str:
        """The verdict in one of four words (OUTCOMES), as the console and reports mark it with ``data-verdict``:
        a period whose provider broke a rule ``failed`` as much as one whose copy does not verify."""
        return {"rule broken": "failed", "invoice differs": "differs"}.get(self.verdict, self.verdict)

    @property
    def exit_code(self) -> int:
        return {"rule broken": EXIT_RULE_BROKEN, "incomplete": EXIT_INCOMPLETE, "match": EXIT_MATCH,
                "invoice differs": EXIT_INVOICE_DIFFERS}[self.verdict]

    def running_totals(self) -> list[Line]:
        """The period's usage summed so far, per meter, unit and dimensions (for a period with no close yet)."""
        tally: dict[tuple[str, str, tuple[tuple[str, str], ...]], Decimal] = {}
        ctx = exact()
        for u in self.usage:
            tally[u.line.key()] = ctx.add(tally.get(u.line.key(), Decimal(0)), Decimal(u.line.quantity))
        return [Line(m, unit, canonical_decimal(q), dict(d)) for (m, unit, d), q in sorted(tally.items())]

    def to_json(self) -> dict[str, Any]:
        close = self.close
        out = {
            "relationship": self.relationship,
            "period": self.period,
            "verdict": self.verdict,
            "outcome": self.outcome,
            "close": None if close is None else {
                "seq": close.seq, "index": close.index, "first_seq": close.first_seq, "last_seq": close.last_seq,
                "record_count": close.record_count, "chain_head": close.chain_head,
                "checkpoint_size": close.checkpoint.size, "signed_time": close.checkpoint.timestamp},
            "lines": [x.to_json() for x in self.lines],
            "findings": [f.to_json() for f in self.findings],
            "other_findings": [f.to_json() for f in self.other_findings],
            "stopped": self.stopped,
        }
        if self.invoice is not None:
            out["invoice"] = {"format": self.invoice.format, "number": self.invoice.number,
                              "currency": self.invoice.currency, "prices_checked": self.prices_checked,
                              "not_usage": [x.ref for x in self.invoice.ignored], "notes": self.invoice.notes}
        return out


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
    last_poll = state.last_poll() or 0
    stopped = [f"the verified copy stops before seq {d.seq}: {d.message} (evidence: {d.evidence})"
               for d in state.detections(rid) if d.last_at >= last_poll and d.seq >= len(copies)]
    mine = [f for f in findings if f.period == period]
    others = [f for f in findings if f.period != period]
    usage = [Usage(o.seq, o.body.window_start, o.body.window_end, line)
             for o in opened if isinstance(o.body, Delta) and o.body.period == period for line in o.body.lines]
    seq = ledger.closed.get(period)
    if seq is None:
        return Bill(rid, period, None, [], usage, mine, others, stopped)
    copy = copies[seq]
    close = opened[seq].body
    if not isinstance(close, Close) or copy.seq != seq:
        raise AssertionError("the ledger names the seq of a close record")
    checkpoint = checkpoints[copy.checkpoint_size]
    path = tuple(copy.proof[i : i + HASH_SIZE] for i in range(0, len(copy.proof), HASH_SIZE))
    receipt = Receipt(copy.index, path, checkpoint.format(), _entry(copy)).format()
    closed_by = ClosedBy(copy.seq, copy.index, close.first_seq, close.last_seq, close.record_count, close.chain_head,
                         checkpoint, receipt)
    lines = [BillLine(t.meter, dict(t.dimensions), t.quantity, unit=t.unit) for t in close.totals]
    return Bill(rid, period, closed_by, lines, usage, mine, others, stopped, totals=close.totals)


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
    """pacspace's invoice JSON -> quantity per (meter, dims) (client.invoices reads every format)."""
    invoice = read_invoice(text, "pacspace", rid, period)
    return {_key(x.meter, x.dimensions): x.quantity for x in invoice.lines}


def compare(bill: Bill, invoice: Invoice | dict[Key, str], prices: PriceSheet | None = None) -> None:
    """Put each invoiced line beside the committed one; lines only one side has count as differences. With
    ``prices``, each line's amount is checked too: the price of the committed quantity against the invoiced one."""
    if isinstance(invoice, dict):
        invoice = Invoice("pacspace", None, None, [InvoiceLine(k[0], dict(k[1]), q, None) for k, q in invoice.items()])
    if prices is not None and None not in (prices.currency, invoice.currency) and prices.currency != invoice.currency:
        raise MalformedInput(f"the price sheet is in {prices.currency}, the invoice in {invoice.currency}")
    bill.invoice_checked, bill.invoice, bill.prices_checked = True, invoice, prices is not None
    committed = _committed(bill.lines)
    for line in invoice.lines:
        key = _key(line.meter, line.dimensions)
        target = committed.setdefault(key, BillLine(line.meter, dict(line.dimensions), "0"))
        target.invoiced, target.invoiced_amount, target.refs = line.quantity, line.amount, line.refs
        if line.transform is not None:
            target.expected, target.package = line.transform.apply(target.committed), line.transform.describe()
    for target in committed.values():
        target.invoiced = target.invoiced if target.invoiced is not None else "0"
        if prices is not None:
            target.amount_checked = True
            target.expected_amount = prices.amount(target.meter, target.dimensions, target.expected or target.committed)
    bill.lines = sorted(committed.values(), key=lambda x: (x.meter, sorted(x.dimensions.items())))


def _committed(lines: list[BillLine]) -> dict[Key, BillLine]:
    """The close's totals per meter and dimensions; the same meter and dimensions under two units are added up."""
    committed: dict[Key, BillLine] = {}
    for line in lines:
        key = _key(line.meter, line.dimensions)
        if key in committed:
            earlier = committed[key]
            earlier.committed = canonical_decimal(Decimal(earlier.committed) + Decimal(line.committed))
            earlier.unit = f"{earlier.unit}, {line.unit}"
        else:
            committed[key] = line
    return committed


def dims_text(dimensions: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(dimensions.items()))


def render_table(bill: Bill) -> str:
    amounts = bill.prices_checked or any(x.invoiced_amount is not None for x in bill.lines)
    head = f"{'METER':<34} {'DIMENSIONS':<28} {'COMMITTED':>16} {'INVOICED':>16}"
    rows = [head + (f" {'PRICED':>14} {'AMOUNT':>14}" if amounts else "") + "  OK"]
    for x in bill.lines:
        row = f"{x.meter:<34} {dims_text(x.dimensions):<28} {x.expected or x.committed:>16} {x.invoiced or '-':>16}"
        if amounts:
            row += f" {x.expected_amount or '-':>14} {x.invoiced_amount or '-':>14}"
        rows.append(f"{row}  {'yes' if x.matches else 'NO'}")
    if bill.close is None:
        rows.append(f"(no close record for {bill.period} yet: the bill cannot be confirmed)")
    for f in bill.findings:
        rows.append(f"FINDING {f.kind}: {f.message}")
    if bill.invoice is not None:
        rows += [f"not usage, not checked: {x.ref}" for x in bill.invoice.ignored]
        rows += [f"note: {note}" for note in bill.invoice.notes]
    # An invoice's or a provider's strings reach a terminal: no escape sequence of theirs does.
    return "\n".join("".join(c if c.isprintable() else "?" for c in row) for row in rows)


CSV_HEADER = ["meter", "dimensions", "unit", "committed", "invoiced", "matches", "priced", "invoiced_amount",
              "invoice_lines"]


def render_csv(bill: Bill) -> str:
    """The lines as CSV (what `bill verify --format csv` prints and the console downloads)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for x in bill.lines:
        writer.writerow([_cell(x.meter), _cell(";".join(f"{k}={v}" for k, v in sorted(x.dimensions.items()))),
                         _cell(x.unit), x.expected or x.committed, x.invoiced if x.invoiced is not None else "",
                         "yes" if x.matches else "no", x.expected_amount or "", x.invoiced_amount or "",
                         _cell(" ".join(x.refs))])
    return out.getvalue()


def _cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: one starting like a formula (a provider's dimension value
    ``=HYPERLINK(...)``) is prefixed with an apostrophe."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def verdict_text(bill: Bill) -> str:
    """One sentence for humans, the same in the table, the report and the console."""
    if bill.findings:
        return (f"The provider broke {len(bill.findings)} protocol rule{'s' if len(bill.findings) > 1 else ''} "
                f"in {bill.period}: see the findings.")
    if bill.close is None:
        return f"{bill.period} has no close record yet: the bill cannot be confirmed."
    if not bill.matches:
        differing = sum(not x.matches for x in bill.lines)
        return f"The invoice differs from the committed record ({differing} of {len(bill.lines)} lines)."
    return "The invoice matches the committed record." if bill.invoice_checked else "The committed record verifies."
