"""The recorder end to end: CloudEvents in, hourly deltas committed, the customer's bill agrees with the events."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from decimal import Decimal

from test_cli_records import run, server  # noqa: F401  (the real-server fixture)


def test_events_to_committed_deltas_to_a_verified_bill(tmp_path, server):  # noqa: F811
    base = {**os.environ, "PACSPACE_URL": server}
    data = str(tmp_path / "pacspace-data")
    ptoken = run("admin", "party", "add", "acme", "--role", "provider", "--data", data, env=base).stdout.strip()
    ctoken = run("admin", "party", "add", "bob", "--role", "customer", "--data", data, env=base).stdout.strip()
    carol_token = run("admin", "party", "add", "carol", "--role", "customer", "--data", data, env=base).stdout.strip()
    provider = {**base, "PACSPACE_TOKEN": ptoken, "PACSPACE_HOME": str(tmp_path / "acme")}
    customer = {**base, "PACSPACE_TOKEN": ctoken, "PACSPACE_HOME": str(tmp_path / "bob")}
    run("keys", "init", env=provider)
    run("keys", "init", env=customer)
    carol = {**base, "PACSPACE_TOKEN": carol_token, "PACSPACE_HOME": str(tmp_path / "carol")}
    run("keys", "init", env=carol)
    rid = run("relationship", "create", "--customer", "bob", "--cadence", "hourly", env=provider).stdout.strip()
    daily = run("relationship", "create", "--customer", "carol", env=provider).stdout.strip()  # daily by default
    run("relationship", "accept", rid, env=customer)
    run("relationship", "accept", daily, env=carol)
    config = tmp_path / "recorder.toml"
    config.write_text(f'''
[recorder]
data = "spool"
grace_minutes = 5
dedup_days = 3660  # the events below have fixed dates

[[customers]]
ref = "customer-1"
relationship = "{rid}"
cadence = "hourly"

[[customers]]
ref = "cus_carol"
relationship = "{daily}"

[meters.api_call]
meter = "api.calls"
unit = "call"
value = "value"

[meters.prompt]
meter = "llm.input.uncached_tokens"
unit = "token"
value = "tokens"
dimensions = ["model"]
''')
    events, total = [], Decimal(0)
    for i in range(36):
        tokens = 100 + i
        total += tokens
        events.append({"specversion": "1.0", "type": "prompt", "id": f"e{i}", "source": "gw",
                       "time": f"2026-11-02T{10 + i // 12:02d}:{(i % 12) * 5:02d}:00Z", "subject": "customer-1",
                       "data": {"tokens": tokens, "model": "m-1"}})
    lines = [json.dumps(e) for e in events] + [json.dumps(events[3]), "not json"]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    imported = run("recorder", "import", str(tmp_path / "events.jsonl"), "--format", "cloudevents", "--config", str(config),
                   env=provider, ok=False)
    assert imported.returncode == 2  # one line was not JSON: an input error
    assert imported.stderr.splitlines()[-1].startswith("pacspace: error: 1 line(s) of")
    assert json.loads(imported.stdout) == {"accepted": 36, "duplicates": 1, "rejected": 1}
    again = run("recorder", "import", str(tmp_path / "events.jsonl"), "--format", "cloudevents", "--config", str(config),
                env=provider, ok=False)
    assert json.loads(again.stdout)["accepted"] == 0
    # Windows 10:00, 11:00, 12:00 end at 13:00 at the latest; with the 5-minute grace, 13:04 is too early for 12:00.
    first = json.loads(run("recorder", "flush", "--config", str(config), "--until", "2026-11-02T13:04:00Z", env=provider).stdout)
    # The recorder takes the chain from the provider's home, where `relationship create` left it.
    assert first == {"committed": 2, "resent": 0, "closed": 0, "learned": 1, "errors": 0}
    second = json.loads(run("recorder", "flush", "--config", str(config), "--until", "2026-11-02T23:00:00Z", env=provider).stdout)
    assert second["committed"] == 1
    assert json.loads(run("recorder", "flush", "--config", str(config), "--until", "2026-11-02T23:00:00Z", env=provider).stdout)["committed"] == 0
    assert json.loads(run("recorder", "status", "--config", str(config), env=provider).stdout)["deltas_committed"] == 3
    # carol is billed from a Stripe meter-event export, daily.
    stripe_rows = ["identifier,timestamp,event_name,payload[value],payload[stripe_customer_id]"]
    carol_total = 0
    for i in range(10):
        when = int(datetime(2026, 11, 2 + i // 5, 9 + i, tzinfo=timezone.utc).timestamp())
        stripe_rows.append(f"req_{i},{when},api_call,{i + 1},cus_carol")
        carol_total += i + 1
    (tmp_path / "stripe.csv").write_text("\n".join(stripe_rows + [stripe_rows[1]]) + "\n")
    imported = json.loads(run("recorder", "import", str(tmp_path / "stripe.csv"), "--format", "stripe", "--config",
                              str(config), env=provider).stdout)
    assert imported == {"accepted": 10, "duplicates": 1, "rejected": 0}
    assert json.loads(run("recorder", "flush", "--config", str(config), "--until", "2026-11-03T00:04:00Z",
                          env=provider).stdout)["committed"] == 0  # Nov 2 plus the grace has not passed
    assert json.loads(run("recorder", "flush", "--config", str(config), "--until", "2026-11-03T00:05:00Z",
                          env=provider).stdout)["committed"] == 1
    assert json.loads(run("recorder", "flush", "--config", str(config), "--until", "2026-11-04T06:00:00Z",
                          env=provider).stdout)["committed"] == 1
    # After the month (and the grace) the period is closed by the recorder itself, once.
    closing = json.loads(run("recorder", "flush", "--config", str(config), "--until", "2026-12-01T00:10:00Z", env=provider).stdout)
    assert closing["closed"] == 2  # both relationships, each after its last delta
    assert json.loads(run("recorder", "flush", "--config", str(config), "--until", "2026-12-01T01:00:00Z", env=provider).stdout)["closed"] == 0
    # The customer sees three hourly deltas whose quantities sum to the events', to the last unit.
    run("monitor", "--once", env=customer)
    rows = json.loads(run("records", "--relationship", rid, "--period", "2026-11", "--json", "--offline", env=customer).stdout)["rows"]
    deltas = [r for r in rows if r["kind"] == "delta"]
    assert [r["window_start"] for r in deltas] == ["2026-11-02T10:00:00Z", "2026-11-02T11:00:00Z", "2026-11-02T12:00:00Z"]
    assert sum(Decimal(r["quantity"]) for r in deltas) == total
    invoice = {"relationship": rid, "period": "2026-11",
               "lines": [{"meter": "llm.input.uncached_tokens", "dimensions": {"model": "m-1"}, "quantity": str(total)}]}
    (tmp_path / "invoice.json").write_text(json.dumps(invoice))
    verdict = run("bill", "verify", "--relationship", rid, "--period", "2026-11", "--invoice", str(tmp_path / "invoice.json"),
                  env=customer)
    assert "matches" in verdict.stderr
    # One event, proven counted in exactly the delta the customer holds.
    proof = run("recorder", "prove-event", "--config", str(config), "--event-id", "e13", "--source", "gw", env=provider).stdout
    (tmp_path / "e13.proof.json").write_text(proof)
    checked = run("evidence", "verify-event", str(tmp_path / "e13.proof.json"), env=customer)
    assert checked.stdout.startswith("ok: llm.input.uncached_tokens 113 of event e13")
    forged = json.loads(proof)
    forged["proofs"][0]["event"]["quantity"] = "1"
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    refused = run("evidence", "verify-event", str(tmp_path / "forged.json"), env=customer, ok=False)
    assert refused.returncode == 6 and refused.stderr.startswith("pacspace: error:")
    # A proof whose second item fails says no `ok:` for its first: every item is checked before any is reported.
    mixed = json.loads(proof)
    mixed["proofs"].append(forged["proofs"][0])
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    refused = run("evidence", "verify-event", str(tmp_path / "mixed.json"), env=customer, ok=False)
    assert refused.returncode == 6 and refused.stdout == "" and len(refused.stderr.splitlines()) == 1

    # carol: two daily deltas, and her bill verifies against an invoice computed from the Stripe export.
    run("monitor", "--once", env=carol)
    rows = json.loads(run("records", "--relationship", daily, "--period", "2026-11", "--json", "--offline", env=carol).stdout)["rows"]
    assert [r["window_start"] for r in rows if r["kind"] == "delta"] == ["2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"]
    invoice = {"relationship": daily, "period": "2026-11",
               "lines": [{"meter": "api.calls", "dimensions": {}, "quantity": str(carol_total)}]}
    (tmp_path / "carol-invoice.json").write_text(json.dumps(invoice))
    verdict = run("bill", "verify", "--relationship", daily, "--period", "2026-11", "--invoice",
                  str(tmp_path / "carol-invoice.json"), env=carol)
    assert "matches" in verdict.stderr
