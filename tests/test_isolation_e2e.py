"""One party's mistake or malice never stops another party's verification: the scenarios of the issue, replayed
as a new user would, against a real `pacspace serve` process.

The honest parties use the `pacspace` command. What an older or rogue client would send, and the current
client refuses to, is sent with the library's HTTP client directly (a misbehaving party, simulated).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import Proxy, World, cli, free_port, rogue_invitation

from pacspace.client.http import PacspaceClient
from pacspace.client.records import load_relationship, now_utc
from pacspace.records.body import Common, Delta, Line
from pacspace.records.seal import seal


@pytest.fixture
def world(tmp_path, log_database):
    """A real serve, on each backend (log_database: SQLite, then PostgreSQL), with two providers and two customers."""
    w = World(tmp_path, database=log_database)
    w.start()
    for name, role in (("acme", "provider"), ("mallory", "provider"), ("bob", "customer"), ("carol", "customer")):
        w.party(name, role)
    yield w
    w.stop()


def relationship(w: World, provider: str, customer: str) -> str:
    """Created by the provider, accepted by the customer after comparing the provider's fingerprint."""
    rid = cli("relationship", "create", "--customer", customer, "--cadence", "hourly", env=w.env[provider]).stdout.strip()
    fingerprint = cli("keys", "show", env=w.env[provider]).stdout.strip()
    cli("relationship", "accept", rid, "--provider-key", fingerprint, env=w.env[customer])
    return rid


def record(w: World, rid: str, hour: int, quantity: str, period: str = "2026-11", day: str = "2026-11-02",
           code: int = 0) -> subprocess.CompletedProcess[str]:
    window = f"{day}T{hour:02d}:00:00Z/{day}T{hour + 1:02d}:00:00Z"
    return cli("record", "--relationship", rid, "--meter", "llm.output.visible_tokens", "--unit", "token", "--quantity",
               quantity, "--dim", "model=m-1", "--period", period, "--window", window, env=w.env["acme"], code=code)


async def raw_append(w: World, provider: str, rid: str, make) -> dict:  # type: ignore[no-untyped-def]
    """What an older or rogue client sends: the next record of the chain, sealed and signed, with no rule checked."""
    home = w.home(provider)
    async with PacspaceClient(w.url, w.token(provider)) as c:
        view = await load_relationship(c, home, rid, home.log_key())
        head = view.head
        assert head is not None
        body = make(Common(rid, head.next_seq, head.head, secrets.token_hex(4), now_utc()))
        sealed = seal(body, view.keys, home.keys().ed25519)
        return await c.append(rid, sealed.seq, sealed.tag, sealed.blob)


async def rogue_relationship(w: World, customer: str, flaw: str) -> str:
    async with PacspaceClient(w.url, w.token("mallory")) as c:
        return await rogue_invitation(c, w.home("mallory"), "mallory", customer, flaw)  # type: ignore[no-any-return]


def bill(w: World, rid: str, period: str, code: int) -> dict:  # type: ignore[type-arg]
    result = cli("bill", "verify", "--relationship", rid, "--period", period, "--format", "json", env=w.env["bob"], code=code)
    return json.loads(result.stdout)


def test_a_delta_into_a_closed_period_is_a_finding_and_nobody_is_stuck(world):
    w = world
    good, bad = relationship(w, "acme", "bob"), relationship(w, "acme", "bob")
    for rid in (good, bad):
        record(w, rid, 0, "100")
        record(w, rid, 1, "50")
        cli("close", "--relationship", rid, "--period", "2026-11", env=w.env["acme"])
    # The client refuses, naming the fix...
    refused = record(w, bad, 3, "7", code=2)
    assert "2026-11 is closed: record a correction in the open period" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    # ...but an older client sends it, and the log records it.
    asyncio.run(raw_append(w, "acme", bad, lambda common: Delta(
        common, "2026-11", "2026-11-02T03:00:00Z", "2026-11-02T04:00:00Z", (Line("llm.output.visible_tokens", "token", "7", {"model": "m-1"}),))))
    # The provider is not stuck: records, records and closes the next period.
    listed = cli("records", "--relationship", bad, "--json", env=w.env["acme"])
    assert "break protocol rules" in listed.stderr
    record(w, bad, 0, "9", period="2026-12", day="2026-12-01")
    cli("close", "--relationship", bad, "--period", "2026-12", env=w.env["acme"])
    record(w, good, 0, "11", period="2026-12", day="2026-12-01")
    # The customer's monitor reports the finding with evidence, and verifies everything else in the same poll.
    polled = cli("monitor", "--once", "--json", env=w.env["bob"], code=7)
    report = json.loads(polled.stdout)
    assert [(f["relationship"], f["kind"], f["seq"]) for f in report["findings"]] == [(bad, "usage_in_closed_period", 4)]
    evidence = json.loads(Path(report["findings"][0]["evidence"]).read_text())
    assert evidence["record_key"] and evidence["ciphertext"] and evidence["checkpoint"] and evidence["body"]
    assert report["detections"] == [] and report["relationships"] == 2
    assert cli("monitor", "--once", env=w.env["bob"]).stdout.startswith("ok:")  # found once; nothing new since
    # Bills: the clean relationship and the clean period confirm; the period with the finding says so, with its own code.
    assert bill(w, good, "2026-11", 0)["verdict"] == "match"
    assert bill(w, bad, "2026-12", 0)["verdict"] == "match"
    flagged = bill(w, bad, "2026-11", 7)
    assert flagged["verdict"] == "rule broken" and flagged["findings"][0]["kind"] == "usage_in_closed_period"
    assert [x["committed"] for x in flagged["lines"]] == ["150"]  # the close's totals, as signed
    # A correction in the open period is how the late usage is billed; the client takes it.
    correction = cli("record", "--relationship", good, "--corrects", "1", "--period", "2026-12", "--meter",
                     "llm.output.visible_tokens", "--unit", "token", "--quantity", "-5", "--dim", "model=m-1",
                     "--window", "2026-11-02T00:00:00Z/2026-11-02T01:00:00Z", env=w.env["acme"])
    assert "committed seq" in correction.stderr


def test_a_rogue_provider_cannot_touch_a_customers_monitor(world):
    w = world
    good = relationship(w, "acme", "bob")
    record(w, good, 0, "100")
    cli("close", "--relationship", good, "--period", "2026-11", env=w.env["acme"])
    assert cli("monitor", "--once", env=w.env["bob"]).stdout.startswith("ok:")
    bad_wrap = asyncio.run(rogue_relationship(w, "bob", "bad_wrap"))
    other_keys = asyncio.run(rogue_relationship(w, "bob", "wrong_keys"))
    spam = asyncio.run(rogue_relationship(w, "bob", "unaccepted"))
    # The monitor never follows what bob did not accept: it polls clean and lists the invitations.
    polled = cli("monitor", "--once", env=w.env["bob"])
    assert polled.stdout.startswith("ok:") and "3 invitation(s) wait" in polled.stderr
    listed = json.loads(cli("relationship", "list", "--json", env=w.env["bob"]).stdout)
    pending = {r["relationship"]: r for r in listed if r["state"] == "pending"}
    mallory = cli("keys", "show", env=w.env["mallory"]).stdout.strip()
    assert set(pending) == {bad_wrap, other_keys, spam}
    assert {(r["provider"], r["provider_fingerprint"]) for r in pending.values()} == {("mallory", mallory)}
    # Those that do not verify cannot be accepted: a clear message, and nothing else changes.
    no_wrap = cli("relationship", "accept", bad_wrap, env=w.env["bob"], code=6)
    assert "not wrapped to your key" in no_wrap.stderr and len(no_wrap.stderr.strip().splitlines()) == 1
    wrong = cli("relationship", "accept", other_keys, env=w.env["bob"], code=6)
    assert "does not name your keys" in wrong.stderr
    assert not (Path(w.env["bob"]["PACSPACE_HOME"]) / "evidence").exists()  # no detection, no finding: no evidence
    for rid in (bad_wrap, other_keys, spam):
        assert cli("relationship", "decline", rid, env=w.env["bob"]).stdout.startswith("declined:")
    # mallory cannot write to what bob declined; mallory sees the states, never bob's other relationships.
    mallory_sees = json.loads(cli("relationship", "list", "--json", env=w.env["mallory"]).stdout)
    assert {(r["relationship"], r["state"]) for r in mallory_sees} == {(bad_wrap, "declined"), (other_keys, "declined"),
                                                                        (spam, "declined")}
    with pytest.raises(Exception, match="relationship_declined"):
        asyncio.run(_append_garbage(w, spam))
    final = cli("monitor", "--once", env=w.env["bob"])
    assert final.stdout.startswith("ok:") and "invitation" not in final.stderr
    assert bill(w, good, "2026-11", 0)["verdict"] == "match"


async def _append_garbage(w: World, rid: str) -> None:
    async with PacspaceClient(w.url, w.token("mallory")) as c:
        await c.append(rid, 3, os.urandom(32), os.urandom(300))


def test_a_witness_outage_leaves_nothing_in_doubt(tmp_path, log_database):
    """With a witness policy and the witness down, `record` fails (503) with its record committed but unpublished.
    Once the witness is back, the next command sends the kept record first and gets its receipt: no restart."""
    witness_data = tmp_path / "witness"
    witness_vkey = cli("witness", "init", "--data", str(witness_data), "--name", "witness.example/w1",
                       env=dict(os.environ)).stdout.strip()
    witness_port = free_port()
    w = World(tmp_path, database=log_database)
    cli("init", "--data", str(w.data), env=w.base)
    log_vkey = cli("log-key", "--data", str(w.data), env=w.base).stdout.strip()
    (tmp_path / "witness-log-policy").write_text(f"log {log_vkey}\nquorum none\n")
    (tmp_path / "policy").write_text(f"witness w1 {witness_vkey} http://127.0.0.1:{witness_port}\nquorum w1\n")
    w.extra = ("--witness-policy", str(tmp_path / "policy"), "--witness-timeout", "1")

    def start_witness() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "pacspace", "witness", "serve", "--data", str(witness_data),
                                 "--policy", str(tmp_path / "witness-log-policy"), "--port", str(witness_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                import urllib.request

                urllib.request.urlopen(f"http://127.0.0.1:{witness_port}/checkpoint?origin=x", timeout=1)
            except urllib.error.HTTPError:
                return proc
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the witness did not start")

    witness = start_witness()
    w.start()
    try:
        for name, role in (("acme", "provider"), ("bob", "customer")):
            w.party(name, role)
        rid = relationship(w, "acme", "bob")
        record(w, rid, 0, "1")
        witness.send_signal(signal.SIGKILL)
        witness.wait(timeout=10)
        failed = record(w, rid, 1, "2", code=1)
        assert "kept in the outbox" in failed.stderr and "witness" in failed.stderr
        waiting = cli("outbox", env=w.env["acme"])
        assert f"{rid} seq 2" in waiting.stdout
        still = record(w, rid, 2, "3", code=1)  # the kept record goes first, and is still not acknowledged
        assert "still not acknowledged" in still.stderr
        witness = start_witness()
        deadline = time.monotonic() + 30
        while True:
            done = record(w, rid, 2, "3", code=None)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert done.returncode == 0, done.stderr
        assert "seq 3" in done.stderr  # the new record follows the one sent during the outage
        assert "0 record(s) waiting" in cli("outbox", env=w.env["acme"]).stderr
        assert cli("monitor", "--once", env=w.env["bob"]).stdout.startswith("ok: checkpoint")
        rows = json.loads(cli("records", "--relationship", rid, "--json", env=w.env["bob"]).stdout)["rows"]
        assert [r["quantity"] for r in rows if r["kind"] == "delta"] == ["1", "2", "3"]
    finally:
        w.stop()
        witness.send_signal(signal.SIGKILL)
        witness.wait(timeout=10)


async def _cli_async(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """The pacspace command, while this test's event loop keeps serving the proxy it talks to."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "pacspace", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_lost_answer_leaves_nothing_stuck(world, aiohttp_server):
    """The server commits a record but its answer is lost on the way (a timeout, a proxy's 504): the client kept
    it, and the next command sends it first and gets its receipt."""
    w = world
    rid = relationship(w, "acme", "bob")
    proxy = Proxy(w.url)
    proxy.lose = lambda method, path: method == "POST" and path.endswith("/records")
    server = await aiohttp_server(proxy.app())
    through = {**w.env["acme"], "PACSPACE_URL": str(server.make_url("")).rstrip("/")}
    args = ("record", "--relationship", rid, "--meter", "m", "--quantity", "5", "--period", "2026-11",
            "--window", "2026-11-02T00:00:00Z/2026-11-02T01:00:00Z")
    code, _, err = await _cli_async(*args, env=through)
    assert code == 1 and "kept in the outbox" in err
    code, _, err = await _cli_async("record", "--relationship", rid, "--meter", "m", "--quantity", "6", "--period",
                                    "2026-11", "--window", "2026-11-02T01:00:00Z/2026-11-02T02:00:00Z", env=w.env["acme"])
    assert code == 0 and "committed seq 2" in err, err
    code, out, err = await _cli_async("records", "--relationship", rid, "--json", env=w.env["bob"])
    assert code == 0 and [r["quantity"] for r in json.loads(out)["rows"] if r["kind"] == "delta"] == ["5", "6"]
    # A close whose answer is lost: the same command again writes the close's receipt, and closes nothing twice.
    receipt = w.tmp / "close.tlog-proof"
    code, _, err = await _cli_async("close", "--relationship", rid, "--period", "2026-11", "--out", str(receipt),
                                    env=through)
    assert code == 1 and not receipt.exists()
    code, _, err = await _cli_async("close", "--relationship", rid, "--period", "2026-11", "--out", str(receipt),
                                    env=w.env["acme"])
    assert code == 0 and "was closed by seq 3" in err, err
    code, out, err = await _cli_async("receipt", "verify", str(receipt), env=w.env["acme"])
    assert code == 0 and out.startswith("ok:"), err
    code, out, _ = await _cli_async("records", "--relationship", rid, "--json", env=w.env["bob"])
    assert [r["kind"] for r in json.loads(out)["rows"]].count("close") == 1


async def test_a_bad_proof_is_not_a_fork_and_the_next_honest_poll_goes_on(world, aiohttp_server):
    """A consistency proof with one hash missing: not a fork (exit 20, not 11), the bills still confirm, and
    the next honest poll exits 0."""
    w = world
    rid = relationship(w, "acme", "bob")
    record(w, rid, 0, "10")
    cli("close", "--relationship", rid, "--period", "2026-11", env=w.env["acme"])
    assert cli("monitor", "--once", env=w.env["bob"]).returncode == 0
    record(w, rid, 0, "4", period="2026-12", day="2026-12-01")
    proxy = Proxy(w.url)

    def drop_one(path: str, body: bytes) -> bytes:
        if path == "/v1/proof/consistency":
            data = json.loads(body)
            data["hashes"] = data["hashes"][:-1]
            return json.dumps(data).encode()
        return body

    proxy.alter = drop_one
    server = await aiohttp_server(proxy.app())
    through = {**w.env["bob"], "PACSPACE_URL": str(server.make_url("")).rstrip("/")}
    code, out, err = await _cli_async("monitor", "--once", "--json", env=through)
    assert code == 20 and "DETECTED bad_proof" in err and "inconsistent_checkpoints" not in err
    assert json.loads(out)["new_records"] == 1  # the log's tiles showed the checkpoints consistent: the poll went on
    code, out, err = await _cli_async("bill", "verify", "--relationship", rid, "--period", "2026-11", env=w.env["bob"])
    assert code == 0, err
    code, out, err = await _cli_async("monitor", "--once", env=w.env["bob"])
    assert code == 0 and out.startswith("ok:")
