"""The console (`pacspace ui`) in process, against a real log server and a real verified copy: its pages, its
invoice check, its downloads, and who may use it. tests/test_console_browser.py drives it in a real browser."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time

import pytest
from billing_scenario import HOSTILE_MODEL, IN, OUT, PERIOD, REQ, fixture, month_world
from helpers import free_port

from pacspace.client.evidence import verify_bundle
from pacspace.console.app import create_console_app
from pacspace.console.poller import Server
from pacspace.console.security import CSP, Access
from pacspace.console.state import CONSOLE, ConsoleConfig
from pacspace.errors import MalformedInput
from pacspace.records.seal import RelationshipKeys


@pytest.fixture
async def world(aiohttp_client, tmp_path, log_database):
    """The month's world, its log and records on each backend (log_database: SQLite, then PostgreSQL)."""
    return await month_world(aiohttp_client, tmp_path, log_database)


# A test of the console's own handling (its forms, hosts, token, uploads and files; a server's answers rewritten or
# missing; a bug in a handler; here and in tests/test_console_hostile.py) reads nothing of the log's storage past the
# world's setup, which the tests that do read it run on PostgreSQL too: on SQLite only, to keep the PostgreSQL run short.
CONSOLE_ONLY = pytest.mark.parametrize("log_database", [None])


async def start(aiohttp_client, world, token=None, url=None, poll=True):
    server = Server(url or world.url, "tok-bob")
    config = ConsoleConfig(world.bob, world.bob.log_key(), Access.create("127.0.0.1", False, token), server, 3600)
    app = create_console_app(config, background=False)
    client = await aiohttp_client(app)
    if poll:
        await app[CONSOLE].poller.poll_once()
    return client, app[CONSOLE]


def csrf_of(page: str) -> str:
    return re.search(r'<meta name="csrf" content="([^"]+)">', page).group(1)


def verdict_of(page: str) -> str | None:
    found = re.search(r'id="verdict" class="verdict" data-verdict="([a-z]+)"', page)
    return found.group(1) if found else None


async def check(client, world, invoice, mapping=None, prices=None, fmt="auto", api=False):
    import aiohttp

    page = await (await client.get("/")).text()
    form = aiohttp.FormData()
    form.add_field("csrf", csrf_of(page))
    form.add_field("invoice_format", fmt)
    form.add_field("invoice", fixture(invoice).read_bytes() if isinstance(invoice, str) else invoice,
                   filename=invoice if isinstance(invoice, str) else "invoice.csv")
    for name, path in (("mapping", mapping), ("prices", prices)):
        form.add_field(name, fixture(path).read_bytes() if path else b"", filename=path or "")
    prefix = "/api" if api else ""
    return await client.post(f"{prefix}/r/{world.rid}/p/{PERIOD}/invoice", data=form)


async def test_pages_show_the_verified_copy_escaped_under_a_strict_policy(aiohttp_client, world):
    client, console = await start(aiohttp_client, world)
    assert console.poller.status.ok, console.poller.status.message
    home = await client.get("/")
    page = await home.text()
    assert home.headers["Content-Security-Policy"] == CSP and "script-src 'self'" in CSP and "unsafe" not in CSP
    assert home.headers["X-Frame-Options"] == "DENY" and home.headers["X-Content-Type-Options"] == "nosniff"
    assert world.rid in page and "closed and verified" in page and "Last verified checkpoint: tree size" in page
    # The invitation, with the provider's fingerprint to compare, and a way to accept or decline it.
    fingerprint = world.acme.keys().public.fingerprint()
    assert f'data-relationship="{world.invited}"' in page and fingerprint in page
    assert f'action="/invitations/{world.invited}/accept"' in page
    # No script but the console's own file, no inline handler, no style attribute.
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/console.js" defer>']
    assert not re.search(r"\son[a-z]+=", page) and " style=" not in page
    period = await (await client.get(f"/r/{world.rid}/p/{PERIOD}")).text()
    assert 'data-status="closed"' in period and "<svg" in period
    for meter, quantity, unit in ((OUT, "2500000", "token"), (IN, "10000000", "token"), (REQ, "4000", "request")):
        assert re.search(rf"<td>{re.escape(meter)}</td><td>[^<]*</td><td class=n>{quantity}</td><td>{unit}</td>", period)
    # The hostile dimension value is shown as text, never as markup.
    assert HOSTILE_MODEL not in period and "&lt;img src=x onerror=alert(1)&gt;" in period
    assert "<img" not in period
    # One panel per meter and unit, each with its own scale.
    assert re.findall(r'data-meter="([^"]+)" data-unit="([^"]+)" data-max="([^"]+)"', period) == [
        (IN, "token", "6000000"), (OUT, "token", "1234000"), (REQ, "request", "1500")]


async def test_a_record_drill_down_checks_its_proof_again(aiohttp_client, world):
    client, _ = await start(aiohttp_client, world)
    page = await (await client.get(f"/r/{world.rid}/records/2")).text()
    assert 'data-verified="true"' in page and "2026-11-09T00:00:00Z – 2026-11-09T01:00:00Z" in page
    assert "c2sp.org/tlog-proof@v1" in page and "Log index" in page
    # A stored proof that no longer leads to the signed root is shown as failing, not hidden.
    import sqlite3

    console_db = world.bob.path / "monitor.db"
    conn = sqlite3.connect(console_db)
    conn.execute("UPDATE records SET proof = zeroblob(length(proof)) WHERE seq = 2 AND length(proof) > 0")
    conn.commit()
    conn.close()
    broken = await (await client.get(f"/r/{world.rid}/records/2")).text()
    assert 'data-verified="false"' in broken and "inclusion proof does not verify" in broken
    period = await client.get(f"/r/{world.rid}/p/{PERIOD}")
    assert 'data-verdict="failed"' in await period.text()


FORMATS = [
    ("stripe-invoice.json", "stripe-mapping.json", "prices.json", "match"),
    ("stripe-invoice.json", "stripe-mapping.json", None, "match"),
    ("stripe-invoice-differs.json", "stripe-mapping.json", "prices.json", "differs"),
    ("stripe-invoice.json", None, None, "differs"),  # unmapped: the prices' ids name no meter
    ("lago-invoice.json", "lago-mapping.json", "prices.json", "match"),
    ("invoice.csv", None, "prices.json", "match"),
]


# Every format on SQLite; on PostgreSQL the first: each is read by the console and checked against the same
# verified copy of the log.
@pytest.mark.parametrize("log_database,invoice,mapping,prices,verdict",
                         [("sqlite", *f) for f in FORMATS] + [("postgres", *FORMATS[0])], indirect=["log_database"])
async def test_the_invoice_check_in_every_format(aiohttp_client, world, invoice, mapping, prices, verdict):
    client, console = await start(aiohttp_client, world)
    resp = await check(client, world, invoice, mapping, prices)
    page = await resp.text()
    assert resp.status == 200 and verdict_of(page) == verdict, page[:3000]
    assert "&lt;img src=x" in page and "<img" not in page
    if verdict == "differs" and mapping:
        assert page.count('data-matches="false"') == 1 and "quantity differs" in page
    # The check is kept for the downloads.
    report = await (await client.get(f"/r/{world.rid}/p/{PERIOD}/report.html")).text()
    assert f'data-verdict="{verdict}"' in report


@CONSOLE_ONLY
async def test_a_malformed_invoice_is_refused_with_a_reason_and_no_verdict(aiohttp_client, world):
    client, _ = await start(aiohttp_client, world)
    resp = await check(client, world, b"\x00\xffnot an invoice")
    page = await resp.text()
    assert resp.status == 400 and verdict_of(page) is None and 'id="invoice-error"' in page
    hostile = b'meter,quantity\n<script>alert(1)</script>,5\n'
    page = await (await check(client, world, hostile)).text()
    assert verdict_of(page) == "differs" and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page


@CONSOLE_ONLY
async def test_the_api_answers_json_and_json_errors(aiohttp_client, world):
    client, _ = await start(aiohttp_client, world)
    bill = await client.get(f"/api/r/{world.rid}/p/{PERIOD}")
    assert bill.status == 200 and (await bill.json())["outcome"] == "match"
    checked = await check(client, world, "stripe-invoice-differs.json", "stripe-mapping.json", "prices.json", api=True)
    body = await checked.json()
    assert body["outcome"] == "differs" and body["invoice"]["format"] == "stripe"
    assert [x["matches"] for x in body["lines"] if x["meter"] == OUT] == [True, False]
    for path, status, code in ((f"/api/r/nope:1/p/{PERIOD}", 404, "not_found"), (f"/api/r/{world.rid}/p/2026-13", 400,
                                                                                 "malformed"), ("/api/nothing", 404,
                                                                                                "not_found")):
        resp = await client.get(path)
        assert resp.status == status and resp.content_type == "application/json", path
        assert (await resp.json())["error"] == code
    refused = await client.post("/api/poll")
    assert refused.status == 403 and (await refused.json())["error"] == "forbidden"


@CONSOLE_ONLY
async def test_forms_need_the_csrf_token_and_the_consoles_own_origin(aiohttp_client, world):
    client, console = await start(aiohttp_client, world)
    csrf = csrf_of(await (await client.get("/")).text())
    target = f"/invitations/{world.invited}/accept"
    assert (await client.post(target, data={"fingerprint": "x"}, allow_redirects=False)).status == 403
    evil = await client.post(target, data={"csrf": csrf}, headers={"Origin": "https://evil.example"},
                             allow_redirects=False)
    assert evil.status == 403
    assert console.state.relationship(world.invited) is None


@CONSOLE_ONLY
async def test_a_page_that_rebinds_its_name_to_loopback_gets_nothing(aiohttp_client, world):
    client, _ = await start(aiohttp_client, world)
    for host in ("evil.example", "evil.example:8070", "192.0.2.1"):
        resp = await client.get("/", headers={"Host": host})
        assert resp.status == 403 and world.rid not in await resp.text(), host
    assert (await client.get("/", headers={"Host": "localhost:8070"})).status == 200


@CONSOLE_ONLY
async def test_with_a_token_every_page_needs_it(aiohttp_client, world):
    token = "s3cret-console-token-0123456789"
    client, _ = await start(aiohttp_client, world, token=token)
    redirected = await client.get("/", allow_redirects=False)
    assert redirected.status == 303 and redirected.headers["Location"] == "/login"
    assert (await client.get(f"/api/r/{world.rid}/p/{PERIOD}")).status == 401
    assert (await client.get(f"/r/{world.rid}/p/{PERIOD}/evidence.json", allow_redirects=False)).status == 303
    assert (await client.get("/", headers={"Authorization": f"Bearer {token}"})).status == 200
    login = await (await client.get("/login")).text()
    wrong = await client.post("/login", data={"csrf": csrf_of_login(login), "token": "guess-guess-guess-guess"})
    assert wrong.status == 401 and "pacspace_console" not in wrong.cookies
    right = await client.post("/login", data={"csrf": csrf_of_login(login), "token": token}, allow_redirects=False)
    cookie = right.headers["Set-Cookie"]
    assert right.status == 303 and "HttpOnly" in cookie and "SameSite=Strict" in cookie and token not in cookie
    assert world.rid in await (await client.get("/")).text()


def csrf_of_login(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_a_remote_console_needs_allow_remote_and_a_long_token():
    with pytest.raises(MalformedInput, match="--allow-remote"):
        Access.create("0.0.0.0", False, "x" * 20)
    with pytest.raises(MalformedInput, match="needs a token"):
        Access.create("192.0.2.7", True, None)
    with pytest.raises(MalformedInput, match="at least 16"):
        Access.create("192.0.2.7", True, "short")
    remote = Access.create("192.0.2.7", True, "x" * 20)
    assert not remote.loopback and remote.token_ok("x" * 20) and not remote.token_ok("x" * 19 + "y")
    assert Access.create("::1", False, None).loopback and Access.create("localhost", False, None).loopback


async def test_accepting_an_invitation_from_the_console(aiohttp_client, world):
    client, console = await start(aiohttp_client, world)
    csrf = csrf_of(await (await client.get("/")).text())
    fingerprint = world.acme.keys().public.fingerprint()
    done = await client.post(f"/invitations/{world.invited}/accept", data={"csrf": csrf, "fingerprint": fingerprint},
                             allow_redirects=False)
    assert done.status == 303
    await console.poller.poll_once()
    assert console.state.relationship(world.invited) is not None
    page = await (await client.get("/")).text()
    assert f'data-relationship="{world.invited}"' in page and "Invitations</h2><p>None waiting." in page


async def test_a_wrong_fingerprint_accepts_nothing_and_says_why(aiohttp_client, world):
    client, console = await start(aiohttp_client, world)
    csrf = csrf_of(await (await client.get("/")).text())
    other = "0" * 64
    shown = await client.post(f"/invitations/{world.invited}/accept", data={"csrf": csrf, "fingerprint": other})
    assert "not accepted" in await shown.text()
    await console.poller.poll_once()
    assert console.state.relationship(world.invited) is None
    assert [i.relationship for i in console.poller.status.invitations] == [world.invited]


@CONSOLE_ONLY
async def test_with_the_server_down_the_console_shows_what_was_verified(aiohttp_client, world):
    await start(aiohttp_client, world)
    # The same copy, now with a server that is not there.
    down = f"http://127.0.0.1:{free_port()}"
    client2, console2 = await start(aiohttp_client, world, url=down, poll=False)
    await console2.poller.poll_once()
    status = console2.poller.status
    assert status.ok is False and "cannot reach" in status.message
    page = await (await client2.get(f"/r/{world.rid}/p/{PERIOD}")).text()
    assert 'data-status="closed"' in page and 'data-state="failed"' in page and "cannot reach" in page
    state = await (await client2.get("/api/poll")).json()
    assert state["running"] is False and state["ok"] is False


async def test_downloads_carry_no_secret_and_the_bundle_verifies(aiohttp_client, world):
    client, _ = await start(aiohttp_client, world)
    resp = await client.get(f"/r/{world.rid}/p/{PERIOD}/evidence.json")
    assert resp.headers["Content-Disposition"].startswith("attachment;")
    text = await resp.text()
    keys = world.view.keys
    assert isinstance(keys, RelationshipKeys)
    for secret in (keys.secret, keys.tag_key):
        assert base64.b64encode(secret).decode() not in text and secret.hex() not in text
    bundle = json.loads(text)
    assert bundle["log_vkey"] == world.bob.log_key().vkey()
    verified = verify_bundle(bundle, world.bob.log_key())
    assert {(t.meter, t.quantity) for t in verified.totals} >= {(OUT, "2500000"), (REQ, "4000")}
    report = await (await client.get(f"/r/{world.rid}/p/{PERIOD}/report.html")).text()
    assert "Content-Security-Policy" in report and 'data-verdict="match"' in report and "<script" not in report


@CONSOLE_ONLY
async def test_the_csv_is_safe_to_open_in_a_spreadsheet(aiohttp_client, world):
    client, _ = await start(aiohttp_client, world)
    hostile = b"meter,dimensions,quantity\nllm.requests,model==HYPERLINK(\"x\");,1\n=cmd|' /C calc'!A0,,2\n"
    await check(client, world, hostile)
    text = await (await client.get(f"/r/{world.rid}/p/{PERIOD}/bill.csv")).text()
    cells = [cell for line in text.splitlines()[1:] for cell in line.split(",")]
    assert any(c.startswith("'=cmd") for c in cells)
    assert not any(c.startswith(("=", "+", "@")) for c in cells)


@CONSOLE_ONLY
async def test_evidence_files_are_served_from_the_evidence_folder_only(aiohttp_client, world):
    client, _ = await start(aiohttp_client, world)
    folder = world.bob.path / "evidence"
    folder.mkdir(exist_ok=True)
    (folder / "20261201T000000Z-bad_tag.json").write_text('{"kind": "bad_tag"}')
    served = await client.get("/evidence/20261201T000000Z-bad_tag.json")
    assert served.status == 200 and (await served.json())["kind"] == "bad_tag"
    for name in ("..%2Fmonitor.db", "..%2F..%2Fetc%2Fpasswd", "monitor.db", "missing.json"):
        assert (await client.get(f"/evidence/{name}")).status == 404, name


def test_ui_refuses_unsafe_settings_and_never_shows_its_token(tmp_path):
    """As a user runs it: a remote address without --allow-remote exits 2; the token is asked for, never printed."""
    from pacspace.client.home import Home

    home = Home(tmp_path / "home")
    home.create_keys()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pacspace.note import NoteSigner

    home.pin_log_key(NoteSigner("example.com/log", Ed25519PrivateKey.generate()).verifier.vkey())
    env = {"PACSPACE_HOME": str(home.path), "PATH": "/usr/bin:/bin", "PACSPACE_URL": f"http://127.0.0.1:{free_port()}"}
    refused = subprocess.run([sys.executable, "-m", "pacspace", "ui", "--host", "0.0.0.0"], capture_output=True,
                             text=True, env=env, timeout=60)
    assert refused.returncode == 2 and "--allow-remote" in refused.stderr
    token = "tok-" + "z" * 24
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pacspace", "ui", "--port", str(port)],
                            env={**env, "PACSPACE_UI_TOKEN": token}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        import urllib.error
        import urllib.request

        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/poll", timeout=5)
        assert denied.value.code == 401
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/poll", headers={"Authorization": f"Bearer {token}"})
        assert json.loads(urllib.request.urlopen(request, timeout=5).read())["ok"] is False  # no PACSPACE_TOKEN: no poll
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"console on http://127.0.0.1:{port}/" in err and token not in out + err


async def test_findings_and_detections_are_shown_with_their_evidence(aiohttp_client, world):
    """A provider appends usage to the closed month (a finding), then a record signed by another key (a detection)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pacspace.client.http import PacspaceClient
    from pacspace.records.body import Common, Delta, Line, body_hash
    from pacspace.records.seal import seal

    view, signer = world.view, world.acme.keys().ed25519
    head = view.head
    late = Delta(Common(world.rid, head.next_seq, head.head, "late", "2026-12-01T00:00:00Z"), PERIOD,
                 "2026-11-20T00:00:00Z", "2026-11-20T01:00:00Z", (Line(REQ, "request", "99"),))
    first = seal(late, view.keys, signer)
    forged = Delta(Common(world.rid, head.next_seq + 1, body_hash(first.body), "x", "2026-12-01T00:00:00Z"), "2026-12",
                   "2026-12-01T00:00:00Z", "2026-12-01T01:00:00Z", (Line(REQ, "request", "1"),))
    second = seal(forged, view.keys, Ed25519PrivateKey.generate())
    async with PacspaceClient(world.url, "tok-acme") as c:
        for sealed in (first, second):
            await c.append(world.rid, sealed.seq, sealed.tag, sealed.blob)
    client, console = await start(aiohttp_client, world)
    assert "1 detection(s)" in console.poller.status.message and "1 new finding(s)" in console.poller.status.message
    home = await (await client.get("/")).text()
    assert "1 finding(s), 1 detection(s)" in home and '<span class="badge findings">findings</span>' in home
    page = await (await client.get(f"/r/{world.rid}")).text()
    assert "usage_in_closed_period" in page and "bad_signature" in page
    links = re.findall(r'href="(/evidence/[^"]+)"', page)
    assert len(links) == 2
    for link in links:
        evidence = await (await client.get(link)).json()
        assert evidence["kind"] in ("usage_in_closed_period", "bad_signature")
    period = await (await client.get(f"/r/{world.rid}/p/{PERIOD}")).text()
    assert 'data-status="findings"' in period and "usage_in_closed_period" in period
    checked = await (await check(client, world, "stripe-invoice.json", "stripe-mapping.json")).text()
    assert verdict_of(checked) == "failed"  # a period whose provider broke a rule confirms no invoice
