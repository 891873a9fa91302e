"""The bill as HTML: the self-contained report (`bill verify --report`, the console's download) and the parts of it
the console shows too. Pure.

Every string a provider or an invoice chose (meters, dimensions, units, an
invoice's own line names) is escaped. The report carries a Content-Security-
Policy that allows its own style sheet and nothing else: no script, no
connection, no image from anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import html
from datetime import datetime, timezone
from decimal import Decimal

from ..records.body import canonical_decimal, exact
from .bill import Bill, BillLine, ClosedBy, verdict_text
from .chart import Sample, parse_time, usage_chart

REPORT_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:62rem;color:#1f2328}
.verdict{font-size:1.3rem;padding:1rem;border-radius:.5rem;color:#fff}
.verdict[data-verdict=match]{background:#1a7f37}.verdict[data-verdict=incomplete]{background:#9a6700}
.verdict[data-verdict=differs],.verdict[data-verdict=failed]{background:#b42318}
table{border-collapse:collapse;width:100%;margin:1rem 0}td,th{border-bottom:1px solid #d0d7de;padding:.35rem .5rem;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}tr.differs td{background:#ffebe9}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.8rem}
"""


def style_hash(style: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()


def render_html(bill: Bill) -> str:
    """One self-contained page: verdict, findings, the lines (with the invoice's), the usage chart, the evidence."""
    title = f"Bill verification {bill.relationship} {bill.period}"
    policy = f"default-src 'none'; style-src '{style_hash(REPORT_STYLE)}'; img-src data:; base-uri 'none'; form-action 'none'"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<title>{html.escape(title)}</title>
<style>{REPORT_STYLE}</style></head><body>
<h1>Bill verification</h1>
<p>Relationship <code>{html.escape(bill.relationship)}</code>, period <b>{html.escape(bill.period)}</b>.</p>
{verdict_html(bill)}
{findings_html(bill)}
<h2>Committed totals{' and the invoice' if bill.invoice_checked else ''}</h2>
{lines_table(bill)}
{invoice_notes(bill)}
<h2>Usage per window</h2>
{usage_chart(samples(bill), bill.period)}
<h2>Evidence</h2>
{close_html(bill.close)}
</body></html>
"""


def verdict_html(bill: Bill, element_id: str = "verdict") -> str:
    return (f'<div id="{element_id}" class="verdict" data-verdict="{bill.outcome}">'
            f"{html.escape(verdict_text(bill))}</div>")


def findings_html(bill: Bill) -> str:
    if not bill.findings:
        return ""
    items = "".join(f"<li><b>{html.escape(f.kind)}</b> (seq {f.seq}): {html.escape(f.message)}. "
                    f"<i>{html.escape(f.fix)}</i></li>" for f in bill.findings)
    return f"<h2>Findings</h2><ul class=\"findings\">{items}</ul>"


def dims_html(dimensions: dict[str, str]) -> str:
    return html.escape(", ".join(f"{k}={v}" for k, v in sorted(dimensions.items())))


def lines_table(bill: Bill) -> str:
    """The committed totals; beside them, after an invoice check, the invoiced quantities (and amounts)."""
    amounts = bill.prices_checked or any(x.invoiced_amount is not None for x in bill.lines)
    head = "<tr><th>Meter</th><th>Dimensions</th><th>Unit</th><th>Committed</th>"
    if bill.invoice_checked:
        head += "<th>Invoiced</th>" + ("<th>Priced</th><th>Invoiced amount</th>" if amounts else "") + "<th>Invoice line</th><th></th>"
    rows = "".join(_line_row(x, bill.invoice_checked, amounts) for x in bill.lines)
    return f'<table class="lines">{head}</tr>{rows}</table>'


def _line_row(x: BillLine, checked: bool, amounts: bool) -> str:
    committed = html.escape(x.committed) + (f" <small>({html.escape(x.package or '')}: {html.escape(x.expected)})</small>"
                                            if x.expected is not None else "")
    row = (f"<td>{html.escape(x.meter)}</td><td>{dims_html(x.dimensions)}</td><td>{html.escape(x.unit)}</td>"
           f"<td class=n>{committed}</td>")
    if not checked:
        return f"<tr>{row}</tr>"
    row += f"<td class=n>{html.escape(x.invoiced or '-')}</td>"
    if amounts:
        row += f"<td class=n>{html.escape(x.expected_amount or '-')}</td><td class=n>{html.escape(x.invoiced_amount or '-')}</td>"
    row += f"<td>{html.escape(', '.join(x.refs))}</td><td>{'✓' if x.matches else '✗ ' + _why(x)}</td>"
    return f'<tr class="{"match" if x.matches else "differs"}" data-matches="{str(x.matches).lower()}">{row}</tr>'


def _why(x: BillLine) -> str:
    if not x.quantity_matches:
        by = exact().subtract(Decimal(x.invoiced or 0), Decimal(x.expected or x.committed))
        return f"quantity differs: {'+' if by > 0 else ''}{canonical_decimal(by)} invoiced"
    if x.expected_amount is None:
        return "no price for it in the price sheet"
    return "no amount on the invoice" if x.invoiced_amount is None else "amount differs"


def invoice_notes(bill: Bill) -> str:
    invoice = bill.invoice
    if invoice is None:
        return ""
    about = f"<p>Invoice {html.escape(invoice.number or '')} ({html.escape(invoice.format)}"
    about += f", {html.escape(invoice.currency.upper())}" if invoice.currency else ""
    about += ", amounts checked against the price sheet)" if bill.prices_checked else "; quantities checked)"
    items = [f"<li>Not usage, not checked: {html.escape(x.ref)}"
             f"{' (' + html.escape(x.amount) + ')' if x.amount else ''}</li>" for x in invoice.ignored]
    items += [f"<li>{html.escape(note)}</li>" for note in invoice.notes]
    return about + "</p>" + (f'<ul class="notes">{"".join(items)}</ul>' if items else "")


def samples(bill: Bill) -> list[Sample]:
    return [Sample(parse_time(u.start), parse_time(u.end), u.line.meter, u.line.unit,
                   ",".join(f"{k}={v}" for k, v in sorted(u.line.dimensions.items())), Decimal(u.line.quantity))
            for u in bill.usage]


def close_html(close: ClosedBy | None) -> str:
    if close is None:
        return "<p>No close record yet.</p>"
    signed = datetime.fromtimestamp(close.checkpoint.timestamp, timezone.utc)
    return f"""<p>The close record (seq {close.seq}, log index {close.index}) covers seq {close.first_seq} to {close.last_seq}
({close.record_count} records), chain head <code>{close.chain_head}</code>. It was committed under the checkpoint of size
{close.checkpoint.size}, which the log signed at <b>{signed:%Y-%m-%d %H:%M:%S} UTC</b>.</p>
<p>Receipt (c2sp.org/tlog-proof), verifiable offline with <code>pacspace receipt verify</code>:</p>
<pre>{html.escape(close.receipt)}</pre>"""
