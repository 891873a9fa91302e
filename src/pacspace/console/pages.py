"""The console's pages, as HTML. Pure.

Everything a provider, a server or an invoice chose (relationship and party
names, meters, dimensions, units, messages, an invoice's line names) is
escaped where it is put. The pages load one script and one style sheet, both
the console's own (the Content-Security-Policy allows nothing else); they work
without the script too, which only adds the drop zone and the poll's progress.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from ..client.bill import Bill, Usage, dims_text
from ..client.consent import Invitation
from ..client.invoices import FORMATS
from ..client.chart import usage_chart
from ..client.monitor_state import StoredDetection, StoredFinding
from ..client.report import close_html, findings_html, invoice_notes, lines_table, samples, verdict_html
from ..records.body import Close, Delta, Genesis
from .overview import CheckpointView, RecordView, RelationshipView
from .poller import PollStatus
from .security import CSRF_FIELD

e = html.escape
STATES = {"open": "open", "closed": "closed and verified", "findings": "findings"}


@dataclass(frozen=True)
class Frame:
    """What every page shows around its content."""

    csrf: str
    status: PollStatus
    server: str | None  # the log server's URL, or None when the console does not poll
    evidence_dir: Path
    flash: str | None = None


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def rel_url(rid: str) -> str:
    return f"/r/{quote(rid, safe=':')}"


def period_url(rid: str, period: str) -> str:
    return f"{rel_url(rid)}/p/{quote(period)}"


def when(moment: datetime | float | None) -> str:
    if moment is None:
        return "never"
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, timezone.utc)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def layout(frame: Frame, title: str, body: str, crumbs: list[tuple[str, str]] = ()) -> str:  # type: ignore[assignment]
    trail = " › ".join(['<a href="/">Relationships</a>'] + [f'<a href="{e(u)}">{e(t)}</a>' for t, u in crumbs])
    flash = f'<p class="flash" role="status">{e(frame.flash)}</p>' if frame.flash else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf" content="{e(frame.csrf)}">
<title>{e(title)} · pacspace console</title>
<link rel="stylesheet" href="/static/console.css"><script src="/static/console.js" defer></script></head>
<body><header><div class="brand">pacspace console</div><nav>{trail}</nav>{poll_box(frame)}</header>
<main>{flash}{body}</main>
<footer>Everything here was verified on this machine, from the monitor's copy
(<code>monitor.db</code>); nothing is sent anywhere but to the log server, to poll and to answer invitations.</footer>
</body></html>
"""


def poll_box(frame: Frame) -> str:
    s = frame.status
    if s.running:
        text = f"Polling: {s.stage} {s.done}/{s.total}" if s.total else f"Polling: {s.stage}…"
    elif s.ok is None:
        text = "No poll yet."
    else:
        text = f"Last poll {when(s.finished_at)}: {s.message}"
    state = "running" if s.running else "never" if s.ok is None else "ok" if s.ok else "failed"
    where = f" of {e(frame.server)}" if frame.server else ""
    return f"""<div id="poll" data-running="{str(s.running).lower()}" data-state="{state}">
<form id="poll-form" method="post" action="/poll"><input type="hidden" name="{CSRF_FIELD}" value="{e(frame.csrf)}">
<button type="submit" id="poll-now"{' disabled' if s.running or not frame.server else ''}>Poll{where} now</button></form>
<progress id="poll-progress" max="{max(s.total, 1)}" value="{s.done}"{'' if s.running else ' hidden'}></progress>
<span id="poll-text">{e(text)}</span></div>"""


def evidence_link(frame: Frame, path: str) -> str:
    """A link to an evidence file the console serves (one of PACSPACE_HOME/evidence/), else its path as text."""
    file = Path(path)
    if file.parent == frame.evidence_dir and file.suffix == ".json":
        return f'<a class="evidence" href="/evidence/{quote(file.name)}">{e(file.name)}</a>'
    return f"<code>{e(path)}</code>"


# --- the overview ------------------------------------------------------------------


def overview(frame: Frame, checkpoint: CheckpointView | None, views: list[RelationshipView],
             log_detections: list[StoredDetection]) -> str:
    parts = ["<h1>Relationships</h1>", _checkpoint(checkpoint), _invitations(frame), _detections(frame, log_detections)]
    parts.append("<h2>Accepted relationships</h2>")
    if not views:
        parts.append("<p>The verified copy holds no relationship yet: accept an invitation, then poll.</p>")
    parts += [_relationship_card(frame, v) for v in views]
    return layout(frame, "Relationships", "".join(parts))


def _checkpoint(view: CheckpointView | None) -> str:
    if view is None:
        return '<p class="checkpoint">No checkpoint verified yet: the first poll verifies one.</p>'
    return (f'<p class="checkpoint">Last verified checkpoint: tree size <b>{view.size}</b>, signed by the log at '
            f'<b>{when(view.signed_at)}</b>, verified here at {when(view.verified_at)}.</p>')


def _invitations(frame: Frame) -> str:
    found = frame.status.invitations
    if found is None:
        return ('<section class="invitations"><h2>Invitations</h2><p>Not known yet: no poll has reached the log '
                'server since the console started.</p></section>')
    if not found:
        return '<section class="invitations"><h2>Invitations</h2><p>None waiting.</p></section>'
    rows = "".join(_invitation(frame, i) for i in found)
    return (f'<section class="invitations"><h2>Invitations</h2><p>Compare each provider\'s key fingerprint with the '
            f'one the provider gave you out of band before you accept.</p>{rows}</section>')


def _invitation(frame: Frame, inv: Invitation) -> str:
    rid = e(inv.relationship)
    fp = inv.provider_fingerprint or ""
    base = f"/invitations/{quote(inv.relationship, safe=':')}"
    hidden = f'<input type="hidden" name="{CSRF_FIELD}" value="{e(frame.csrf)}">'
    accept = "" if not fp else (
        f'<form method="post" action="{base}/accept">{hidden}<input type="hidden" name="fingerprint" value="{e(fp)}">'
        f'<button type="submit" class="accept">Accept</button></form>')
    return f"""<div class="invitation" data-relationship="{rid}"><p><b>{e(inv.provider)}</b> invites you to
<code>{rid}</code> ({e(inv.cadence)}), since {when(inv.created_at) if inv.created_at is not None else "a time the log server did not say"}.</p>
<p>Provider key fingerprint: <code class="fingerprint">{e(fp or "(the provider has no keys)")}</code></p>
<div class="actions">{accept}<form method="post" action="{base}/decline">{hidden}
<button type="submit" class="decline">Decline</button></form></div></div>"""


def _detections(frame: Frame, found: list[StoredDetection]) -> str:
    if not found:
        return ""
    items = "".join(f"<li><b>{e(d.kind)}</b>: {e(d.message)} (seen {d.times} times, last {when(float(d.last_at))}; "
                    f"evidence {evidence_link(frame, d.evidence)})</li>" for d in found)
    return f'<section class="detections"><h2>Detections about the log</h2><ul>{items}</ul></section>'


def _relationship_card(frame: Frame, view: RelationshipView) -> str:
    f = view.followed
    periods = "".join(f'<li><a href="{e(period_url(f.id, p.period))}">{e(p.period)}</a> '
                      f'<span class="badge {p.state}">{STATES[p.state]}</span> ({count(p.records, "record")})</li>'
                      for p in view.periods) or "<li>No usage yet.</li>"
    alarms = ""
    if view.findings or view.detections:
        alarms = (f'<p class="alarm">{len(view.findings)} finding(s), {len(view.detections)} detection(s): '
                  f'<a href="{e(rel_url(f.id))}">see them with their evidence</a></p>')
    return f"""<section class="relationship" data-relationship="{e(f.id)}">
<h3><a href="{e(rel_url(f.id))}">{e(f.provider)}</a> <code>{e(f.id)}</code></h3>
<p>Provider key fingerprint <code class="fingerprint">{e(f.provider_fingerprint)}</code>; {count(view.records, "record")}
verified.</p>{alarms}<ul class="periods">{periods}</ul></section>"""


# --- one relationship -------------------------------------------------------------


def relationship(frame: Frame, view: RelationshipView) -> str:
    f = view.followed
    periods = "".join(f'<tr><td><a href="{e(period_url(f.id, p.period))}">{e(p.period)}</a></td>'
                      f'<td><span class="badge {p.state}">{STATES[p.state]}</span></td><td class=n>{p.records}</td></tr>'
                      for p in view.periods)
    body = [f"<h1>{e(f.provider)} <code>{e(f.id)}</code></h1>",
            f"<p>Customer <b>{e(f.customer)}</b>; provider key fingerprint <code class=\"fingerprint\">"
            f"{e(f.provider_fingerprint)}</code>; {count(view.records, 'record')} verified.</p>",
            f'<h2>Billing periods</h2><table class="periods"><tr><th>Period</th><th>Status</th><th>Records</th></tr>'
            f"{periods}</table>", _findings_list(frame, view.findings), _record_detections(frame, view.detections)]
    return layout(frame, f.id, "".join(body), [(f.provider, rel_url(f.id))])


def _findings_list(frame: Frame, findings: list[StoredFinding]) -> str:
    if not findings:
        return "<h2>Findings</h2><p>None: every record follows the protocol rules.</p>"
    rows = "".join(f'<tr><td><a href="{e(rel_url(x.relationship))}/records/{x.seq}">{x.seq}</a></td><td>{e(x.kind)}</td>'
                   f"<td>{e(x.period)}</td><td>{e(x.message)}<br><i>{e(x.fix)}</i></td>"
                   f"<td>{evidence_link(frame, x.evidence)}</td></tr>" for x in findings)
    return (f'<h2>Findings</h2><table class="findings"><tr><th>Seq</th><th>Kind</th><th>Period</th><th>What</th>'
            f"<th>Evidence</th></tr>{rows}</table>")


def _record_detections(frame: Frame, found: list[StoredDetection]) -> str:
    if not found:
        return ""
    items = "".join(f"<li><b>{e(d.kind)}</b> at seq {d.seq}: {e(d.message)} (evidence {evidence_link(frame, d.evidence)})"
                    "</li>" for d in found)
    return f'<h2>Detections</h2><ul class="detections">{items}</ul>'


# --- one period ---------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodPage:
    rid: str
    provider: str
    period: str
    bill: Bill | None  # None: the copy failed verification (``failure`` says why)
    failure: str | None
    indexes: dict[int, int]  # seq -> log index
    invoice_error: str | None = None
    invoice_name: str | None = None


def period(frame: Frame, page: PeriodPage) -> str:
    crumbs = [(page.provider, rel_url(page.rid)), (page.period, period_url(page.rid, page.period))]
    title = f"{page.provider} · {page.period}"
    if page.bill is None:
        body = (f"<h1>{e(title)}</h1><div id=\"verdict\" class=\"verdict\" data-verdict=\"failed\">The verified copy "
                f"of this relationship fails verification: {e(page.failure or '')}</div>")
        return layout(frame, title, body, crumbs)
    bill = page.bill
    parts = [f"<h1>{e(title)}</h1>", _status(bill), _invoice_form(frame, page), _check(page),
             f"<h2>Totals per meter and dimensions</h2>{_totals(bill)}",
             f"<h2>Usage over time</h2>{usage_chart(samples(bill), bill.period)}",
             findings_html(bill), _records(page), _downloads(page), f"<h2>Evidence</h2>{close_html(bill.close)}"]
    return layout(frame, title, "".join(parts), crumbs)


def _status(bill: Bill) -> str:
    state = "findings" if bill.findings else "closed" if bill.close is not None else "open"
    text = {"findings": f"The provider broke {len(bill.findings)} protocol rule(s) in this period: see the findings.",
            "closed": "Closed, and every record of it verified again just now from the copy.",
            "open": "Open: the provider has not closed this period yet, so its totals are not final."}[state]
    notes = "".join(f"<li>{e(x)}</li>" for x in bill.stopped)
    return (f'<p class="status" data-status="{state}"><span class="badge {state}">{STATES[state]}</span> {e(text)}</p>'
            + (f'<ul class="notes">{notes}</ul>' if notes else ""))


def _invoice_form(frame: Frame, page: PeriodPage) -> str:
    if page.bill is None or page.bill.close is None:
        return "<h2>Check an invoice</h2><p>An invoice can be checked once the period is closed.</p>"
    options = "".join(f'<option value="{f}">{f}</option>' for f in FORMATS)
    return f"""<h2>Check an invoice</h2>
<form id="invoice-form" class="invoice" method="post" enctype="multipart/form-data"
 action="{e(period_url(page.rid, page.period))}/invoice"><input type="hidden" name="{CSRF_FIELD}" value="{e(frame.csrf)}">
<label class="dropzone" id="dropzone">Drop the provider's invoice here, or choose it:
<input type="file" name="invoice" id="invoice-file" required></label>
<details><summary>Format, name mapping and price sheet (optional)</summary>
<label>Format <select name="invoice_format">{options}</select></label>
<label>Mapping file <input type="file" name="mapping" id="mapping-file"></label>
<label>Price sheet <input type="file" name="prices" id="prices-file"></label></details>
<button type="submit" id="check-invoice">Check the invoice</button></form>"""


def _check(page: PeriodPage) -> str:
    if page.invoice_error is not None:
        return f'<div id="invoice-error" class="error" role="alert">The invoice cannot be read: {e(page.invoice_error)}</div>'
    bill = page.bill
    if bill is None or not bill.invoice_checked:
        return ""
    name = f" <code>{e(page.invoice_name)}</code>" if page.invoice_name else ""
    return (f'<section id="invoice-check"><h2>The invoice{name} against the committed record</h2>'
            f"{verdict_html(bill)}"
            f"{lines_table(bill)}{invoice_notes(bill)}</section>")


def _totals(bill: Bill) -> str:
    lines = bill.totals if bill.close is not None else bill.running_totals()
    if not lines:
        return "<p>No usage in this period.</p>"
    caption = "as the provider's close states them, checked against its records" if bill.close is not None \
        else "summed from the records so far (not final)"
    rows = "".join(f"<tr><td>{e(x.meter)}</td><td>{e(dims_text(x.dimensions))}</td><td class=n>{e(x.quantity)}</td>"
                   f"<td>{e(x.unit)}</td></tr>" for x in lines)
    return (f'<table class="totals"><caption>{caption}</caption><tr><th>Meter</th><th>Dimensions</th>'
            f"<th>Quantity</th><th>Unit</th></tr>{rows}</table>")


def _records(page: PeriodPage) -> str:
    bill = page.bill
    assert bill is not None
    by_seq: dict[int, list[Usage]] = {}
    for u in bill.usage:
        by_seq.setdefault(u.seq, []).append(u)
    rows = [_record_row(page, seq, items) for seq, items in sorted(by_seq.items())]
    if bill.close is not None:
        c = bill.close
        rows.append(f'<tr><td><a href="{e(rel_url(page.rid))}/records/{c.seq}">{c.seq}</a></td><td>close</td><td></td>'
                    f"<td>{c.record_count} records, seq {c.first_seq}–{c.last_seq}</td><td class=n>{c.index}</td></tr>")
    return (f'<h2>Records</h2><table class="records"><tr><th>Seq</th><th>Kind</th><th>Window (UTC)</th><th>Lines</th>'
            f"<th>Log index</th></tr>{''.join(rows)}</table>")


def _record_row(page: PeriodPage, seq: int, items: list[Usage]) -> str:
    window = f"{items[0].start} – {items[0].end}"
    lines = "; ".join(f"{u.line.meter} {u.line.quantity} {u.line.unit}"
                      + (f" ({dims_text(u.line.dimensions)})" if u.line.dimensions else "") for u in items)
    return (f'<tr><td><a href="{e(rel_url(page.rid))}/records/{seq}">{seq}</a></td><td>usage</td><td>{e(window)}</td>'
            f"<td>{e(lines)}</td><td class=n>{page.indexes.get(seq, '')}</td></tr>")


def _downloads(page: PeriodPage) -> str:
    base = e(period_url(page.rid, page.period))
    bundle = f'<li><a id="download-evidence" href="{base}/evidence.json">the evidence bundle</a> (for an auditor: ' \
             f'the period\'s records and proofs, opened by <code>verifier.html</code>)</li>' \
        if page.bill is not None and page.bill.close is not None else ""
    return (f'<h2>Downloads</h2><ul class="downloads"><li><a id="download-report" href="{base}/report.html">the HTML '
            f'report</a></li><li><a id="download-csv" href="{base}/bill.csv">the CSV</a></li>{bundle}</ul>')


# --- one record ---------------------------------------------------------------------


def record(frame: Frame, provider: str, view: RecordView) -> str:
    c, body = view.copy, view.body
    rid = c.relationship
    crumbs = [(provider, rel_url(rid)), (f"seq {c.seq}", f"{rel_url(rid)}/records/{c.seq}")]
    checks = (f'<p class="proof" data-verified="{str(view.proof_ok and view.signature_ok).lower()}">'
              + ("✓ Checked again just now: the record is in the log at index "
                 f"{c.index} under the checkpoint of size {view.checkpoint.size}, signed by the log at "
                 f"{when(float(view.checkpoint.timestamp))} (the pinned log key verified its signature), and the "
                 "provider's signature over its body verifies." if not view.problems else
                 "✗ " + e("; ".join(view.problems))) + "</p>")
    parts = [f"<h1>Record {c.seq} of <code>{e(rid)}</code></h1>", checks, _fields(view), _body_lines(body),
             "<h2>Receipt</h2><p>Verifiable offline with <code>pacspace receipt verify</code>:</p>"
             f'<pre class="receipt">{e(view.receipt)}</pre>']
    return layout(frame, f"{rid} seq {c.seq}", "".join(parts), crumbs)


def _fields(view: RecordView) -> str:
    body, c = view.body, view.copy
    rows = [("Kind", body.kind), ("Seq", str(c.seq)), ("Log index", str(c.index)),
            ("Created at", body.common.created_at), ("Record id", body.common.record_id),
            ("Previous record's hash", body.common.prev), ("This record's hash", view.body_hash)]
    if isinstance(body, Delta):
        rows[1:1] = [("Period", body.period), ("Window (UTC)", f"{body.window_start} – {body.window_end}")]
        if body.corrects is not None:
            rows.append(("Corrects seq", str(body.corrects)))
    elif isinstance(body, Close):
        rows[1:1] = [("Period", body.period), ("Covers", f"seq {body.first_seq}–{body.last_seq} "
                                                        f"({body.record_count} records)")]
    elif isinstance(body, Genesis):
        rows.append(("Parties", f"{body.provider.name} (provider), {body.customer.name} (customer)"))
    cells = "".join(f"<tr><th>{e(k)}</th><td><code>{e(v)}</code></td></tr>" for k, v in rows)
    return f'<table class="fields">{cells}</table>'


def _body_lines(body: object) -> str:
    lines = body.lines if isinstance(body, Delta) else body.totals if isinstance(body, Close) else ()
    if not lines:
        return ""
    rows = "".join(f"<tr><td>{e(x.meter)}</td><td>{e(dims_text(x.dimensions))}</td><td class=n>{e(x.quantity)}</td>"
                   f"<td>{e(x.unit)}</td><td>{'late' if x.late else ''}</td></tr>" for x in lines)
    title = "Totals" if isinstance(body, Close) else "Lines"
    return (f'<h2>{title}</h2><table class="lines"><tr><th>Meter</th><th>Dimensions</th><th>Quantity</th><th>Unit</th>'
            f"<th></th></tr>{rows}</table>")


# --- sign-in and errors -----------------------------------------------------------------


def login(csrf: str, failed: bool) -> str:
    note = '<p class="error" role="alert">That is not the console\'s token.</p>' if failed else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · pacspace console</title>
<link rel="stylesheet" href="/static/console.css"></head><body><main class="login"><h1>pacspace console</h1>{note}
<form method="post" action="/login"><input type="hidden" name="{CSRF_FIELD}" value="{e(csrf)}">
<label>Access token <input type="password" name="token" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form></main></body></html>
"""


def error(status: int, message: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{status} · pacspace console</title>
<link rel="stylesheet" href="/static/console.css"></head><body><main><h1>{status}</h1>
<p class="error" role="alert">{e(message)}</p><p><a href="/">Back to the relationships</a></p></main></body></html>
"""
