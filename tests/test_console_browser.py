"""The finance person's walkthrough in headless Chromium, against real processes: `pacspace serve`, the parties'
commands, and `pacspace ui` on the customer's home.

The provider records a month and closes it, and invites the customer to a second relationship. In the console
the customer accepts that invitation, reads the period (status, totals, chart, records), drops the provider's
Stripe invoice and sees it confirmed, then a differing one and sees the line that differs, opens a record's proof,
polls with progress, downloads the evidence bundle and, with the log server gone, still sees what was verified.
The bundle then goes to verifier.html, which shows the same totals. The tests run in this order, on one world.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from billing_scenario import HOSTILE_MODEL, IN, OUT, PERIOD, REQ, TOTALS, fixture, lines_files
from browser import reloaded, wait_for
from helpers import World, cli, free_port
from selenium.webdriver.common.by import By

from pacspace.client.chart import LEFT, RIGHT, WIDTH


# The steps share one world and follow one another: one test process runs them all, in order (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("console_browser")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console-world")
    world = World(tmp)
    world.start()
    acme, bob = world.party("acme", "provider"), world.party("bob", "customer")
    rid = cli("relationship", "create", "--customer", "bob", "--cadence", "hourly", env=acme).stdout.strip()
    fingerprint = cli("keys", "show", env=acme).stdout.strip()
    cli("relationship", "accept", rid, "--provider-key", fingerprint, env=bob)
    for window, path in lines_files(tmp):
        cli("record", "--relationship", rid, "--lines", str(path), "--period", PERIOD, "--window", window, env=acme)
    cli("close", "--relationship", rid, "--period", PERIOD, env=acme)
    invited = cli("relationship", "create", "--customer", "bob", env=acme).stdout.strip()
    port = free_port()
    # The finance person's console: the provider's names mapped, its price sheet known, no background polls.
    ui = subprocess.Popen([sys.executable, "-m", "pacspace", "ui", "--port", str(port), "--interval", "3600",
                           "--mapping", str(fixture("stripe-mapping.json")), "--prices", str(fixture("prices.json"))],
                          env=bob, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    _wait_for_first_poll(url)
    yield type("Scene", (), {"world": world, "rid": rid, "invited": invited, "fingerprint": fingerprint, "url": url,
                             "tmp": tmp, "bob": bob})()
    ui.terminate()
    ui.wait(timeout=30)
    world.stop()


def _wait_for_first_poll(url: str) -> None:
    import time

    for _ in range(400):
        try:
            status = json.loads(urllib.request.urlopen(url + "/api/poll", timeout=2).read())
            if status["ok"] is not None and not status["running"]:
                assert status["ok"], status["message"]
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("the console's first poll did not finish")


def go(browser, url: str) -> None:
    """Open a page, and wait while a poll runs: the page reloads itself when it ends."""
    browser.get(url)
    wait_for(browser, lambda b: b.execute_script(
        "const poll = document.getElementById('poll');"
        "return document.readyState === 'complete' && (!poll || poll.dataset.running === 'false')"), f"{url} did not load")


def no_injection(browser) -> None:
    """The hostile dimension value is on the page as text, and made no element."""
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main b img")
    assert browser.execute_script("return document.body.textContent.includes(arguments[0])", HOSTILE_MODEL)


def test_accepting_an_invitation_from_the_console(browser, scene, screenshots):
    go(browser, scene.url + "/")
    invitation = browser.find_element(By.CSS_SELECTOR, f'.invitation[data-relationship="{scene.invited}"]')
    assert invitation.find_element(By.CSS_SELECTOR, "code.fingerprint").text == scene.fingerprint
    assert browser.find_element(By.CSS_SELECTOR, f'section.relationship[data-relationship="{scene.rid}"]')
    assert "Last verified checkpoint" in browser.find_element(By.CSS_SELECTOR, "p.checkpoint").text
    screenshots.take(browser, "console-01-relationships")
    invitation.find_element(By.CSS_SELECTOR, "button.accept").click()
    wait_for(browser, lambda b: "Accepted" in b.find_element(By.CSS_SELECTOR, ".flash").text, "no confirmation")

    def followed(b) -> bool:  # the accept starts a poll; the page shows the relationship once it is verified
        go(b, scene.url + "/")
        return bool(b.find_elements(By.CSS_SELECTOR, f'section.relationship[data-relationship="{scene.invited}"]'))

    wait_for(browser, followed, "the accepted relationship was not verified")
    assert not browser.find_elements(By.CSS_SELECTOR, ".invitation")
    screenshots.take(browser, "console-02-accepted")


def test_the_period_page_totals_chart_and_a_records_proof(browser, scene, screenshots):
    go(browser, f"{scene.url}/r/{scene.rid}/p/{PERIOD}")
    assert browser.find_element(By.CSS_SELECTOR, "p.status").get_attribute("data-status") == "closed"
    rows = [tuple(td.text for td in tr.find_elements(By.TAG_NAME, "td"))
            for tr in browser.find_elements(By.CSS_SELECTOR, "table.totals tr") if tr.find_elements(By.TAG_NAME, "td")]
    assert (OUT, "model=m-1", TOTALS[(OUT, "m-1")], "token") in rows and (REQ, "", TOTALS[(REQ, None)], "request") in rows
    panels = browser.find_elements(By.CSS_SELECTOR, "svg.chart g.panel")
    assert sorted((p.get_attribute("data-meter"), p.get_attribute("data-unit")) for p in panels) == [
        (IN, "token"), (OUT, "token"), (REQ, "request")]
    # A real time axis: the window of November 15, 12:00-13:00 sits just past the middle of the month.
    dots = browser.execute_script("""
        const panel = document.querySelector('g.panel[data-meter="llm.requests"]');
        return Array.from(panel.querySelectorAll('circle'), c => Number(c.getAttribute('cx')));""")
    fractions = [(x - LEFT) / (WIDTH - LEFT - RIGHT) for x in dots]
    assert [round(f * 30, 1) for f in fractions] == [1.0, 8.0, 14.5]  # days since Nov 1, at each window's middle
    no_injection(browser)
    screenshots.take(browser, "console-03-period")
    reloaded(browser, lambda: browser.find_element(By.CSS_SELECTOR, 'table.records a[href$="/records/2"]').click())
    proof = browser.find_element(By.CSS_SELECTOR, "p.proof")
    assert proof.get_attribute("data-verified") == "true" and "Checked again just now" in proof.text
    assert "c2sp.org/tlog-proof@v1" in browser.find_element(By.CSS_SELECTOR, "pre.receipt").text
    assert "2026-11-09T00:00:00Z – 2026-11-09T01:00:00Z" in browser.find_element(By.CSS_SELECTOR, "table.fields").text
    screenshots.take(browser, "console-04-record")


def _drop(browser, path: Path) -> None:
    """Drop a file on the drop zone, as a person drags it from their desktop."""
    browser.execute_script("""
        const [name, text] = arguments;
        const data = new DataTransfer();
        data.items.add(new File([text], name, {type: "application/json"}));
        document.getElementById("dropzone").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
    """, path.name, path.read_text())


def test_a_stripe_invoice_that_matches_and_one_that_differs(browser, scene, screenshots):
    go(browser, f"{scene.url}/r/{scene.rid}/p/{PERIOD}")
    # Each check is a form's POST: the verdict is read once the page it leads to has loaded, not while it loads.
    reloaded(browser, lambda: _drop(browser, fixture("stripe-invoice.json")))
    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.get_attribute("data-verdict") == "match", verdict.text
    lines = browser.find_elements(By.CSS_SELECTOR, "#invoice-check tr[data-matches]")
    assert len(lines) == 4 and all(tr.get_attribute("data-matches") == "true" for tr in lines)
    assert "il_1QbobBase" in browser.find_element(By.CSS_SELECTOR, "#invoice-check ul.notes").text  # the base fee, shown
    no_injection(browser)
    screenshots.take(browser, "console-05-invoice-match")
    go(browser, f"{scene.url}/r/{scene.rid}/p/{PERIOD}")
    browser.find_element(By.ID, "invoice-file").send_keys(str(fixture("stripe-invoice-differs.json")))
    reloaded(browser, lambda: browser.find_element(By.ID, "check-invoice").click())
    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.get_attribute("data-verdict") == "differs"
    differing = browser.find_elements(By.CSS_SELECTOR, '#invoice-check tr[data-matches="false"]')
    assert len(differing) == 1
    cells = [td.text for td in differing[0].find_elements(By.TAG_NAME, "td")]
    assert cells[:5] == [OUT, "model=m-1", "token", "2500000", "2600000"] and "quantity differs" in cells[-1]
    assert "50" in cells and "52" in cells  # what the committed quantity costs, and what was invoiced
    screenshots.take(browser, "console-06-invoice-differs")


def test_the_poll_button_shows_progress_and_the_console_survives_the_server(browser, scene, screenshots, tmp_path):
    go(browser, f"{scene.url}/r/{scene.rid}/p/{PERIOD}")
    # The page reloads once the poll it started has finished, showing what it found.
    reloaded(browser, lambda: browser.find_element(By.ID, "poll-now").click())
    assert browser.find_element(By.ID, "poll").get_attribute("data-state") == "ok"
    assert "new records verified" in browser.find_element(By.ID, "poll-text").text
    # The evidence bundle, downloaded as the browser would, and checked by the command line.
    bundle = tmp_path / "2026-11.evidence.json"
    bundle.write_bytes(urllib.request.urlopen(f"{scene.url}/r/{scene.rid}/p/{PERIOD}/evidence.json", timeout=10).read())
    vkey = Path(scene.bob["PACSPACE_HOME"], "log.vkey").read_text().strip()
    checked = cli("evidence", "verify", str(bundle), "--log-key", vkey, env=scene.bob)
    assert checked.stdout.startswith("ok:")
    scene.bundle, scene.vkey = bundle, vkey
    scene.world.stop()
    reloaded(browser, lambda: browser.find_element(By.ID, "poll-now").click())
    assert browser.find_element(By.ID, "poll").get_attribute("data-state") == "failed"
    assert "cannot reach" in browser.find_element(By.ID, "poll-text").text
    assert browser.find_element(By.CSS_SELECTOR, "p.status").get_attribute("data-status") == "closed"
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart g.panel")
    screenshots.take(browser, "console-07-server-down")


def test_the_auditor_sees_the_same_totals_in_verifier_html(browser, scene, screenshots, tmp_path):
    page = tmp_path / "verifier.html"
    written = cli("verifier", "--out", str(page), env={**os.environ})
    assert re.fullmatch(r"[0-9a-f]{64}  .*verifier\.html\n", written.stdout)
    go(browser, page.as_uri())
    browser.find_element(By.ID, "vkey").send_keys(scene.vkey)
    browser.find_element(By.ID, "bundle").send_keys(str(scene.bundle))
    wait_for(browser, lambda b: b.find_element(By.ID, "verdict").get_attribute("data-verdict") in ("ok", "failed"),
             "no verdict")
    assert browser.find_element(By.ID, "verdict").get_attribute("data-verdict") == "ok"
    shown = {(tds[0].text, tds[1].text, tds[2].text) for tds in
             (tr.find_elements(By.TAG_NAME, "td") for tr in browser.find_elements(By.CSS_SELECTOR, "#totals tbody tr"))}
    expected = {(m, "" if d is None else f"model={d}", q) for (m, d), q in TOTALS.items()}
    assert shown == expected
    screenshots.take(browser, "console-08-verifier-same-totals")
    flipped = json.loads(scene.bundle.read_text())
    import base64

    blob = bytearray(base64.b64decode(flipped["records"][0]["ciphertext"]))
    blob[100] ^= 0x80
    flipped["records"][0]["ciphertext"] = base64.b64encode(bytes(blob)).decode()
    path = tmp_path / "flipped.evidence.json"
    path.write_text(json.dumps(flipped))
    browser.find_element(By.ID, "bundle").send_keys(str(path))
    wait_for(browser, lambda b: b.find_element(By.ID, "verdict").get_attribute("data-verdict") == "failed", "accepted")
    assert "not in the log" in browser.find_element(By.ID, "reason").text
