"""The recorder's pure core: importers to disjoint meters, cadence windows, exact aggregation, events_root."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacspace.merkle import leaf_hash, verify_inclusion
from pacspace.recorder.aggregate import WindowUsage, events_root, prove_event
from pacspace.recorder.events import (
    InvalidEvent,
    MeterMapping,
    anthropic_usage,
    cloudevent,
    openai_usage,
    read_jsonl,
    read_stripe_csv,
    stripe_event,
    utc_time,
)
from pacspace.recorder.windows import Cadence, period_of


def axes(events):
    out = {}
    for e in events:
        key = e.meter + ("/" + e.dimensions["ttl"] if "ttl" in e.dimensions else "")
        out[key] = int(e.quantity)
    return out


def test_openai_chat_usage_maps_to_disjoint_axes_that_sum_to_its_totals():
    response = {
        "id": "chatcmpl-1", "model": "gpt-x-2026-01-01", "created": 1793577600,
        "usage": {"prompt_tokens": 1000, "completion_tokens": 300,
                  "prompt_tokens_details": {"cached_tokens": 800},
                  "completion_tokens_details": {"reasoning_tokens": 100, "rejected_prediction_tokens": 20}},
    }
    got = axes(openai_usage(response, "cust-1"))
    assert got == {"llm.input.uncached_tokens": 200, "llm.input.cache_read_tokens": 800, "llm.output.visible_tokens": 180,
                   "llm.output.reasoning_tokens": 100, "llm.output.rejected_prediction_tokens": 20, "llm.requests": 1}
    # No token counted twice: the input axes sum to prompt_tokens, the output axes to completion_tokens.
    assert got["llm.input.uncached_tokens"] + got["llm.input.cache_read_tokens"] == 1000
    assert got["llm.output.visible_tokens"] + got["llm.output.reasoning_tokens"] + got["llm.output.rejected_prediction_tokens"] == 300


def test_openai_responses_api_and_inconsistent_details():
    got = axes(openai_usage({"id": "resp_1", "model": "m", "created_at": "2026-11-02T10:00:00Z", "usage": {
        "input_tokens": 50, "output_tokens": 40, "input_tokens_details": {"cached_tokens": 10},
        "output_tokens_details": {"reasoning_tokens": 15}}}, "c"))
    assert got == {"llm.input.uncached_tokens": 40, "llm.input.cache_read_tokens": 10, "llm.output.visible_tokens": 25,
                   "llm.output.reasoning_tokens": 15, "llm.requests": 1}
    with pytest.raises(InvalidEvent, match="exceed"):
        openai_usage({"id": "x", "model": "m", "created": 1, "usage": {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}}, "c")


def test_anthropic_usage_is_already_disjoint():
    response = {"id": "msg_1", "model": "claude-x", "created_at": "2026-11-02T10:00:00Z", "usage": {
        "input_tokens": 200, "cache_read_input_tokens": 800, "cache_creation_input_tokens": 100,
        "cache_creation": {"ephemeral_5m_input_tokens": 60, "ephemeral_1h_input_tokens": 40},
        "output_tokens": 300, "server_tool_use": {"web_search_requests": 2}}}
    got = axes(anthropic_usage(response, "cust-1"))
    assert got == {"llm.input.uncached_tokens": 200, "llm.input.cache_read_tokens": 800,
                   "llm.input.cache_write_tokens/5m": 60, "llm.input.cache_write_tokens/1h": 40,
                   "llm.output.visible_tokens": 300, "llm.server_tool.web_search": 2, "llm.requests": 1}
    bad = dict(response, usage={**response["usage"], "cache_creation": {"ephemeral_5m_input_tokens": 1}})
    with pytest.raises(InvalidEvent, match="add up"):
        anthropic_usage(bad, "c")


def test_cloudevents_and_stripe_events():
    meters = {"prompt": MeterMapping("llm.input.uncached_tokens", "token", "tokens", ("model",))}
    e = cloudevent({"specversion": "1.0", "type": "prompt", "id": "00001", "time": "2026-11-02T10:15:00.123Z",
                    "source": "service-0", "subject": "customer-1", "data": {"tokens": 123456, "model": "gpt4"}}, meters)
    assert (e.customer, e.meter, e.quantity, e.dimensions, e.time) == ("customer-1", "llm.input.uncached_tokens", "123456",
                                                                       {"model": "gpt4"}, "2026-11-02T10:15:00Z")
    assert e.dedup_key == ("service-0", "00001", "llm.input.uncached_tokens")
    for broken in ({"specversion": "0.3"}, {"specversion": "1.0", "id": "1", "source": "s", "type": "nope", "subject": "c"}):
        with pytest.raises(InvalidEvent):
            cloudevent(broken, meters)
    rows = list(read_stripe_csv("identifier,timestamp,event_name,payload[stripe_customer_id],payload[value]\n"
                                "evt-1,1793577600,api_requests,cus_9,12.5\n"))
    s = stripe_event(rows[0][1], {})
    assert (s.source, s.event_id, s.customer, s.meter, s.quantity) == ("stripe", "evt-1", "cus_9", "api_requests", "12.5")
    with pytest.raises(InvalidEvent):
        stripe_event({"identifier": "x", "event_name": "a", "payload": {"stripe_customer_id": "c", "value": "abc"}, "timestamp": 1}, {})
    lines = list(read_jsonl('{"a": 1}\nnot json\n[1]\n'))
    assert isinstance(lines[0][1], dict) and all(isinstance(x[1], InvalidEvent) for x in lines[1:])


@pytest.mark.parametrize("value", ["2026-11-02 10:00", "yesterday", None, "2026-11-02T10:00:00"])
def test_times_need_a_zone(value):
    with pytest.raises(InvalidEvent):
        utc_time(value)


def test_cadence_windows_align_to_utc():
    assert Cadence.parse("hourly").window("2026-11-02T03:59:59Z") == ("2026-11-02T03:00:00Z", "2026-11-02T04:00:00Z")
    assert Cadence.parse("daily").window("2026-11-30T23:59:59Z") == ("2026-11-30T00:00:00Z", "2026-12-01T00:00:00Z")
    assert Cadence.parse("15m").window("2026-11-02T10:44:00Z") == ("2026-11-02T10:30:00Z", "2026-11-02T10:45:00Z")
    assert period_of(Cadence.parse("daily").window("2026-11-30T23:59:59Z")[0]) == "2026-11"
    for bad in ("7m", "0m", "weekly", "1441m"):
        with pytest.raises(Exception):
            Cadence.parse(bad)


def test_aggregation_is_exact_and_order_free():
    meters = {"use": MeterMapping("compute.gpu_seconds", "second", "v", ("gpu",))}

    def ev(i, v, gpu="h100"):
        return cloudevent({"specversion": "1.0", "type": "use", "id": f"e{i}", "source": "s", "subject": "alice",
                           "time": f"2026-11-02T10:{i % 60:02d}:00Z", "data": {"v": v, "gpu": gpu}}, meters)

    events = [ev(i, "0.1") for i in range(30)] + [ev(100, "0.2", "a100")]
    alice = WindowUsage("acme:a", "2026-11-02T10:00:00Z", "2026-11-02T11:00:00Z")
    for e in events:
        alice.add(e)
    h100, a100 = sorted(alice.lines(), key=lambda line: line.dimensions["gpu"], reverse=True)
    assert (h100.quantity, h100.event_count, h100.dimensions) == ("3", 30, {"gpu": "h100"})  # exactly 3, not 2.9999999
    assert (a100.quantity, a100.event_count) == ("0.2", 1)
    shuffled = list(alice.digests)
    random.Random(1).shuffle(shuffled)
    assert events_root(shuffled) == alice.events_root()
    index, size, path = prove_event(alice.digests, events[7].digest())
    verify_inclusion(index, size, leaf_hash(events[7].digest()), path, alice.events_root())


async def test_flush_resumes_without_committing_twice(aiohttp_client, tmp_path):
    """A flush that dies before sending, or after sending but before recording, is finished once on the next run."""
    from helpers import served_log_with_two_homes

    from pacspace.client.http import PacspaceClient
    from pacspace.client.records import create_relationship, load_relationship
    from pacspace.recorder.config import parse_config
    from pacspace.recorder.flush import flush
    from pacspace.recorder.spool import Spool

    url, acme, bob = await served_log_with_two_homes(aiohttp_client, tmp_path)
    async with PacspaceClient(url, "tok-acme") as c:
        rid = (await create_relationship(c, acme.keys(), "acme", "bob", "hourly"))["relationship"]
    config = parse_config({"recorder": {"data": "spool"}, "customers": [{"ref": "c1", "relationship": rid, "cadence": "hourly"}],
                           "meters": {"use": {"meter": "m", "unit": "u", "value": "v"}}}, tmp_path)
    meters = config.meters
    acme_home_created = acme.relationship_secret(rid)
    assert acme_home_created is None  # created without the home: the recorder must fetch and verify the chain
    spool = Spool(config.data)

    def events(hour):
        return [(cloudevent({"specversion": "1.0", "type": "use", "id": f"{hour}-{i}", "source": "s", "subject": "c1",
                             "time": f"2026-11-02T{hour:02d}:0{i}:00Z", "data": {"v": i + 1}}, meters),
                 rid, config.cadence_of[rid].window(f"2026-11-02T{hour:02d}:0{i}:00Z")) for i in range(3)]

    spool.accept(events(10), "2026-11-02T10:30:00Z")

    class DiesBeforeSending(PacspaceClient):
        async def append_batch(self, records):
            raise ConnectionError("killed before sending")

    async with DiesBeforeSending(url, "tok-acme") as c:
        with pytest.raises(ConnectionError):
            await flush(c, acme, spool, config, "2026-11-02T12:00:00Z")
    (unsent,) = spool.unsent()
    assert (unsent.seq, unsent.window_start, unsent.index) == (1, "2026-11-02T10:00:00Z", None)
    assert spool.pending() == {}  # its events are counted by that sealed record, not pending twice

    class DiesAfterSending(PacspaceClient):
        async def append_batch(self, records):
            await super().append_batch(records)
            raise ConnectionError("killed before recording the answer")

    async with DiesAfterSending(url, "tok-acme") as c:
        with pytest.raises(ConnectionError):
            await flush(c, acme, spool, config, "2026-11-02T12:00:00Z")
    async with PacspaceClient(url, "tok-acme") as c:
        report = await flush(c, acme, spool, config, "2026-11-02T12:00:00Z")
        assert (report.committed, report.resent, report.errors) == (1, 1, [])  # the same record, acknowledged again
        spool.accept(events(11), "2026-11-02T11:30:00Z")
        report = await flush(c, acme, spool, config, "2026-11-02T13:00:00Z")
        assert (report.committed, report.resent, report.learned) == (1, 0, 0)
        view = await load_relationship(c, acme, rid, acme.log_key())
    windows = [r.body.window_start for r in view.records[1:]]
    assert windows == ["2026-11-02T10:00:00Z", "2026-11-02T11:00:00Z"]  # each window committed exactly once
    assert [r.body.lines[0].quantity for r in view.records[1:]] == ["6", "6"]
    spool.close()


async def test_http_ingest_is_durable_and_deduplicated(aiohttp_client, tmp_path):
    from pacspace.recorder.config import parse_config
    from pacspace.recorder.server import create_recorder_app
    from pacspace.recorder.spool import Spool

    config = parse_config({"recorder": {"data": "spool", "dedup_days": 3660}, "customers": [{"ref": "c1", "relationship": "acme:r1"}],
                           "meters": {"use": {"meter": "m", "unit": "u", "value": "v"}}}, tmp_path)
    client = await aiohttp_client(create_recorder_app(config))

    def ev(i, subject="c1"):
        return {"specversion": "1.0", "type": "use", "id": f"e{i}", "source": "s", "subject": subject,
                "time": "2026-11-02T10:00:00Z", "data": {"v": i}}

    import json as _json

    resp = await client.post("/events", data=_json.dumps(ev(1)), headers={"Content-Type": "application/cloudevents+json"})
    assert resp.status == 202 and (await resp.json())["accepted"] == 1
    batch = [ev(1), ev(2), ev(3, "stranger"), {"specversion": "0.3"}]
    resp = await client.post("/events", data=_json.dumps(batch), headers={"Content-Type": "application/cloudevents-batch+json"})
    body = await resp.json()
    assert resp.status == 202 and body["accepted"] == 1 and body["duplicates"] == 1 and len(body["rejected"]) == 2
    assert (await client.post("/events", data="x", headers={"Content-Type": "text/plain"})).status == 415
    assert (await client.post("/events", data="{", headers={"Content-Type": "application/cloudevents+json"})).status == 400
    metrics = await (await client.get("/metrics")).text()
    assert "pacspace_recorder_events_accepted_total 2" in metrics and "pacspace_recorder_spool_events 2" in metrics
    assert "pacspace_recorder_spool_pending_events 2" in metrics
    # What the 202 acknowledged is in the spool file.
    await client.close()
    spool = Spool(config.data)
    assert spool.status()["events"] == 2
    spool.close()


def test_every_acknowledged_event_survives_sigkill(tmp_path):
    """A real `recorder serve`, killed with SIGKILL mid-ingest: every event it answered 202 for is in the spool."""
    import json as _json
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time
    import urllib.error
    import urllib.request

    from helpers import free_port, wait_for_health

    from pacspace.recorder.spool import Spool

    (tmp_path / "recorder.toml").write_text('[recorder]\ndata = "spool"\ndedup_days = 3660\n[[customers]]\nref = "c1"\nrelationship = "acme:r1"\n'
                                            '[meters.use]\nmeter = "m"\nunit = "u"\nvalue = "v"\n')
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PACSPACE_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "pacspace", "recorder", "serve", "--config", str(tmp_path / "recorder.toml"),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}/events"
    wait_for_health(f"http://127.0.0.1:{port}")
    acknowledged: list[str] = []
    stop = threading.Event()

    def sender():
        n = 0
        while not stop.is_set():
            batch = [{"specversion": "1.0", "type": "use", "id": f"e{n + i}", "source": "s", "subject": "c1",
                      "time": "2026-11-02T10:00:00Z", "data": {"v": 1}} for i in range(50)]
            request = urllib.request.Request(url, data=_json.dumps(batch).encode(),
                                             headers={"Content-Type": "application/cloudevents-batch+json"})
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    if r.status == 202:
                        acknowledged.extend(e["id"] for e in batch)
            except (urllib.error.URLError, ConnectionError, OSError):
                return
            n += 50

    thread = threading.Thread(target=sender)
    thread.start()
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    stop.set()
    thread.join(timeout=10)
    assert len(acknowledged) >= 50
    spool = Spool(tmp_path / "spool")
    try:
        stored = {e.event.event_id for e in spool.pending()["acme:r1"]}
    finally:
        spool.close()
    assert set(acknowledged) <= stored


async def test_late_events_corrections_zero_deltas_and_a_moved_chain_verify_for_the_customer(aiohttp_client, tmp_path):
    """Through the real server: every record the recorder writes passes the customer's full verification, and
    the committed totals equal the accepted events, late and corrected ones included, to the last unit."""
    from decimal import Decimal

    from helpers import served_log_with_two_homes

    from pacspace.client.http import PacspaceClient
    from pacspace.client.records import append_body, create_relationship, delta_maker, load_relationship
    from pacspace.recorder.config import parse_config
    from pacspace.recorder.flush import flush
    from pacspace.recorder.spool import Spool
    from pacspace.records.body import Delta, Line

    url, acme, bob = await served_log_with_two_homes(aiohttp_client, tmp_path)
    async with PacspaceClient(url, "tok-acme") as c:
        busy = (await create_relationship(c, acme.keys(), "acme", "bob", "hourly", home=acme))["relationship"]
        idle = (await create_relationship(c, acme.keys(), "acme", "bob", "hourly", home=acme))["relationship"]
    config = parse_config({"recorder": {"data": "spool", "zero_deltas": True, "grace_minutes": 0, "dedup_days": 3660},
                           "customers": [{"ref": "busy", "relationship": busy, "cadence": "hourly"},
                                         {"ref": "idle", "relationship": idle, "cadence": "hourly"}],
                           "meters": {"use": {"meter": "m", "unit": "u", "value": "v"}}}, tmp_path)
    spool = Spool(config.data)
    accepted = Decimal(0)

    def accept(n, time, value):
        nonlocal accepted
        event = cloudevent({"specversion": "1.0", "type": "use", "id": f"e{n}", "source": "s", "subject": "busy",
                            "time": time, "data": {"v": value}}, config.meters)
        if spool.accept([config.route(event, datetime(2026, 12, 2, tzinfo=timezone.utc))], time)[0]:
            accepted += Decimal(str(value))

    async with PacspaceClient(url, "tok-acme") as c:
        accept(1, "2026-11-30T21:10:00Z", 5)
        report = await flush(c, acme, spool, config, "2026-11-30T22:00:00Z")
        assert (report.committed, report.learned, report.errors) == (2, 2, [])  # busy 21:00, idle 21:00 (zero)
        accept(2, "2026-11-30T21:50:00Z", "1.25")  # late: 21:00 is written
        accept(3, "2026-11-30T22:15:00Z", 2)
        assert (await flush(c, acme, spool, config, "2026-11-30T23:00:00Z")).committed == 2
        accept(4, "2026-11-30T22:20:00Z", 3)  # late again: into November's last delta, for 23:00
        report = await flush(c, acme, spool, config, "2026-12-01T00:00:00Z")
        assert (report.committed, report.closed, report.errors) == (2, 2, [])
        accept(5, "2026-11-29T08:00:00Z", 4)  # after November's close: a correction billed in December
        accept(5, "2026-11-29T08:00:00Z", 4)  # a duplicate, never counted
        report = await flush(c, acme, spool, config, "2026-12-01T01:00:00Z")
        assert (report.committed, report.errors) == (3, [])  # the correction and two zero deltas for 00:00

        # Someone extends the busy chain behind the recorder's back (the provider's billing code, say).
        view = await load_relationship(c, acme, busy, acme.log_key())
        # (A window of its own: the recorder's zero deltas cover every hour up to 01:00.)
        await append_body(c, acme, view, delta_maker("2026-12", ("2026-12-01T05:00:00Z", "2026-12-01T05:30:00Z"),
                                                     [Line("m", "u", "10", {})]))
        accepted += 10
        accept(6, "2026-12-01T01:05:00Z", 1)
        report = await flush(c, acme, spool, config, "2026-12-01T02:00:00Z")
        assert len(report.errors) == 1 and "conflict" in report.errors[0]
        report = await flush(c, acme, spool, config, "2026-12-01T02:00:00Z")
        assert (report.committed, report.learned, report.errors) == (1, 1, [])  # relearned from the server, then sent
        # Relearning kept what the recorder knows of its own records: the events each one counts.
        assert [e.event_id for e in spool.counted_by(busy, 1)] == ["e1"]

    async with PacspaceClient(url, "tok-bob") as c:
        chain = (await load_relationship(c, bob, busy, bob.log_key())).records
        quiet = (await load_relationship(c, bob, idle, bob.log_key())).records
    kinds = [(r.body.kind, r.body.period) for r in chain[1:]]
    assert kinds == [("delta", "2026-11"), ("delta", "2026-11"), ("delta", "2026-11"), ("close", "2026-11"),
                     ("delta", "2026-12"), ("correction", "2026-12"), ("delta", "2026-12"), ("delta", "2026-12")]
    assert [line.late for line in chain[2].body.lines] == [False, True]
    assert [(line.late, line.quantity) for line in chain[3].body.lines] == [(True, "3")]
    assert chain[6].body.corrects == chain[4].seq  # names November's close
    usage = sum(Decimal(line.quantity) for r in chain if isinstance(r.body, Delta) for line in r.body.lines)
    assert usage == accepted  # to the last unit, late, corrected and duplicate events as they should be
    assert [r.body.kind for r in quiet[1:]] == ["delta"] * 3 + ["close"] + ["delta"] * 2
    assert all(line.quantity == "0" for r in quiet[1:] if isinstance(r.body, Delta) for line in r.body.lines)
    spool.close()


def test_the_dedup_window_refuses_events_too_old_to_tell_from_replays(tmp_path):
    from pacspace.errors import MalformedInput
    from pacspace.recorder.config import parse_config

    config = parse_config({"recorder": {"dedup_days": 35}, "customers": [{"ref": "c1", "relationship": "acme:r1"}],
                           "meters": {"use": {"meter": "m", "unit": "u", "value": "v"}}}, tmp_path)
    now = datetime(2026, 12, 10, 12, 0, tzinfo=timezone.utc)

    def at(time, subject="c1"):
        return cloudevent({"specversion": "1.0", "type": "use", "id": "x", "source": "s", "subject": subject,
                           "time": time, "data": {"v": 1}}, config.meters)

    assert config.route(at("2026-11-05T12:00:00Z"), now)[1:] == ("acme:r1", ("2026-11-05T00:00:00Z", "2026-11-06T00:00:00Z"))
    with pytest.raises(InvalidEvent, match="35 days ago"):
        config.route(at("2026-11-05T11:59:59Z"), now)
    with pytest.raises(InvalidEvent, match="future"):
        config.route(at("2026-12-10T12:05:01Z"), now)
    with pytest.raises(InvalidEvent, match="not in the config"):
        config.route(at("2026-12-10T12:00:00Z", "stranger"), now)
    assert config.zero_lines() is None
    for bad in ({"dedup_days": 0}, {"dedup_days": True}, {"zero_deltas": "yes"}, {"grace": 5}):
        with pytest.raises(MalformedInput):
            parse_config({"recorder": bad, "customers": [{"ref": "c1", "relationship": "acme:r1"}]}, tmp_path)
    zero = parse_config({"recorder": {"zero_deltas": True}, "customers": [{"ref": "c1", "relationship": "acme:r1"}],
                         "meters": {"a": {"meter": "m", "unit": "u"}, "b": {"meter": "m", "unit": "u", "value": "w"}}}, tmp_path)
    assert [(line.meter, line.quantity, line.event_count) for line in zero.zero_lines()] == [("m", "0", 0)]


def test_metrics_say_when_each_cadence_was_last_flushed():
    from pacspace.recorder.flush import FlushReport
    from pacspace.recorder.server import RecorderMetrics

    metrics = RecorderMetrics()
    metrics.observe(FlushReport(committed=3, closed=1, windows_written={"hourly": "2026-11-02T11:00:00Z"}), 1000.0)
    metrics.observe(FlushReport(committed=2, errors=["x"], windows_written={"daily": "2026-11-02T00:00:00Z",
                                                                           "hourly": "2026-11-02T12:00:00Z"}), 2000.0)
    text = metrics.render(10, 4)
    assert "pacspace_recorder_records_committed_total 5" in text and "pacspace_recorder_flush_errors_total 1" in text
    assert 'pacspace_recorder_cadence_last_flush_timestamp_seconds{cadence="daily"} 2000.0' in text
    assert 'pacspace_recorder_cadence_last_window_end_timestamp_seconds{cadence="hourly"} 1793620800' in text
    assert "pacspace_recorder_spool_pending_events 4" in text


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(min_size=1), st.dictionaries(st.text(), st.text(), max_size=4))
def test_event_canonical_form_is_byte_for_byte_records_canonical(text, event_id, dims):
    from pacspace.records import canonical
    from pacspace.recorder.events import UsageEvent

    event = UsageEvent(text, event_id, text[::-1], "m", "u", "1.5", "2026-11-02T10:00:00Z", dims)
    fields = {"source": text, "id": event_id, "customer": text[::-1], "meter": "m", "unit": "u", "quantity": "1.5",
              "time": "2026-11-02T10:00:00Z", "dimensions": dims}
    try:
        expected = canonical.encode(fields)
    except UnicodeEncodeError:
        with pytest.raises(InvalidEvent):
            event.canonical()
        return
    assert event.canonical() == expected


async def test_serve_flushes_on_its_timer_and_reports_it(aiohttp_client, tmp_path):
    """`recorder serve`'s own flush loop, against a real log: events posted over HTTP end up committed."""
    import asyncio
    import json as _json

    from helpers import served_log_with_two_homes

    from pacspace.client.http import PacspaceClient
    from pacspace.client.records import create_relationship, load_relationship
    from pacspace.recorder.config import parse_config
    from pacspace.recorder.flush import flush
    from pacspace.recorder.server import create_recorder_app

    url, acme, bob = await served_log_with_two_homes(aiohttp_client, tmp_path)
    async with PacspaceClient(url, "tok-acme") as c:
        rid = (await create_relationship(c, acme.keys(), "acme", "bob", "hourly", home=acme))["relationship"]
    config = parse_config({"recorder": {"data": "spool", "dedup_days": 3660, "grace_minutes": 0},
                           "customers": [{"ref": "c1", "relationship": rid, "cadence": "hourly"}],
                           "meters": {"use": {"meter": "m", "unit": "u", "value": "v"}}}, tmp_path)

    async def flusher(spool):
        async with PacspaceClient(url, "tok-acme") as c:
            return await flush(c, acme, spool, config, "2026-11-02T11:00:00Z")

    recorder = await aiohttp_client(create_recorder_app(config, flusher, flush_interval=0.05))
    events = [{"specversion": "1.0", "type": "use", "id": f"e{i}", "source": "s", "subject": "c1",
               "time": f"2026-11-02T10:0{i}:00Z", "data": {"v": i + 1}} for i in range(3)]
    resp = await recorder.post("/events", data=_json.dumps(events), headers={"Content-Type": "application/cloudevents-batch+json"})
    assert resp.status == 202
    for _ in range(100):
        metrics = await (await recorder.get("/metrics")).text()
        if "pacspace_recorder_records_committed_total 1" in metrics:
            break
        await asyncio.sleep(0.05)
    assert "pacspace_recorder_records_committed_total 1" in metrics
    assert 'pacspace_recorder_cadence_last_window_end_timestamp_seconds{cadence="hourly"} 1793617200' in metrics
    assert "pacspace_recorder_spool_pending_events 0" in metrics
    async with PacspaceClient(url, "tok-bob") as c:
        view = await load_relationship(c, bob, rid, bob.log_key())
    assert [(r.body.kind, r.body.lines[0].quantity) for r in view.records[1:]] == [("delta", "6")]


async def test_one_flush_at_a_time_and_a_relationship_larger_than_a_batch(aiohttp_client, tmp_path, monkeypatch):
    from helpers import served_log_with_two_homes

    from pacspace.client.http import PacspaceClient
    from pacspace.client.records import create_relationship, load_relationship
    from pacspace.recorder import flush as flush_module
    from pacspace.recorder.config import parse_config
    from pacspace.recorder.flush import flush
    from pacspace.recorder.spool import FlushBusy, Spool, SpoolError

    url, acme, bob = await served_log_with_two_homes(aiohttp_client, tmp_path)
    async with PacspaceClient(url, "tok-acme") as c:
        rid = (await create_relationship(c, acme.keys(), "acme", "bob", "1m", home=acme))["relationship"]
    config = parse_config({"recorder": {"data": "spool", "zero_deltas": True, "grace_minutes": 0},
                           "customers": [{"ref": "c1", "relationship": rid, "cadence": "1m"}],
                           "meters": {"use": {"meter": "m", "unit": "u", "value": "v"}}}, tmp_path)
    spool = Spool(config.data)
    async with PacspaceClient(url, "tok-acme") as c:
        with spool.flushing():
            with pytest.raises(FlushBusy):
                await flush(c, acme, spool, config, "2026-11-02T10:00:00Z")
        assert (await flush(c, acme, spool, config, "2026-11-02T10:00:00Z")).committed == 1
        monkeypatch.setattr(flush_module, "BATCH", 50)  # a backlog of 120 one-minute windows: 3 requests
        report = await flush(c, acme, spool, config, "2026-11-02T12:00:00Z")
        assert (report.committed, report.errors) == (120, [])
    async with PacspaceClient(url, "tok-bob") as c:
        view = await load_relationship(c, bob, rid, bob.log_key())
    assert len(view.records) == 122
    # A record claiming events another flush already counted is refused whole.
    stored = spool.record(rid, 2)
    with pytest.raises(SpoolError):
        spool.store_flush([stored.__class__(**{**stored.__dict__, "seq": 999, "tag": b"x" * 32,
                                               "events": (1).to_bytes(8, "big")})], [])
    assert spool.record(rid, 999) is None
    spool.close()


def test_events_no_record_could_carry_are_refused_at_ingest(tmp_path):
    from pacspace.recorder.config import parse_config

    config = parse_config({"recorder": {"dedup_days": 3660}, "customers": [{"ref": "c1", "relationship": "acme:r1"}],
                           "meters": {"use": {"meter": "m", "unit": "u", "value": "v", "dimensions": ["user"]}}}, tmp_path)
    route = config.router(datetime(2026, 11, 3, tzinfo=timezone.utc))

    def ev(v, user="u1"):
        return cloudevent({"specversion": "1.0", "type": "use", "id": "x", "source": "s", "subject": "c1",
                           "time": "2026-11-02T10:00:00Z", "data": {"v": v, "user": user}}, config.meters)

    assert route(ev("1.5"))[1] == "acme:r1"
    with pytest.raises(InvalidEvent, match="256"):
        route(ev(1, "u" * 300))
    with pytest.raises(InvalidEvent, match="digits"):
        route(ev("1" * 31))
    with pytest.raises(InvalidEvent, match="digits"):
        route(ev("0." + "1" * 19))


async def test_a_spool_of_version_2_is_upgraded_and_its_chains_learned_again(aiohttp_client, tmp_path):
    """Version 3 adds each chain's rules view: an older spool opens, and the chains it knew are fetched and
    verified once more (their rules view is built from the whole chain), then extended as before."""
    import sqlite3

    from helpers import served_log_with_two_homes

    from pacspace.client.http import PacspaceClient
    from pacspace.client.records import create_relationship, load_relationship
    from pacspace.recorder.config import parse_config
    from pacspace.recorder.flush import flush
    from pacspace.recorder.spool import Spool

    url, acme, bob = await served_log_with_two_homes(aiohttp_client, tmp_path)
    async with PacspaceClient(url, "tok-acme") as c:
        rid = (await create_relationship(c, acme.keys(), "acme", "bob", "hourly", home=acme))["relationship"]
    config = parse_config({"recorder": {"data": "spool", "grace_minutes": 0},
                           "customers": [{"ref": "c1", "relationship": rid, "cadence": "hourly"}],
                           "meters": {"use": {"meter": "m", "unit": "u", "value": "v"}}}, tmp_path)

    def accept(hour: int) -> None:
        event = cloudevent({"specversion": "1.0", "type": "use", "id": f"e{hour}", "source": "s", "subject": "c1",
                            "time": f"2026-11-02T{hour:02d}:10:00Z", "data": {"v": 1}}, config.meters)
        spool.accept([(event, rid, config.cadence_of[rid].window(f"2026-11-02T{hour:02d}:10:00Z"))], "2026-11-02T00:00:00Z")

    spool = Spool(config.data)
    accept(10)
    async with PacspaceClient(url, "tok-acme") as c:
        assert (await flush(c, acme, spool, config, "2026-11-02T11:00:00Z")).committed == 1
    spool.close()
    conn = sqlite3.connect(config.data / "recorder.db")
    conn.execute("ALTER TABLE chains DROP COLUMN rules")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    spool = Spool(config.data)
    try:
        assert spool._conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert spool.chains([rid])[rid].must_refetch
        accept(11)
        async with PacspaceClient(url, "tok-acme") as c:
            report = await flush(c, acme, spool, config, "2026-11-02T12:00:00Z")
            assert (report.committed, report.learned, report.errors) == (1, 1, [])
            view = await load_relationship(c, acme, rid, acme.log_key())
        assert [r.body.window_start for r in view.records[1:]] == ["2026-11-02T10:00:00Z", "2026-11-02T11:00:00Z"]
        assert view.findings == []
    finally:
        spool.close()


def test_the_recorder_never_seals_what_breaks_a_rule(tmp_path):
    """A plan that would put usage into a closed period (a chain closed behind the recorder's back, say) is refused
    whole before anything is sealed, naming the rule; the chain's rules view advances only with what is sealed."""
    from pacspace.errors import PacspaceError
    from pacspace.recorder.flush import _ruled
    from pacspace.recorder.plan import PlannedRecord
    from pacspace.recorder.spool import Chain
    from pacspace.records.body import Close, Common, Delta, Line, body_hash, encode_body
    from pacspace.records.rules import Ledger

    head = "ab" * 32
    ledger = Ledger(0, head)
    close = Close(Common("acme:r", 1, head, "c", "2026-12-01T00:00:00Z"), "2026-11", 1, 0, 0, head, ())
    from pacspace.records.seal import Opened

    ledger.add(Opened(1, close, encode_body(close), b""))
    chain = Chain("acme:r", bytes(32), 2, body_hash(encode_body(close)), [], ["2026-11"], None, ledger.to_json())

    def delta(period: str, start: str, end: str) -> PlannedRecord:
        body = Delta(Common("acme:r", 2, chain.head, "d", "2026-12-01T00:00:00Z"), period, start, end,
                     (Line("m", "u", "1", {}),))
        return PlannedRecord(body, encode_body(body))

    with pytest.raises(PacspaceError, match="2026-11 is closed: record a correction in the open period"):
        _ruled(chain, [delta("2026-11", "2026-11-30T10:00:00Z", "2026-11-30T11:00:00Z")])
    advanced = _ruled(chain, [delta("2026-12", "2026-12-01T00:00:00Z", "2026-12-01T01:00:00Z")])
    assert Ledger.from_json(advanced).open_periods() == ["2026-12"]
