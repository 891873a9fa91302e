"""verifier.html in headless Chromium: the same evidence-bundle vectors as the Python verifier, case by case, and
the page as an auditor uses it (choose the file, read the verdict)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from browser import wait_for
from selenium.webdriver.common.by import By

VECTORS = json.loads((Path(__file__).parent / "vectors" / "pacspace-evidence.json").read_text())
CASES = {case["name"]: case for case in VECTORS["cases"]}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """verifier.html as `pacspace verifier` writes it, with the SHA-256 it prints."""
    out = tmp_path_factory.mktemp("verifier") / "verifier.html"
    done = subprocess.run([sys.executable, "-m", "pacspace", "verifier", "--out", str(out)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out, done.stdout.split()[0]


def open_page(browser, page):
    browser.get(page[0].as_uri())
    wait_for(browser, lambda b: b.find_element(By.ID, "verdict").get_attribute("data-verdict") == "pending",
             "the page did not load")


def choose(browser, tmp_path, bundle, vkey, name="bundle.json"):
    """As an auditor does: paste the key (or not), choose the file; returns the verdict element once decided."""
    path = tmp_path / name
    path.write_text(json.dumps(bundle))
    field = browser.find_element(By.ID, "vkey")
    field.clear()
    if vkey:
        field.send_keys(vkey)
    browser.find_element(By.ID, "bundle").send_keys(str(path))
    wait_for(browser, lambda b: b.find_element(By.ID, "verdict").get_attribute("data-verdict") in ("ok", "failed"),
             "no verdict")
    return browser.find_element(By.ID, "verdict")


def test_the_page_is_self_contained_and_forbids_connections(page):
    html = page[0].read_text()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "connect-src 'none'" in policy and "default-src 'none'" in policy and "unsafe" not in policy
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+'", policy)
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html)  # nothing loaded from anywhere
    import hashlib

    assert hashlib.sha256(page[0].read_bytes()).hexdigest() == page[1]
    # The same bytes at every write: a copy's SHA-256 can be compared with the one given.
    again = page[0].with_name("again.html")
    subprocess.run([sys.executable, "-m", "pacspace", "verifier", "--out", str(again)], check=True, timeout=60,
                   capture_output=True)
    assert again.read_bytes() == page[0].read_bytes()


def verdict(case) -> str:
    return "ok" if case["valid"] else "findings" if case["findings"] else "failed"


def test_every_vector_gives_the_python_verifiers_answer(browser, page):
    open_page(browser, page)
    for case in VECTORS["cases"]:
        answer = browser.execute_async_script("""
            const [text, vkey, done] = arguments;
            window.pacspaceVerifier.check(text, vkey).then(
                (r) => done({ok: true, totals: r.totals, source: r.keySource, findings: r.findings}),
                (e) => done({ok: false, reason: String(e && e.message)}));""", json.dumps(case["bundle"]), case["vkey"] or "")
        said = "failed" if not answer["ok"] else "findings" if answer["findings"] else "ok"
        assert said == verdict(case), (case["name"], answer)
        if said == "findings":
            # The same findings, in the same words, as `pacspace evidence verify` prints.
            assert answer["findings"] == case["findings"], case["name"]
        if said == "ok":
            totals = sorted((t["meter"], json.dumps(t["dimensions"], sort_keys=True), t["quantity"], t["unit"])
                            for t in answer["totals"])
            expected = sorted((t["meter"], json.dumps(t["dimensions"], sort_keys=True), t["quantity"], t["unit"])
                              for t in VECTORS["expected_totals"])
            assert totals == expected, case["name"]
            assert answer["source"] == ("pasted" if case["vkey"] else "bundle")


def test_the_decimal_adder_is_exact(browser, page):
    open_page(browser, page)
    sums = browser.execute_script("""
        const add = window.pacspaceVerifier.addDecimals;
        return [add("0.1", "0.2"), add("1234.5", "-1234.5"), add("-0.75", "0.25"), add("99999999999999999999.99", "0.01"),
                add("1", "-1.000001")];""")
    assert sums == ["0.3", "0", "-0.5", "100000000000000000000", "-0.000001"]


@pytest.mark.parametrize("name", ["good", "one byte flipped in a ciphertext", "a checkpoint signed by another key",
                                  "a record left out of the range", "a forged log, checked with the key it names",
                                  "records that break every protocol rule", "a negative delta",
                                  "a signed delta with the same line twice"])
def test_an_auditor_chooses_a_bundle(browser, page, tmp_path, screenshots, name):
    open_page(browser, page)
    case = CASES[name]
    verdict_element = choose(browser, tmp_path, case["bundle"], case["vkey"])
    assert verdict_element.get_attribute("data-verdict") == ("ok" if case["valid"] else "failed")
    findings = browser.find_elements(By.CSS_SELECTOR, "#findings li")
    if case["valid"]:
        rows = browser.find_elements(By.CSS_SELECTOR, "#totals tbody tr")
        shown = sorted(tuple(td.text for td in row.find_elements(By.TAG_NAME, "td")) for row in rows)
        assert ("llm.output.visible_tokens", "model=m-1", "1998.999", "token") in shown and len(shown) == 3
        # The hostile dimension value is text, not markup.
        assert any('<b>bold</b>' in cell for row in shown for cell in row)
        assert not browser.find_elements(By.CSS_SELECTOR, "#totals b")
        source = browser.find_element(By.ID, "key-source").get_attribute("data-source")
        assert source == ("pasted" if case["vkey"] else "bundle")
        assert verdict_element.text.startswith("Verified") and not findings
        assert verdict_element.get_attribute("data-findings") is None
    elif case["findings"]:
        # Authentic, but the provider broke a rule: a verdict of its own words, never "Verified", and each finding.
        n = len(case["findings"])
        assert verdict_element.get_attribute("data-findings") == str(n)
        assert verdict_element.text.startswith(f"Failed: the provider broke {n} protocol rule")
        reason = browser.find_element(By.ID, "reason").text
        assert reason.startswith("Why: the provider broke a protocol rule: " + case["findings"][0]["message"])
        assert [(li.get_attribute("data-kind"), li.get_attribute("data-seq")) for li in findings] == \
            [(f["kind"], str(f["seq"])) for f in case["findings"]]
        assert all(f["message"] in li.text for li, f in zip(findings, case["findings"]))
    else:
        assert browser.find_element(By.ID, "reason").text
        assert verdict_element.text.startswith("Failed: this bundle does not prove") and not findings
    screenshots.take(browser, "verifier-" + re.sub(r"[^a-z]+", "-", name).strip("-"))


def test_a_second_bundle_clears_the_first_ones_findings(browser, page, tmp_path):
    open_page(browser, page)
    choose(browser, tmp_path, CASES["a negative delta"]["bundle"], CASES["a negative delta"]["vkey"], "one.json")
    assert browser.find_elements(By.CSS_SELECTOR, "#findings li")
    browser.execute_script("document.getElementById('verdict').setAttribute('data-verdict', 'pending')")
    verdict_element = choose(browser, tmp_path, CASES["good"]["bundle"], CASES["good"]["vkey"], "two.json")
    assert verdict_element.get_attribute("data-verdict") == "ok"
    assert verdict_element.get_attribute("data-findings") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "#findings li")
    assert browser.find_element(By.ID, "reason").text == ""
