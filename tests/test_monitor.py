"""The monitor against a server that misbehaves on purpose, in one way per test.

A proxy stands between the monitor and the real server and alters exactly one
answer; everything behind it (log, records, crypto) is real.
"""

from __future__ import annotations

import base64
import json
import os
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import Proxy, accept_as, add_two_parties, hour, register_two_homes, new_log

from pacspace.note import NoteSigner
from pacspace.client.http import PacspaceClient
from pacspace.client.monitor import EXIT_CODES, Detection, poll
from pacspace.client.monitor_state import MonitorState
from pacspace.client.records import append_body, create_relationship, delta_maker, load_relationship
from pacspace.config import ServerConfig
from pacspace.datadir import load_signer
from pacspace.records.body import Common, Delta, Line
from pacspace.records.seal import seal
from pacspace.sequencer import SequencerConfig
from pacspace.server.app import create_app



@pytest.fixture
async def world(aiohttp_client, aiohttp_server, tmp_path, log_database):
    """A served log on each backend (log_database), a relationship with three deltas, the customer's monitor."""
    new_log(tmp_path / "log", database=log_database)
    add_two_parties(tmp_path / "log", log_database)
    app = create_app(ServerConfig(data_dir=tmp_path / "log", sequencer=SequencerConfig(pool_interval=0.01),
                                  database=log_database))
    real = await aiohttp_client(app)
    upstream = str(real.make_url("")).rstrip("/")
    proxy = Proxy(upstream)
    proxy_server = await aiohttp_server(proxy.app())
    acme, bob = await register_two_homes(upstream, tmp_path)
    async with PacspaceClient(upstream, "tok-acme") as c:
        rid = (await create_relationship(c, acme.keys(), "acme", "bob"))["relationship"]
        view = await load_relationship(c, acme, rid, acme.log_key())
        for n, q in enumerate(("10", "20", "30")):
            await append_body(c, acme, view, delta_maker("2026-11", hour(n), [Line("llm.requests", "request", q, {})]))
    await accept_as(upstream, bob, "tok-bob", rid)
    w = type("World", (), {})()
    w.upstream, w.proxy, w.acme, w.bob, w.rid, w.view, w.data = upstream, proxy, acme, bob, rid, view, tmp_path / "log"
    w.url = str(proxy_server.make_url("")).rstrip("/")
    w.state = MonitorState(bob.path)
    return w


async def monitor_once(w):
    async with PacspaceClient(w.url, "tok-bob") as c:
        return await poll(c, w.bob, w.state, w.bob.log_key())


async def detected(w, kind):
    """The poll's detection of ``kind``: raised if it is about the log, else reported for its relationship."""
    try:
        report = await monitor_once(w)
    except Detection as raised:
        found = raised
    else:
        assert report.detections, "the poll detected nothing"
        found = report.detections[0]
        assert report.exit_code == EXIT_CODES[kind]
    assert found.kind == kind, (found.kind, str(found))
    assert found.exit_code == EXIT_CODES[kind]
    saved = json.loads(open(found.evidence_path).read())
    assert saved["kind"] == kind and saved["message"]
    assert oct(os.stat(found.evidence_path).st_mode & 0o777) == "0o600"
    return found


def rewrite_records(w, change):
    def alter(path, body):
        if path.endswith("/records") and path.startswith("/v1/relationships/"):
            data = json.loads(body)
            data["records"] = change(data["records"])
            return json.dumps(data).encode()
        return body

    w.proxy.alter = alter


async def test_honest_server_then_incremental_polls(world):
    report = await monitor_once(world)
    assert report.new_records == 4 and report.relationships == 1
    # The copy holds relationship secrets: private to this party, WAL files included.
    for name in ("monitor.db", "monitor.db-wal"):
        assert (world.bob.path / name).stat().st_mode & 0o777 == 0o600
    assert len(world.state.copies(world.rid)) == 4
    async with PacspaceClient(world.upstream, "tok-acme") as c:
        await append_body(c, world.acme, world.view, delta_maker("2026-11", hour(3), [Line("llm.requests", "request", "5", {})]))
    assert (await monitor_once(world)).new_records == 1
    assert (await monitor_once(world)).new_records == 0


async def test_bad_checkpoint_signature(world):
    def alter(path, body):
        if path == "/checkpoint":
            text = body.decode()
            i = text.index("\u2014 ") + 30
            return (text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1:]).encode()
        return body

    world.proxy.alter = alter
    found = await detected(world, "bad_checkpoint_signature")
    assert "checkpoint" in found.evidence


async def test_rollback(world):
    await monitor_once(world)
    old = world.state.latest_checkpoint()
    async with PacspaceClient(world.upstream, "tok-acme") as c:
        await append_body(c, world.acme, world.view, delta_maker("2026-11", hour(3), [Line("llm.requests", "request", "1", {})]))
    await monitor_once(world)
    world.proxy.alter = lambda path, body: old if path == "/checkpoint" else body
    found = await detected(world, "rollback")
    assert found.evidence["earlier_checkpoint"] and found.evidence["later_checkpoint"] == old.decode()


async def _grow(world, n=2):
    """``n`` more deltas, each in a minute of its own from November 10 on, in one batch."""
    from datetime import datetime, timedelta, timezone

    from pacspace.records.body import Common, body_hash

    view = world.view
    items = []
    head = view.head
    seq, prev = head.next_seq, head.head
    for _ in range(n):
        start = datetime(2026, 11, 10, tzinfo=timezone.utc) + timedelta(minutes=seq)
        window = (start.strftime("%Y-%m-%dT%H:%M:%SZ"), (start + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
        body = Delta(Common(world.rid, seq, prev, f"g{seq}", "2026-11-30T00:00:00Z"), "2026-11", *window,
                     (Line("llm.requests", "request", "1", {}),))
        sealed = seal(body, view.keys, world.acme.keys().ed25519)
        items.append({"relationship": world.rid, "seq": seq, "tag": base64.b64encode(sealed.tag).decode(),
                      "ciphertext": base64.b64encode(sealed.blob).decode()})
        seq, prev = seq + 1, body_hash(sealed.body)
    async with PacspaceClient(world.upstream, "tok-acme") as c:
        assert (await c.append_batch(items))["rejected"] == 0
        world.view = await load_relationship(c, world.acme, world.rid, world.acme.log_key())


def _serve_bad_consistency(world):
    def alter(path, body):
        if path == "/v1/proof/consistency":
            data = json.loads(body)
            data["hashes"] = data["hashes"][:-1]  # one hash missing
            return json.dumps(data).encode()
        return body

    world.proxy.alter = alter


async def test_a_wrong_consistency_proof_is_not_a_fork_when_the_tiles_agree(world):
    await monitor_once(world)
    await _grow(world)
    _serve_bad_consistency(world)
    report = await monitor_once(world)
    # The log's own tiles prove the two checkpoints consistent: not a fork, and the poll goes on.
    assert [d.kind for d in report.detections] == ["bad_proof"] and report.exit_code == 20
    assert report.new_records == 2
    saved = json.loads(open(report.detections[0].evidence_path).read())
    assert saved["kind"] == "bad_proof" and saved["earlier_checkpoint"] and saved["later_checkpoint"]
    world.proxy.alter = lambda path, body: body
    await _grow(world)
    assert (await monitor_once(world)).exit_code == 0


async def test_a_wrong_proof_with_wrong_tiles_proves_nothing_and_stores_nothing(world):
    await monitor_once(world)
    before = world.state.latest_checkpoint()
    await _grow(world)

    def alter(path, body):
        if path == "/v1/proof/consistency":
            return json.dumps({"hashes": [base64.b64encode(bytes(32)).decode()]}).encode()
        if path.startswith("/tile/"):
            return bytes(len(body))
        return body

    world.proxy.alter = alter
    found = await detected(world, "bad_proof")
    assert "proves nothing" in str(found)
    assert world.state.latest_checkpoint() == before
    world.proxy.alter = lambda path, body: body
    honest = await monitor_once(world)
    assert honest.exit_code == 0 and honest.new_records == 2


async def _fork(world, tmp_path, aiohttp_client, size):
    """A second log under the same key whose tree of ``size`` leaves differs from the real one: a fork."""
    import shutil

    from helpers import fill_log

    from pacspace.datadir import init_log

    fork = tmp_path / "fork"
    fork.mkdir(mode=0o700)
    shutil.copy(world.data / "log.key", fork / "log.key")
    init_log(fork, load_signer(world.data).name, int(time.time()))
    await fill_log(fork, size)
    app = create_app(ServerConfig(data_dir=fork, sequencer=SequencerConfig(pool_interval=0.01)))
    return str((await aiohttp_client(app)).make_url("")).rstrip("/")


@pytest.mark.parametrize("extra", [3, 0])
async def test_a_fork_is_reported_only_with_proof_a_stranger_can_check(world, tmp_path, aiohttp_client, extra):
    import subprocess
    import sys

    await monitor_once(world)
    verified = open_checkpoint_size(world.state.latest_checkpoint())
    forked = await _fork(world, tmp_path, aiohttp_client, verified + extra)
    world.proxy.route = lambda path: forked if path == "/checkpoint" or path.startswith(("/tile/", "/v1/proof/")) \
        else world.upstream
    found = await detected(world, "inconsistent_checkpoints")
    saved = json.loads(open(found.evidence_path).read())
    assert saved["format"] == "pacspace.fork-evidence/v1"
    vkey = (await _log_info(world))["vkey"]
    check = subprocess.run([sys.executable, "-m", "pacspace", "evidence", "verify", found.evidence_path,
                            "--log-key", vkey], capture_output=True, text=True)
    assert check.returncode == 0 and "fork proven" in check.stdout, check.stderr
    # The same file with one hash of its path changed proves nothing.
    if saved["consistency_path"]:
        saved["consistency_path"][0] = base64.b64encode(bytes(32)).decode()
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(saved))
        check = subprocess.run([sys.executable, "-m", "pacspace", "evidence", "verify", str(bad), "--log-key", vkey],
                               capture_output=True, text=True)
        assert check.returncode == 6 and "does not prove a fork" in check.stderr


def open_checkpoint_size(note: bytes) -> int:
    return int(note.split(b"\n")[1])


async def _log_info(world):
    async with PacspaceClient(world.upstream) as c:
        return await c.log_info()


async def test_inclusion_fails_for_an_altered_ciphertext(world):
    def change(records):
        blob = bytearray(base64.b64decode(records[2]["ciphertext"]))
        blob[-1] ^= 1
        records[2]["ciphertext"] = base64.b64encode(bytes(blob)).decode()
        return records

    rewrite_records(world, change)
    await detected(world, "inclusion_failed")


async def test_a_gap_in_the_chain(world):
    rewrite_records(world, lambda records: records[:2] + records[3:])
    await detected(world, "chain_broken")


async def test_reordered_records_fail_the_tag(world):
    def change(records):
        a, b = records[1], records[2]
        a_seq, b_seq = a["seq"], b["seq"]
        a["seq"], b["seq"] = b_seq, a_seq
        return [records[0], b, a] + records[3:]

    rewrite_records(world, change)
    await detected(world, "bad_tag")


async def test_a_logged_record_that_does_not_decrypt(world):
    # A provider logs garbage under a valid tag: it is in the log, but it is not a record.
    keys = world.view.keys
    tag = keys.tag(4)
    blob = b"\x01" + bytes(12) + bytes(32) + bytes(300)
    async with PacspaceClient(world.upstream, "tok-acme") as c:
        await c.append(world.rid, 4, tag, blob)
    await detected(world, "bad_ciphertext")


async def test_a_record_signed_by_another_key(world):
    other = Ed25519PrivateKey.generate()
    head = world.view.head
    body = Delta(Common(world.rid, head.next_seq, head.head, "x", "2026-11-03T00:00:00Z"), "2026-11", *hour(5),
                 (Line("llm.requests", "request", "1", {}),))
    sealed = seal(body, world.view.keys, other)
    async with PacspaceClient(world.upstream, "tok-acme") as c:
        await c.append(world.rid, sealed.seq, sealed.tag, sealed.blob)
    await detected(world, "bad_signature")


async def test_a_detection_keeps_what_verified_before_it_and_the_next_honest_poll_goes_on(world):
    rewrite_records(world, lambda records: [r for r in records if r["seq"] != 2])
    report = await monitor_once(world)
    assert [d.kind for d in report.detections] == ["chain_broken"] and report.exit_code == 14
    # The checkpoint and the records before the gap are kept; nothing of the bad record.
    assert [c.seq for c in world.state.copies(world.rid)] == [0, 1]
    assert world.state.latest_checkpoint() is not None
    # Seen again: reported again, its evidence saved once.
    again = await monitor_once(world)
    assert again.detections[0].evidence_path == report.detections[0].evidence_path
    assert world.state.detections(world.rid)[0].times == 2
    world.proxy.alter = lambda path, body: body
    honest = await monitor_once(world)
    assert honest.exit_code == 0 and honest.new_records == 2
    assert [c.seq for c in world.state.copies(world.rid)] == [0, 1, 2, 3]


async def test_nothing_is_stored_from_a_poll_whose_log_checkpoint_fails(world):
    world.proxy.alter = lambda path, body: body.replace("\u2014".encode(), b"-") if path == "/checkpoint" else body
    await detected(world, "bad_checkpoint_signature")
    assert world.state.copies(world.rid) == []
    assert world.state.latest_checkpoint() is None


async def test_bill_verify_rechecks_the_stored_copy(world):
    from pacspace.client.bill import BillError, compare, verify_bill
    from pacspace.client.records import close_maker

    async with PacspaceClient(world.upstream, "tok-acme") as c:
        await append_body(c, world.acme, world.view, close_maker(world.view, "2026-11"))
    await monitor_once(world)
    bill = verify_bill(world.state, world.bob.log_key(), world.rid, "2026-11")
    assert [(x.meter, x.committed) for x in bill.lines] == [("llm.requests", "60")]
    assert bill.close.checkpoint.timestamp > 0 and bill.close.receipt.startswith("c2sp.org/tlog-proof@v1")
    compare(bill, {("llm.requests", ()): "60"})
    assert bill.matches and bill.exit_code == 0
    compare(bill, {("llm.requests", ()): "61", ("llm.extra", ()): "1"})
    assert not bill.matches and bill.exit_code == 4
    # Any byte changed in the stored copy is caught when the bill is checked.
    import sqlite3

    conn = sqlite3.connect(world.bob.path / "monitor.db")
    conn.execute("UPDATE records SET body = CAST(replace(CAST(body AS TEXT), '\"20\"', '\"21\"') AS BLOB) WHERE seq = 2")
    conn.commit()
    conn.close()
    with pytest.raises(BillError):
        verify_bill(world.state, world.bob.log_key(), world.rid, "2026-11")


async def test_evidence_bundle_discloses_one_period_and_verifies_offline(world, tmp_path):
    from pacspace.client.evidence import EvidenceError, export_bundle, verify_bundle
    from pacspace.client.records import close_maker

    async with PacspaceClient(world.upstream, "tok-acme") as c:
        await append_body(c, world.acme, world.view, close_maker(world.view, "2026-11"))
        await append_body(c, world.acme, world.view, delta_maker("2026-12", hour(0, "2026-12-01"), [Line("llm.requests", "request", "7", {})]))
    await monitor_once(world)
    bundle = export_bundle(world.state, world.bob.log_key(), world.rid, "2026-11")
    text = json.dumps(bundle)
    # Only this period's record keys; never the secret, the tag key, or other periods' records.
    assert [r["seq"] for r in bundle["records"]] == [1, 2, 3, 4]
    assert base64.b64encode(world.view.keys.secret).decode() not in text
    assert base64.b64encode(world.view.keys.tag_key).decode() not in text
    result = verify_bundle(json.loads(text), world.bob.log_key())
    assert [(t.meter, t.quantity) for t in result.totals] == [("llm.requests", "60")]
    assert result.provider_fingerprint == world.acme.keys().public.fingerprint()
    # Random single-byte changes anywhere in a record, a proof, a key or a checkpoint are caught.
    import random

    from pacspace.errors import PacspaceError

    rng = random.Random(20261127)
    fields = ["ciphertext", "tag", "record_key", "proof", "checkpoint"]
    for _ in range(300):
        tampered = json.loads(text)
        record = rng.choice(tampered["records"])
        field = rng.choice(fields)
        if field == "checkpoint":
            size = rng.choice(list(tampered["checkpoints"]))
            note = tampered["checkpoints"][size]
            at = rng.randrange(len(note))
            tampered["checkpoints"][size] = note[:at] + chr(ord(note[at]) ^ rng.choice([1, 2, 4, 8, 16])) + note[at + 1:]
        else:
            if field == "proof":
                if not record["proof"]:
                    continue
                k = rng.randrange(len(record["proof"]))
                raw = bytearray(base64.b64decode(record["proof"][k]))
            else:
                raw = bytearray(base64.b64decode(record[field]))
            raw[rng.randrange(len(raw))] ^= rng.randrange(1, 256)
            encoded = base64.b64encode(bytes(raw)).decode()
            if field == "proof":
                record["proof"][k] = encoded
            else:
                record[field] = encoded
        with pytest.raises(PacspaceError):
            verify_bundle(tampered, world.bob.log_key())
    # A record left out breaks the chain.
    tampered = json.loads(text)
    tampered["records"].pop(1)
    with pytest.raises(EvidenceError):
        verify_bundle(tampered, world.bob.log_key())


async def test_a_fork_in_the_chain(world):
    # The provider logs a record whose prev does not name the record before it.
    head = world.view.head
    body = Delta(Common(world.rid, head.next_seq, "ab" * 32, "fork", "2026-11-03T00:00:00Z"), "2026-11",
                 *hour(5), (Line("llm.requests", "request", "1", {}),))
    sealed = seal(body, world.view.keys, world.acme.keys().ed25519)
    async with PacspaceClient(world.upstream, "tok-acme") as c:
        await c.append(world.rid, sealed.seq, sealed.tag, sealed.blob)
    found = await detected(world, "chain_broken")
    assert "fork" in str(found)


async def test_a_record_served_twice(world):
    rewrite_records(world, lambda records: records[:3] + [dict(records[2])] + records[3:])
    await detected(world, "chain_broken")


async def test_random_byte_changes_in_the_stored_copy_are_caught(world):
    """Any single byte changed in monitor.db's records, proofs or checkpoints fails bill verify."""
    import random
    import sqlite3

    from pacspace.client.bill import BillError, verify_bill
    from pacspace.client.records import close_maker

    async with PacspaceClient(world.upstream, "tok-acme") as c:
        await append_body(c, world.acme, world.view, close_maker(world.view, "2026-11"))
    await monitor_once(world)
    verify_bill(world.state, world.bob.log_key(), world.rid, "2026-11")
    path = world.bob.path / "monitor.db"
    world.state.close()  # the last connection's close folds the WAL into the file
    pristine = path.read_bytes()
    rng = random.Random(7)
    columns = [("records", "blob"), ("records", "tag"), ("records", "body"), ("records", "signature"),
               ("records", "proof"), ("checkpoints", "note")]
    for _ in range(60):
        table, column = rng.choice(columns)
        conn = sqlite3.connect(path)
        key = "seq" if table == "records" else "size"
        rowid, value = rng.choice(conn.execute(f"SELECT {key}, {column} FROM {table}").fetchall())
        raw = bytearray(value)
        raw[rng.randrange(len(raw))] ^= rng.randrange(1, 256)
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (bytes(raw), rowid))
        conn.commit()
        conn.close()
        state = MonitorState(world.bob.path)
        try:
            with pytest.raises(BillError):
                verify_bill(state, world.bob.log_key(), world.rid, "2026-11")
        finally:
            state.close()
        for suffix in ("-wal", "-shm"):
            (world.bob.path / ("monitor.db" + suffix)).unlink(missing_ok=True)
        path.write_bytes(pristine)


async def test_a_checkpoint_without_the_policy_quorum(world):
    from pacspace.policy import parse_policy

    witness = NoteSigner("witness.example/w1", Ed25519PrivateKey.generate())
    policy = parse_policy(f"witness w1 {witness.cosignature_verifier.vkey()}\nquorum w1\n")
    async with PacspaceClient(world.url, "tok-bob") as c:
        with pytest.raises(Detection) as info:
            await poll(c, world.bob, world.state, world.bob.log_key(), policy=policy)
    assert info.value.kind == "unwitnessed_checkpoint" and info.value.exit_code == 19


async def test_the_monitor_reads_tiles_keeps_the_full_ones_and_asks_for_no_proof(world):
    """Inclusion is computed locally from the log's tiles; full tiles a verified proof used are kept, so the
    next poll fetches only the right edge; the proof endpoint is never needed while the tiles are right."""
    asked: list[str] = []

    def count(path, body):
        asked.append(path)
        return body

    world.proxy.alter = count
    await _grow(world, 300)  # past one full tile of 256 entries
    report = await monitor_once(world)
    assert report.exit_code == 0 and report.new_records == 304
    assert not [p for p in asked if p.startswith("/v1/proof/inclusion")]
    first = [p for p in asked if p.startswith("/tile/")]
    assert "/tile/0/000" in first and world.state.tiles([(0, 0)])
    asked.clear()
    await _grow(world, 2)
    assert (await monitor_once(world)).new_records == 2
    again = [p for p in asked if p.startswith("/tile/")]
    assert "/tile/0/000" not in again and all(".p/" in p for p in again)  # only the right edge


async def test_wrong_tiles_fall_back_to_the_proof_endpoint_and_are_reported(world):
    def alter(path, body):
        return bytes(len(body)) if path.startswith("/tile/0/") else body

    world.proxy.alter = alter
    report = await monitor_once(world)
    assert report.new_records == 4 and [d.kind for d in report.detections] == ["bad_proof"]
    assert "tiles" in str(report.detections[0])
    assert world.state.tiles([(0, 0)]) == {}  # nothing of a wrong tile is kept


async def test_members_a_server_adds_to_its_rows_change_nothing_the_monitor_checks(world):
    """The monitor keeps what it decodes and opens ahead beside the server's rows, never in them: a page whose
    rows carry members of the server's own choosing verifies exactly as it would without them."""
    import json as _json

    altered = []

    def alter(path, body):
        if path.startswith("/v1/relationships/") and path.endswith("/records"):
            altered.append(path)
            page = _json.loads(body)
            for row in page["records"]:
                row.update({"decoded": ["x", "y"], "opened": {"seq": row["seq"]}, "prepared": True, "plan": [[0, 0]]})
            return _json.dumps(page).encode()
        return body

    world.proxy.alter = alter
    await _grow(world, 3)
    report = await monitor_once(world)
    assert altered and report.exit_code == 0 and report.new_records >= 3


@pytest.mark.parametrize("seq", [-1, 1 << 64])
async def test_a_seq_no_record_can_have_is_that_relationships_detection_alone(world, seq):
    import json as _json

    def alter(path, body):
        if path == f"/v1/relationships/{world.rid}/records":
            page = _json.loads(body)
            if page["records"]:
                page["records"][-1]["seq"] = seq
            return _json.dumps(page).encode()
        return body

    world.proxy.alter = alter
    await _grow(world, 2)
    report = await monitor_once(world)  # a detection for this relationship, never an error that stops the poll
    assert [o.detection.kind for o in report.outcomes if o.detection] == ["inclusion_failed"]
