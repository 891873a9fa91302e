"""The README's recordation flow, command by command, as a new user types it (real server process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import free_port


def run(*args, env, ok=True):
    result = subprocess.run([sys.executable, "-m", "pacspace", *args], capture_output=True, text=True, env=env, timeout=120)
    if ok:
        assert result.returncode == 0, (args, result.stderr)
    return result


@pytest.fixture
def server(tmp_path, log_database, monkeypatch):
    """`pacspace serve` in tmp_path, on each backend: with PostgreSQL, PACSPACE_DATABASE is set for the server and
    for every command the test then runs, as an operator exports it."""
    if log_database is None:
        monkeypatch.delenv("PACSPACE_DATABASE", raising=False)
    else:
        monkeypatch.setenv("PACSPACE_DATABASE", log_database)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacspace", "serve", "--port", str(port), "--pool-interval", "0.02"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def test_readme_flow(tmp_path, server):
    base = {**os.environ, "PACSPACE_URL": server}
    admin = {**base}
    provider_token = run("admin", "party", "add", "acme", "--role", "provider", "--data", str(tmp_path / "pacspace-data"), env=admin).stdout.strip()
    out = run("admin", "party", "add", "bob", "--role", "customer", "--json", "--data", str(tmp_path / "pacspace-data"), env=admin).stdout
    customer_token = json.loads(out)["token"]
    provider = {**base, "PACSPACE_TOKEN": provider_token, "PACSPACE_HOME": str(tmp_path / "acme")}
    customer = {**base, "PACSPACE_TOKEN": customer_token, "PACSPACE_HOME": str(tmp_path / "bob")}
    run("keys", "init", env=provider)
    fingerprint = run("keys", "init", env=customer).stdout.strip()
    assert run("keys", "show", env=customer).stdout.strip() == fingerprint
    for key in ("party.x25519", "party.ed25519"):
        assert (tmp_path / "bob" / key).stat().st_mode & 0o777 == 0o600
    # A fingerprint that does not match what the server relays is refused.
    wrong = run("relationship", "create", "--customer", "bob", "--customer-key", "0000:0000:0000:0000:0000:0000:0000:0000", env=provider, ok=False)
    assert wrong.returncode == 6 and "fingerprint" in wrong.stderr
    created = json.loads(run("relationship", "create", "--customer", "bob", "--customer-key", fingerprint, "--cadence", "hourly", "--json", env=provider).stdout)
    rid = created["relationship"]
    # The customer sees the invitation with the provider's key fingerprint, and accepts it after comparing.
    acme_fingerprint = run("keys", "show", env=provider).stdout.strip()
    invited = json.loads(run("relationship", "list", "--json", env=customer).stdout)
    assert [(r["relationship"], r["state"], r["provider_fingerprint"]) for r in invited] == [(rid, "pending", acme_fingerprint)]
    assert [r["state"] for r in json.loads(run("relationship", "list", "--json", env=provider).stdout)] == ["pending"]
    wrong = run("relationship", "accept", rid, "--provider-key", fingerprint, env=customer, ok=False)
    assert wrong.returncode == 6 and "not accepted" in wrong.stderr
    assert "accepted" in run("relationship", "accept", rid, "--provider-key", acme_fingerprint, env=customer).stdout
    assert [r["state"] for r in json.loads(run("relationship", "list", "--json", env=provider).stdout)] == ["accepted"]
    lines = tmp_path / "lines.json"
    lines.write_text(json.dumps([
        {"meter": "llm.input.uncached_tokens", "unit": "token", "quantity": "1000", "dimensions": {"model": "m-1"}},
        {"meter": "llm.output.visible_tokens", "unit": "token", "quantity": "250.5", "dimensions": {"model": "m-1"}},
    ]))
    first = json.loads(run("record", "--relationship", rid, "--lines", str(lines), "--period", "2026-11",
                           "--window", "2026-11-02T00:00:00Z/2026-11-02T01:00:00Z", "--json", env=provider).stdout)
    assert first["relationship"] == rid and first["seq"] == 1
    run("record", "--relationship", rid, "--meter", "llm.output.visible_tokens", "--quantity", "49.5", "--unit", "token",
        "--dim", "model=m-1", "--period", "2026-11", "--window", "2026-11-02T01:00:00Z/2026-11-02T02:00:00Z", env=provider)
    run("close", "--relationship", rid, "--period", "2026-11", "--out", str(tmp_path / "close.tlog-proof"), env=provider)
    rows = json.loads(run("records", "--relationship", rid, "--period", "2026-11", "--json", env=customer).stdout)["rows"]
    totals = {r["meter"]: r["quantity"] for r in rows if r["kind"] == "close"}
    assert totals == {"llm.input.uncached_tokens": "1000", "llm.output.visible_tokens": "300"}
    csv_out = run("records", "--relationship", rid, "--csv", env=customer).stdout
    assert csv_out.splitlines()[0].startswith("seq,index,kind")
    # The customer's monitor keeps a verified copy that needs no server.
    polled = run("monitor", "--once", env=customer)
    assert polled.stdout.startswith("ok: checkpoint") and "4 new records" in polled.stdout
    offline = {**customer, "PACSPACE_URL": "http://127.0.0.1:9"}
    copy = json.loads(run("records", "--relationship", rid, "--period", "2026-11", "--json", "--offline", env=offline).stdout)
    assert copy["rows"] == rows
    # The customer's finance team checks the invoice against the committed record, with the server out of reach.
    invoice = {"relationship": rid, "period": "2026-11", "lines": [
        {"meter": "llm.input.uncached_tokens", "dimensions": {"model": "m-1"}, "quantity": "1000"},
        {"meter": "llm.output.visible_tokens", "dimensions": {"model": "m-1"}, "quantity": "300.0"}]}
    (tmp_path / "invoice.json").write_text(json.dumps(invoice))
    report = tmp_path / "report.html"
    ok = run("bill", "verify", "--relationship", rid, "--period", "2026-11", "--invoice", str(tmp_path / "invoice.json"),
             "--report", str(report), env=offline)
    assert "matches" in ok.stderr
    page = report.read_text()
    assert "The invoice matches the committed record." in page and "<svg" in page and "c2sp.org/tlog-proof@v1" in page
    invoice["lines"][1]["quantity"] = "301"
    (tmp_path / "invoice.json").write_text(json.dumps(invoice))
    differs = run("bill", "verify", "--relationship", rid, "--period", "2026-11", "--invoice", str(tmp_path / "invoice.json"),
                  "--format", "json", env=offline, ok=False)
    assert differs.returncode == 4
    verdict = json.loads(differs.stdout)
    assert [x["matches"] for x in verdict["lines"]] == [True, False]
    unclosed = run("bill", "verify", "--relationship", rid, "--period", "2026-10", env=offline, ok=False)
    assert unclosed.returncode == 5 and "no close record" in unclosed.stderr
    # A third party checks the period from the bundle alone.
    bundle = tmp_path / "2026-11.evidence.json"
    run("evidence", "export", "--relationship", rid, "--period", "2026-11", "--out", str(bundle), env=offline)
    vkey_now = run("log-key", "--data", str(tmp_path / "pacspace-data"), env=base).stdout.strip()
    checked = run("evidence", "verify", str(bundle), "--log-key", vkey_now, "--provider-key",
                  run("keys", "show", env=provider).stdout.strip(), env={**os.environ})
    assert checked.stdout.startswith("ok:") and "llm.output.visible_tokens" in checked.stdout and "300" in checked.stdout
    listed = json.loads(run("relationship", "list", "--json", env=customer).stdout)
    assert [(r["relationship"], r["state"]) for r in listed] == [(rid, "accepted")]
    vkey = run("log-key", "--data", str(tmp_path / "pacspace-data"), env=base).stdout.strip()
    verified = run("receipt", "verify", str(tmp_path / "close.tlog-proof"), "--log-key", vkey, env=base).stdout
    assert verified.startswith("ok: entry at index")
    # The customer cannot append; a tampered receipt fails.
    refused = run("record", "--relationship", rid, "--meter", "x", "--quantity", "1", env={**customer}, ok=False)
    # The server refuses the customer's token for it (HTTP 403): a usage error, exit 2.
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    text = (tmp_path / "close.tlog-proof").read_text().replace("index ", "index 1", 1)
    (tmp_path / "bad.tlog-proof").write_text(text)
    bad = run("receipt", "verify", str(tmp_path / "bad.tlog-proof"), "--log-key", vkey, env=base, ok=False)
    assert bad.returncode == 6 and bad.stderr.startswith("pacspace: error:")


@pytest.mark.parametrize("log_database", [None])  # it damages records.db and its segment files (test_blobs: PostgreSQL)
def test_fsck_checks_records_too(tmp_path, server):
    base = {**os.environ, "PACSPACE_URL": server}
    data = str(tmp_path / "pacspace-data")
    token = run("admin", "party", "add", "acme", "--role", "provider", "--data", data, env=base).stdout.strip()
    ctoken = run("admin", "party", "add", "bob", "--role", "customer", "--data", data, env=base).stdout.strip()
    provider = {**base, "PACSPACE_TOKEN": token, "PACSPACE_HOME": str(tmp_path / "acme")}
    run("keys", "init", env=provider)
    run("keys", "init", env={**base, "PACSPACE_TOKEN": ctoken, "PACSPACE_HOME": str(tmp_path / "bob")})
    rid = run("relationship", "create", "--customer", "bob", env=provider).stdout.strip()
    run("record", "--relationship", rid, "--meter", "m", "--quantity", "1", env=provider)
    ok = run("fsck", "--data", data, env=base)
    assert "2 records verified" in ok.stdout
    import sqlite3

    from pacspace.storage.segments import segment_name

    conn = sqlite3.connect(tmp_path / "pacspace-data" / "records.db")
    segment, start = conn.execute("SELECT segment, start FROM spans WHERE blob_id = (SELECT blob_id FROM records WHERE seq = 1)").fetchone()
    conn.close()
    with open(tmp_path / "pacspace-data" / "blobs" / segment_name(segment), "r+b") as f:
        f.seek(start + 40)
        flipped = f.read(1)[0] ^ 1
        f.seek(start + 40)
        f.write(bytes([flipped]))
    bad = run("fsck", "--data", data, env=base, ok=False)
    assert bad.returncode == 6 and "does not match its ct_hash" in bad.stderr
    # A missing blob, and a settled index that the named checkpoint does not cover, are faults too.
    conn = sqlite3.connect(tmp_path / "pacspace-data" / "records.db")
    conn.execute("DELETE FROM spans WHERE blob_id = (SELECT blob_id FROM records WHERE seq = 0)")
    conn.execute("UPDATE settled SET checkpoint_size = idx WHERE blob_id = (SELECT blob_id FROM records WHERE seq = 1)")
    conn.commit()
    conn.close()
    bad = run("fsck", "--data", data, env=base, ok=False)
    assert bad.returncode == 6 and "seq 0: its blob is missing" in bad.stderr
    assert "seq 1: its checkpoint (size 1) does not cover its index 1" in bad.stderr
