"""A rogue provider, a careless one and a misbehaving server against a customer who follows two relationships:
whatever happens to one, the other is verified in the same poll, and each outcome is what it claims.

Found by an adversarial review of the monitor; each test failed before its fix. A real in-process server,
behind a proxy that can delay, fail or rewrite one answer; mallory is a rogue provider, acme an honest one.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from helpers import Proxy, accept_as, hour, new_log

from pacspace.client.bill import verify_bill
from pacspace.client.home import Home
from pacspace.client.http import PacspaceClient
from pacspace.client.monitor import Detection, poll
from pacspace.client.monitor_state import MonitorState
from pacspace.client.records import append_body, close_maker, create_relationship, delta_maker, load_relationship
from pacspace.config import ServerConfig
from pacspace.records.body import Common, Delta, Line, body_hash, encode_body
from pacspace.records.rules import RuleBroken
from pacspace.records.seal import _bucket, commitment_for
from pacspace.sequencer import SequencerConfig
from pacspace.server.app import create_app
from pacspace.datadir import open_records


class SlowProxy(Proxy):
    """The proxy of tests/helpers.py, plus ``delay(path)`` seconds before answering and ``fail(path)`` -> a status."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.delay = lambda path: 0.0
        self.fail = lambda path: None

    async def handle(self, request):  # type: ignore[no-untyped-def]
        from aiohttp import web

        if self.delay(request.path):
            await asyncio.sleep(self.delay(request.path))
        if self.fail(request.path):
            return web.json_response({"error": "overloaded", "message": "try later"}, status=self.fail(request.path))
        return await super().handle(request)


@pytest.fixture
async def w(aiohttp_client, aiohttp_server, tmp_path, log_database):
    new_log(tmp_path / "log", database=log_database)
    store = open_records(tmp_path / "log", log_database)
    for name, role in (("acme", "provider"), ("mallory", "provider"), ("bob", "customer")):
        store.add_party(name, role, f"tok-{name}", 1)
    store.close()
    app = create_app(ServerConfig(data_dir=tmp_path / "log", sequencer=SequencerConfig(pool_interval=0.005),
                                  database=log_database))
    world = type("World", (), {})()
    world.upstream = str((await aiohttp_client(app)).make_url("")).rstrip("/")
    world.proxy = SlowProxy(world.upstream)
    world.url = str((await aiohttp_server(world.proxy.app())).make_url("")).rstrip("/")
    world.home = {}
    for name in ("acme", "mallory", "bob"):
        home = world.home[name] = Home(tmp_path / name)
        async with PacspaceClient(world.upstream, f"tok-{name}") as c:
            keys = home.create_keys()
            await c.register_keys(keys.public.x25519, keys.public.ed25519)
            home.pin_log_key((await c.log_info())["vkey"])
    world.bad = await _relationship(world, "mallory")
    world.good = await _relationship(world, "acme")
    for rid in (world.bad, world.good):
        await accept_as(world.upstream, world.home["bob"], "tok-bob", rid)
    await _honest(world, world.good, "acme", ["10"])
    world.state = MonitorState(world.home["bob"].path)
    yield world
    world.state.close()


async def _relationship(w, provider: str) -> str:  # type: ignore[no-untyped-def]
    home = w.home[provider]
    async with PacspaceClient(w.upstream, f"tok-{provider}") as c:
        return (await create_relationship(c, home.keys(), provider, "bob", "hourly", home=home))["relationship"]  # type: ignore[no-any-return]


async def _honest(w, rid: str, provider: str, quantities: list[str], start: int = 0) -> None:  # type: ignore[no-untyped-def]
    home = w.home[provider]
    async with PacspaceClient(w.upstream, f"tok-{provider}") as c:
        view = await load_relationship(c, home, rid, home.log_key())
        for n, q in enumerate(quantities):
            await append_body(c, home, view, delta_maker("2026-11", hour(start + n), [Line("llm.requests", "request", q, {})]))


async def _raw(w, provider: str, rid: str, make) -> None:  # type: ignore[no-untyped-def]
    """The next record with any signed body bytes, ``make(seq, prev) -> bytes``: what a rogue provider can log."""
    home = w.home[provider]
    async with PacspaceClient(w.upstream, f"tok-{provider}") as c:
        view = await load_relationship(c, home, rid, home.log_key())
        head = view.head
        encoded = make(head.next_seq, head.head)
        signature = home.keys().ed25519.sign(encoded)
        plain = struct.pack(">I", len(encoded)) + encoded + signature
        plain += bytes(_bucket(len(plain)) - len(plain))
        keys = view.keys
        record_key, tag, nonce = keys.record_key(head.next_seq), keys.tag(head.next_seq), os.urandom(12)
        blob = bytes([1]) + nonce + commitment_for(record_key) + AESGCM(record_key).encrypt(nonce, plain, tag)
        await c.append(rid, head.next_seq, tag, blob)


async def _poll(w, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    async with PacspaceClient(w.url, "tok-bob", timeout=timeout) as c:
        return await poll(c, w.home["bob"], w.state, w.home["bob"].log_key())


def _outcome(report, rid):  # type: ignore[no-untyped-def]
    return next(o for o in report.outcomes if o.relationship == rid)


async def test_a_slow_answer_about_one_relationship_holds_back_no_other(w):
    await _honest(w, w.bad, "mallory", ["1"])
    w.proxy.delay = lambda path: 3.0 if path == f"/v1/relationships/{w.bad}/records" else 0.0
    report = await _poll(w, timeout=1.0)
    assert _outcome(report, w.bad).error is not None and report.exit_code == 3
    assert _outcome(report, w.good).new_records == 2 and len(w.state.copies(w.good)) == 2


async def test_a_signed_body_that_does_not_parse_is_bad_ciphertext_with_evidence(w):
    await _raw(w, "mallory", w.bad, lambda seq, prev: b"\xff not a body")
    report = await _poll(w)
    bad = _outcome(report, w.bad).detection
    assert bad is not None and bad.kind == "bad_ciphertext" and "schema" in str(bad)
    assert json.loads(open(bad.evidence_path).read())["ciphertext"]
    assert _outcome(report, w.good).new_records == 2


async def test_a_new_finding_is_not_hidden_by_an_error_elsewhere(w):
    await _poll(w)
    w.proxy.fail = lambda path: 503 if path == f"/v1/relationships/{w.bad}" else None
    rid = w.good
    await _raw(w, "acme", rid, lambda seq, prev: encode_body(Delta(
        Common(rid, seq, prev, "neg", "2026-11-03T00:00:00Z"), "2026-11", *hour(3), (Line("llm.requests", "request", "-4", {}),))))
    report = await _poll(w)
    assert [f.kind for f in report.findings] == ["negative_quantity"] and _outcome(report, w.bad).error is not None
    assert report.exit_code == 7


async def test_server_errors_are_errors_and_each_bad_proof_keeps_its_own_evidence(w):
    await _poll(w)
    await _honest(w, w.good, "acme", ["1"], start=1)
    w.proxy.fail = lambda path: 503 if path == "/v1/proof/consistency" else None
    report = await _poll(w)  # the tiles prove the checkpoints consistent: nothing to report
    assert report.exit_code == 0 and report.new_records == 1
    await _honest(w, w.good, "acme", ["1"], start=2)
    w.proxy.fail = lambda path: 503 if path == "/v1/proof/consistency" or path.startswith("/tile/") else None
    with pytest.raises(Exception) as raised:
        await _poll(w)
    assert not isinstance(raised.value, Detection)  # nothing to judge the log by: an error, not a detection
    w.proxy.fail = lambda path: None

    def one_hash_short(path, body):  # type: ignore[no-untyped-def]
        if path == "/v1/proof/consistency":
            data = json.loads(body)
            data["hashes"] = data["hashes"][:-1]
            return json.dumps(data).encode()
        return body

    files = set()
    for k in range(2):
        await _honest(w, w.good, "acme", ["1", "1"], start=3 + 2 * k)
        w.proxy.alter = one_hash_short
        report = await _poll(w)
        (found,) = report.detections
        saved = json.loads(open(found.evidence_path).read())
        assert int(saved["later_checkpoint"].splitlines()[1]) == report.checkpoint_size
        files.add(found.evidence_path)
    assert len(files) == 2


async def test_a_detection_the_copy_got_past_is_not_in_later_bills(w):
    await _poll(w)
    await _honest(w, w.good, "acme", ["2", "3"], start=1)

    def swapped(path, body):  # type: ignore[no-untyped-def]
        if path == f"/v1/relationships/{w.good}/records":
            data = json.loads(body)
            first, second = data["records"][0], data["records"][1]
            first["tag"], second["tag"] = second["tag"], first["tag"]
            return json.dumps(data).encode()
        return body

    w.proxy.alter = swapped
    stuck = _outcome(await _poll(w), w.good).detection
    assert stuck is not None and stuck.seq == 2
    assert verify_bill(w.state, w.home["bob"].log_key(), w.good, "2026-11").stopped  # shown while it holds
    w.proxy.alter = lambda path, body: body
    home = w.home["acme"]
    async with PacspaceClient(w.upstream, "tok-acme") as c:
        view = await load_relationship(c, home, w.good, home.log_key())
        await append_body(c, home, view, close_maker(view, "2026-11"))
    assert (await _poll(w)).exit_code == 0
    bill = verify_bill(w.state, w.home["bob"].log_key(), w.good, "2026-11")
    assert bill.verdict == "match" and bill.stopped == []


async def test_a_followed_relationship_the_server_stops_listing_is_still_followed(w):
    assert (await _poll(w)).relationships == 2

    def hide(path, body):  # type: ignore[no-untyped-def]
        if path == "/v1/relationships":
            data = json.loads(body)
            data["relationships"] = [r for r in data["relationships"] if r["relationship"] != w.good]
            return json.dumps(data).encode()
        return body

    w.proxy.alter = hide
    await _honest(w, w.good, "acme", ["99", "99"], start=5)
    report = await _poll(w)
    assert _outcome(report, w.good).new_records == 2 and "leaves out" in (_outcome(report, w.good).note or "")
    w.proxy.fail = lambda path: 404 if path == f"/v1/relationships/{w.good}" else None
    hidden = _outcome(await _poll(w), w.good).detection
    assert hidden is not None and hidden.kind == "relationship_hidden" and hidden.exit_code == 21


async def test_two_monitors_on_one_home_take_turns(w):
    await _honest(w, w.good, "acme", [str(i) for i in range(1, 20)], start=1)
    bob = w.home["bob"]

    async def one():  # type: ignore[no-untyped-def]
        state = MonitorState(bob.path)
        try:
            async with PacspaceClient(w.url, "tok-bob") as c:
                return await poll(c, bob, state, bob.log_key())
        finally:
            state.close()

    first, second = await asyncio.gather(one(), one())
    assert first.exit_code == second.exit_code == 0
    assert first.new_records + second.new_records == 22 and len(w.state.copies(w.good)) == 21  # and mallory's genesis


async def test_a_typo_cannot_close_a_month_that_has_not_begun(w):
    home = w.home["acme"]
    async with PacspaceClient(w.upstream, "tok-acme") as c:
        view = await load_relationship(c, home, w.good, home.log_key())
        await append_body(c, home, view, close_maker(view, "2026-11"))
        with pytest.raises(RuleBroken, match="has not begun"):
            close_maker(view, "2099-11")
        assert body_hash(view.records[-1].opened.encoded) == view.head.head  # nothing was sent


async def test_a_bundle_of_a_period_with_findings_says_so(w):
    from pacspace.client.evidence import export_bundle, verify_bundle

    rid = w.good
    await _raw(w, "acme", rid, lambda seq, prev: encode_body(Delta(  # the same line, the same hour: counted twice
        Common(rid, seq, prev, "again", "2026-11-03T00:00:00Z"), "2026-11", *hour(0), (Line("llm.requests", "request", "10", {}),))))
    home = w.home["acme"]
    async with PacspaceClient(w.upstream, "tok-acme") as c:
        view = await load_relationship(c, home, rid, home.log_key())
        await append_body(c, home, view, close_maker(view, "2026-11"))
    report = await _poll(w)
    assert [f.kind for f in report.findings] == ["overlapping_window"]
    bundle = export_bundle(w.state, w.home["bob"].log_key(), rid, "2026-11")
    checked = verify_bundle(json.loads(json.dumps(bundle)), w.home["bob"].log_key())
    assert [f.kind for f in checked.findings] == ["overlapping_window"]
    assert [t.quantity for t in checked.totals] == ["20"]  # the close counts it: flagged, not excluded
