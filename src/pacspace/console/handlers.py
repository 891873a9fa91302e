"""The console's routes: pages read from the verified copy, the invoice check, downloads, invitations, the poll.

Pages answer HTML; routes under /api/ answer JSON, errors included
({"error": code, "message": ...}, app.py).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from ..client.bill import BillIncomplete, BillError, compare, render_csv, verify_bill
from ..client.consent import accept, decline
from ..client.evidence import dumps, export_bundle
from ..client.invoice_mapping import load_mapping
from ..client.invoices import read_invoice
from ..client.prices import load_prices
from ..client.report import render_html
from ..errors import MalformedInput, NotFound, PacspaceError
from ..records.body import _ID, _PERIOD
from . import overview, pages
from .security import COOKIE, Refused
from .state import CONSOLE, Check, Console

_EVIDENCE_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}\.json")
_STATIC = Path(__file__).parent / "static"
_STATIC_TYPES = {"console.js": "text/javascript", "console.css": "text/css"}


def _console(request: web.Request) -> Console:
    return request.app[CONSOLE]


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _frame(console: Console) -> pages.Frame:
    config = console.config
    return pages.Frame(config.access.csrf, console.poller.status, config.server.url if config.server else None,
                       config.home.path / "evidence", console.take_flash())


def _rid_period(request: web.Request) -> tuple[str, str]:
    rid, period = request.match_info["rid"], request.match_info.get("period", "")
    if period and not _PERIOD.fullmatch(period):
        raise MalformedInput(f"{period!r} is not a billing period (YYYY-MM)")
    if _console(request).state.relationship(rid) is None:
        raise NotFound(f"the verified copy holds no relationship {rid}")
    return rid, period


def _download(body: str, name: str, content_type: str) -> web.Response:
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", name)
    return web.Response(text=body, content_type=content_type, charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{safe}"'})


# --- pages -----------------------------------------------------------------------------


async def home_page(request: web.Request) -> web.Response:
    console = _console(request)
    state, log_key = console.state, console.config.log_key
    views = overview.relationships(state)
    return _html(pages.overview(_frame(console), overview.checkpoint_view(state, log_key), views, state.detections("")))


async def relationship_page(request: web.Request) -> web.Response:
    rid, _ = _rid_period(request)
    console = _console(request)
    return _html(pages.relationship(_frame(console), overview.relationship_view(console.state, rid)))


async def period_page(request: web.Request) -> web.Response:
    rid, period = _rid_period(request)
    console = _console(request)
    return _html(pages.period(_frame(console), _period(console, rid, period, console.checks.get((rid, period)))))


async def record_page(request: web.Request) -> web.Response:
    rid, _ = _rid_period(request)
    console = _console(request)
    seq = request.match_info["seq"]
    if not seq.isdigit() or len(seq) > 19:
        raise MalformedInput(f"{seq!r} is not a seq")
    view = overview.record_view(console.state, console.config.log_key, rid, int(seq))
    followed = console.state.relationship(rid)
    return _html(pages.record(_frame(console), followed.provider if followed else "", view))


def _period(console: Console, rid: str, period: str, check: Check | None = None,
            invoice_error: str | None = None) -> pages.PeriodPage:
    followed = console.state.relationship(rid)
    provider = followed.provider if followed else ""
    indexes = {c.seq: c.index for c in console.state.copies(rid)}
    try:
        bill = verify_bill(console.state, console.config.log_key, rid, period)
    except BillIncomplete as exc:
        raise NotFound(str(exc)) from None
    except BillError as exc:
        return pages.PeriodPage(rid, provider, period, None, str(exc), indexes)
    if check is not None and bill.close is not None:
        compare(bill, check.invoice, check.prices)
    return pages.PeriodPage(rid, provider, period, bill, None, indexes, invoice_error,
                            check.name if check is not None else None)


# --- the invoice check ---------------------------------------------------------------


async def check_invoice_page(request: web.Request) -> web.Response:
    rid, period = _rid_period(request)
    console = _console(request)
    try:
        check = await _check_of(console, request, rid, period)
        page = _period(console, rid, period, check)
    except MalformedInput as exc:
        return _html(pages.period(_frame(console), _period(console, rid, period, invoice_error=str(exc))), 400)
    console.checks[(rid, period)] = check
    return _html(pages.period(_frame(console), page))


async def check_invoice_api(request: web.Request) -> web.Response:
    rid, period = _rid_period(request)
    console = _console(request)
    check = await _check_of(console, request, rid, period)
    page = _period(console, rid, period, check)
    if page.bill is None:
        raise BillError(page.failure or "the verified copy fails verification")
    return web.json_response(page.bill.to_json())


async def _check_of(console: Console, request: web.Request, rid: str, period: str) -> Check:
    """The invoice (and mapping, price sheet) of a multipart form: ``invoice``, ``invoice_format``, ``mapping``,
    ``prices``. Without a mapping or price sheet in the form, those the console was started with apply."""
    form = await request.post()
    text, name = _upload(form.get("invoice"), "the invoice")
    if text is None:
        raise MalformedInput("choose the invoice file to check")
    mapping_text, _ = _upload(form.get("mapping"), "the mapping file")
    prices_text, _ = _upload(form.get("prices"), "the price sheet")
    fmt = str(form.get("invoice_format") or "auto")

    def read() -> Check:
        mapping = load_mapping(mapping_text) if mapping_text is not None else console.config.mapping
        prices = load_prices(prices_text) if prices_text is not None else console.config.prices
        return Check(read_invoice(text, fmt, rid, period, mapping), prices, name)

    # Reading an invoice of up to 32 MiB takes a while: in a thread, so that the pages and the poll go on meanwhile.
    return await asyncio.to_thread(read)


def _upload(field: Any, what: str) -> tuple[str | None, str]:
    """A form's file as text, with its name; (None, "") for a file input left empty."""
    if isinstance(field, web.FileField):
        data, name = field.file.read(), field.filename
    elif isinstance(field, (bytes, bytearray, str)):
        data, name = field.encode() if isinstance(field, str) else bytes(field), what
    else:
        return None, ""
    if not data:
        return None, ""
    try:
        return data.decode("utf-8-sig"), name
    except UnicodeDecodeError:
        raise MalformedInput(f"{what} {name} is not UTF-8 text") from None


# --- downloads ------------------------------------------------------------------------


def _checked_bill(console: Console, rid: str, period: str) -> Any:
    page = _period(console, rid, period, console.checks.get((rid, period)))
    if page.bill is None:
        raise BillError(page.failure or "the verified copy fails verification")
    return page.bill


async def report_download(request: web.Request) -> web.Response:
    rid, period = _rid_period(request)
    bill = _checked_bill(_console(request), rid, period)
    return _download(render_html(bill), f"pacspace-{rid}-{period}.html", "text/html")


async def csv_download(request: web.Request) -> web.Response:
    rid, period = _rid_period(request)
    bill = _checked_bill(_console(request), rid, period)
    return _download(render_csv(bill), f"pacspace-{rid}-{period}.csv", "text/csv")


async def evidence_download(request: web.Request) -> web.Response:
    rid, period = _rid_period(request)
    console = _console(request)
    bundle = export_bundle(console.state, console.config.log_key, rid, period)
    return _download(dumps(bundle), f"pacspace-{rid}-{period}.evidence.json", "application/json")


async def evidence_file(request: web.Request) -> web.Response:
    """A detection's or finding's evidence file, from PACSPACE_HOME/evidence/ and nowhere else."""
    name = request.match_info["name"]
    folder = _console(request).config.home.path / "evidence"
    path = folder / name
    if not _EVIDENCE_NAME.fullmatch(name) or not path.is_file():
        raise NotFound(f"no evidence file {name}")
    return web.Response(body=path.read_bytes(), content_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC_TYPES:
        raise NotFound(f"no file {name}")
    return web.Response(body=(_STATIC / name).read_bytes(), content_type=_STATIC_TYPES[name])


# --- invitations and the poll --------------------------------------------------------------


def _invitation(request: web.Request) -> str:
    rid = request.match_info["rid"]
    if not _ID.fullmatch(rid):
        raise MalformedInput(f"{rid!r} is not a relationship id")
    return rid


async def accept_invitation(request: web.Request) -> web.Response:
    console, rid = _console(request), _invitation(request)
    fingerprint = str((await request.post()).get("fingerprint") or "")
    await _answer(console, rid, lambda client: accept(client, console.config.home, rid, console.config.log_key,
                                                      fingerprint or None),
                  f"Accepted {rid}: a poll verifies it from its genesis record now.")
    return redirect("/")


async def decline_invitation(request: web.Request) -> web.Response:
    console, rid = _console(request), _invitation(request)
    await _answer(console, rid, lambda client: decline(client, rid), f"Declined {rid}.")
    return redirect("/")


async def _answer(console: Console, rid: str, act: Any, done: str) -> None:
    """Accept or decline through the log server; the outcome (or why not) is the next page's message."""
    server = console.config.server
    if server is None:
        console.flash = "The console cannot answer invitations: PACSPACE_TOKEN was not set when it started."
        return
    try:
        async with server.client() as client:
            await act(client)
    except PacspaceError as exc:
        console.flash = f"{rid}: not done: {exc}"
        return
    console.flash = done
    status = console.poller.status
    status.invitations = [i for i in status.invitations or [] if i.relationship != rid]
    console.poller.request()


async def poll_form(request: web.Request) -> web.Response:
    _console(request).poller.request()
    return redirect("/")


async def poll_status(request: web.Request) -> web.Response:
    return web.json_response(_console(request).poller.status.to_json())


async def poll_start(request: web.Request) -> web.Response:
    console = _console(request)
    if console.config.server is None:
        raise Refused("this console does not poll: PACSPACE_TOKEN was not set when it started")
    started = console.poller.request()
    await asyncio.sleep(0)  # let the poller mark itself running before the answer goes out
    return web.json_response({"started": started, **console.poller.status.to_json()}, status=202 if started else 200)


async def bill_api(request: web.Request) -> web.Response:
    rid, period = _rid_period(request)
    return web.json_response(_checked_bill(_console(request), rid, period).to_json())


# --- sign-in ------------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    access = _console(request).config.access
    if access.token is None:
        return redirect("/")
    return _html(pages.login(access.csrf, failed=False))


async def login(request: web.Request) -> web.Response:
    access = _console(request).config.access
    given = str((await request.post()).get("token") or "")
    if not access.token_ok(given):
        await asyncio.sleep(0.5)  # a guess costs time; tokens are long enough that guessing is hopeless anyway
        return _html(pages.login(access.csrf, failed=True), 401)
    response = redirect("/")
    response.set_cookie(COOKIE, access.session, httponly=True, samesite="Strict", path="/")
    return response
