"""A log with witnesses: a quorum of cosignatures on every published checkpoint, or nothing published."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import entry, free_port, new_log

from pacspace.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from pacspace.config import ServerConfig
from pacspace.datadir import load_signer
from pacspace.note import NoteSigner, parse_vkey
from pacspace.policy import parse_policy
from pacspace.sequencer import SequencerConfig
from pacspace.server.app import create_app
from pacspace.server.context import SERVICE
from pacspace.server.witness_app import create_witness_app
from pacspace.server.witnessing import WitnessQuorumFailed


async def setup(tmp_path, aiohttp_server, aiohttp_client, quorum: str, up=(True, True, True)):
    vkey = new_log(tmp_path / "log")
    log_key = parse_vkey(vkey)
    witnesses = [NoteSigner(f"witness.example/w{i}", Ed25519PrivateKey.generate()) for i in range(3)]
    lines = [f"log {vkey}"]
    for i, (w, alive) in enumerate(zip(witnesses, up)):
        if alive:
            server = await aiohttp_server(create_witness_app(tmp_path / f"w{i}", w, {log_key.name: log_key}))
            url = str(server.make_url("")).rstrip("/")
        else:
            url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
        (tmp_path / f"w{i}").mkdir(exist_ok=True)
        lines.append(f"witness w{i} {w.cosignature_verifier.vkey()} {url}")
    # C2SP tlog-policy: a name is a member of one group at most, so only the quorum's group is defined.
    groups = {"two-of-three": "group two-of-three 2 w0 w1 w2", "all-three": "group all-three all w0 w1 w2"}
    lines += [groups[quorum], f"quorum {quorum}"]
    policy_file = tmp_path / "policy"
    policy_file.write_text("\n".join(lines) + "\n")
    config = ServerConfig(data_dir=tmp_path / "log", sequencer=SequencerConfig(pool_interval=0.01),
                          witness_policy=policy_file, witness_timeout=2.0)
    app = create_app(config)
    client = await aiohttp_client(app)
    return client, app[SERVICE].sequencer, parse_policy(policy_file.read_text()), log_key


async def test_quorum_of_two_with_one_witness_down(tmp_path, aiohttp_server, aiohttp_client):
    for i in range(3):
        (tmp_path / f"w{i}").mkdir()
    client, seq, policy, log_key = await setup(tmp_path, aiohttp_server, aiohttp_client, "two-of-three", up=(True, False, True))
    results = await seq.submit_many([entry(i) for i in range(10)])
    published = open_checkpoint(await (await client.get("/checkpoint")).read(), log_key)
    assert published.size == 10
    cosigners = policy.cosigners(published.note)
    assert set(cosigners) == {"w0", "w2"} and policy.satisfied(set(cosigners))
    assert all(t > 0 for t in cosigners.values())
    # The receipt's checkpoint (stored) carries the cosignatures too; witnesses learn sizes and keep up.
    assert set(policy.cosigners(results[0].checkpoint.note)) == {"w0", "w2"}
    await seq.submit_many([entry(i) for i in range(10, 20)])
    again = open_checkpoint(await (await client.get("/checkpoint")).read(), log_key)
    assert again.size == 20 and set(policy.cosigners(again.note)) == {"w0", "w2"}
    # Clients holding the policy accept it; a checkpoint stripped of its cosignatures is refused.
    from pacspace.errors import SignatureError
    from pacspace.note import Note
    from pacspace.policy import require_quorum

    assert set(require_quorum(policy, again.note)) == {"w0", "w2"}
    with pytest.raises(SignatureError, match="quorum"):
        require_quorum(policy, Note(again.note.text, again.note.signatures[:2]))


async def test_no_quorum_nothing_published(tmp_path, aiohttp_server, aiohttp_client):
    for i in range(3):
        (tmp_path / f"w{i}").mkdir()
    client, seq, policy, log_key = await setup(tmp_path, aiohttp_server, aiohttp_client, "all-three", up=(True, True, False))
    before = await (await client.get("/checkpoint")).read()
    with pytest.raises(WitnessQuorumFailed):
        await seq.submit(entry(1))
    assert await (await client.get("/checkpoint")).read() == before  # not silently published
    assert (await client.get("/tile/0/000.p/1")).status == 404
    metrics = await (await client.get("/metrics")).text()
    assert "pacspace_witness_quorum_failures_total 1" in metrics
    assert seq.state.size == 1  # committed all the same: a later checkpoint publishes it


async def test_witnesses_refuse_a_forked_history(tmp_path, aiohttp_server, aiohttp_client):
    for i in range(3):
        (tmp_path / f"w{i}").mkdir()
    client, seq, policy, log_key = await setup(tmp_path, aiohttp_server, aiohttp_client, "two-of-three")
    await seq.submit_many([entry(i) for i in range(5)])
    # The log's key signs a different tree of a larger size (a split view): no witness cosigns it.
    from pacspace.merkle import ListHashReader, leaf_hash, tree_hash
    from pacspace.server.witnessing import WitnessPool

    signer = load_signer(tmp_path / "log")
    fork = ListHashReader([leaf_hash(b"rewritten %d" % i) for i in range(9)])
    forged = sign_checkpoint(Checkpoint(signer.name, 9, tree_hash(9, fork)), signer, int(time.time()))
    pool = WitnessPool(policy, fork, 2.0)
    pool.known_size = {name: 5 for name in policy.witnesses}
    with pytest.raises(WitnessQuorumFailed):
        await pool.cosign(forged)
    # The honest log goes on being cosigned.
    await seq.submit(entry(99))
    assert open_checkpoint(await (await client.get("/checkpoint")).read(), log_key).size == 6


async def test_receipt_verify_with_policy_reports_when_witnesses_saw_it(tmp_path, aiohttp_server, aiohttp_client):
    import subprocess
    import sys

    for i in range(3):
        (tmp_path / f"w{i}").mkdir()
    client, seq, policy, log_key = await setup(tmp_path, aiohttp_server, aiohttp_client, "two-of-three")
    result = await seq.submit(entry(1))
    from pacspace.receipt import Receipt

    stored = client.app[SERVICE].store.checkpoint_at(result.checkpoint.size)
    receipt = Receipt(result.index, tuple(result.inclusion_proof()), stored, entry(1)).format()
    (tmp_path / "r.tlog-proof").write_text(receipt)

    def verify(*extra):
        return subprocess.run([sys.executable, "-m", "pacspace", "receipt", "verify", str(tmp_path / "r.tlog-proof"),
                               "--log-key", log_key.vkey(), "--policy", str(tmp_path / "policy"), *extra],
                              capture_output=True, text=True)

    ok = verify("--before", "2999-01-01T00:00:00Z")
    assert ok.returncode == 0 and "witnessed: by w0, w1, w2" in ok.stdout and "ok: witnessed before 2999-01-01T00:00:00Z" in ok.stdout
    late = verify("--before", "2001-01-01T00:00:00Z")
    assert late.returncode == 6 and "NOT before" in late.stderr


async def test_a_record_whose_answer_was_lost_shows_once_published_and_its_resend_gets_the_receipt(
    tmp_path, aiohttp_server, aiohttp_client
):
    """The witness goes away: a record is committed but its checkpoint not published, and its sender gets 503.
    Once the witness is back (no server restart), reading the relationship's records shows it, resending it
    answers its receipt, and another record sealed at that seq (a client that lost what it sent) makes the
    server settle the row too."""
    import asyncio
    import base64

    import aiohttp
    from helpers import add_two_parties, register_two_homes

    from pacspace.client.http import PacspaceClient, ServerError
    from pacspace.client.records import create_relationship, load_relationship, now_utc
    from pacspace.receipt import verify_receipt
    from pacspace.records.body import Common, Delta, Line
    from pacspace.records.seal import seal

    vkey = new_log(tmp_path / "log")
    log_key = parse_vkey(vkey)
    add_two_parties(tmp_path / "log")
    (tmp_path / "w0").mkdir()
    witness = NoteSigner("witness.example/w0", Ed25519PrivateKey.generate())

    async def witness_up(port: int = 0):  # type: ignore[no-untyped-def]
        return await aiohttp_server(create_witness_app(tmp_path / "w0", witness, {log_key.name: log_key}), port=port)

    wserver = await witness_up()
    port = wserver.port
    policy = tmp_path / "policy"
    policy.write_text(f"log {vkey}\nwitness w0 {witness.cosignature_verifier.vkey()} http://127.0.0.1:{port}\nquorum w0\n")
    app = create_app(ServerConfig(data_dir=tmp_path / "log", sequencer=SequencerConfig(pool_interval=0.01),
                                  witness_policy=policy, witness_timeout=1.0))
    url = str((await aiohttp_client(app)).make_url("")).rstrip("/")
    service = app[SERVICE]
    lookups = []
    find_leaves = service.link.find_leaves

    async def counted(hashes, size):  # type: ignore[no-untyped-def]
        lookups.append(len(hashes))
        return await find_leaves(hashes, size)

    service.link.find_leaves = counted
    acme, _ = await register_two_homes(url, tmp_path)
    signer = acme.keys().ed25519

    def next_record(view, n: int):  # type: ignore[no-untyped-def]
        head = view.head
        body = Delta(Common(view.rid, head.next_seq, head.head, f"r{n}", now_utc()), "2026-11",
                     "2026-11-02T00:00:00Z", "2026-11-02T01:00:00Z", (Line("llm.requests", "request", str(n), {}),))
        return seal(body, view.keys, signer)

    async with PacspaceClient(url, "tok-acme") as c:
        rids = [(await create_relationship(c, acme.keys(), "acme", "bob", "hourly"))["relationship"] for _ in range(2)]
        views = [await load_relationship(c, acme, rid, acme.log_key()) for rid in rids]
        assert lookups == []  # reading settled records looks nothing up in the log
        await wserver.close()
        lost = [next_record(view, 1) for view in views]
        for rid, sealed in zip(rids, lost):
            with pytest.raises(ServerError) as refused:
                await c.append(rid, sealed.seq, sealed.tag, sealed.blob)
            assert (refused.value.http_status, refused.value.code) == (503, "witness_quorum_failed")
        # Committed but unpublished: not shown yet.
        assert [r["seq"] for r in await c.records(rids[0])] == [0]
        await witness_up(port)
        deadline = time.monotonic() + 20
        while (rows := await c.records(rids[0]))[-1]["seq"] == 0:
            assert time.monotonic() < deadline, "the committed record never showed"
            await asyncio.sleep(0.2)
        assert [r["seq"] for r in rows] == [0, 1] and rows[1]["ciphertext"] == base64.b64encode(lost[0].blob).decode()
        assert isinstance(rows[1]["index"], int) and lookups
        # Resending the identical record answers its receipt.
        body = {"seq": 1, "tag": base64.b64encode(lost[0].tag).decode(), "ciphertext": base64.b64encode(lost[0].blob).decode()}
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer tok-acme"}) as s:
            async with s.post(f"{url}/v1/relationships/{rids[0]}/records", json=body) as resp:
                assert resp.status == 200, await resp.text()
                receipt = await resp.json()
        assert receipt["index"] == rows[1]["index"]
        assert verify_receipt(receipt["proof"], log_key, entry=lost[0].entry).index == receipt["index"]
        # The other relationship's row waits unsettled until something asks: here, another record at its seq.
        assert service.records.has_unsettled(rids[1])
        other = next_record(views[1], 2)
        with pytest.raises(ServerError) as refused:
            await c.append(rids[1], other.seq, other.tag, other.blob)
        assert refused.value.code == "record_conflict"
        assert not service.records.has_unsettled(rids[1])
        assert [r["ciphertext"] for r in await c.records(rids[1])][1:] == [base64.b64encode(lost[1].blob).decode()]
        before = len(lookups)
        await c.records(rids[0])
        await c.records(rids[1])
        assert len(lookups) == before  # settled again: no lookups


async def test_a_restart_with_a_changed_policy_never_repeats_a_witness_line(tmp_path, aiohttp_server, aiohttp_client):
    """w0 cosigns the log; `serve` restarts with w0 and w1 required: the newest checkpoint gets w1's line beside
    w0's, never a second w0 line. Every checkpoint the log published or stored passes a strict C2SP verifier."""
    import strict_c2sp

    from pacspace.storage.sqlite import SqliteLog

    vkey = new_log(tmp_path / "log")
    log_key = parse_vkey(vkey)
    signers = [NoteSigner(f"witness.example/w{i}", Ed25519PrivateKey.generate()) for i in range(2)]
    lines = []
    for i, w in enumerate(signers):
        (tmp_path / f"w{i}").mkdir()
        server = await aiohttp_server(create_witness_app(tmp_path / f"w{i}", w, {log_key.name: log_key}))
        lines.append(f"witness w{i} {w.cosignature_verifier.vkey()} {str(server.make_url('')).rstrip('/')}")
    policy = tmp_path / "policy"
    published: list[bytes] = []

    async def serve(text: str):  # type: ignore[no-untyped-def]
        policy.write_text(text)
        app = create_app(ServerConfig(data_dir=tmp_path / "log", sequencer=SequencerConfig(pool_interval=0.01),
                                      witness_policy=policy, witness_timeout=2.0))
        client = await aiohttp_client(app)
        published.append(await (await client.get("/checkpoint")).read())
        return client, app[SERVICE].sequencer

    client, seq = await serve(f"log {vkey}\n{lines[0]}\nquorum w0\n")
    for batch in range(3):
        await seq.submit_many([entry(batch * 10 + i) for i in range(10)])
        published.append(await (await client.get("/checkpoint")).read())
    before = published[-1]
    await client.close()

    client, seq = await serve(f"log {vkey}\n{lines[0]}\n{lines[1]}\ngroup both all w0 w1\nquorum both\n")
    restarted = published[-1]
    await seq.submit_many([entry(100 + i) for i in range(10)])
    published.append(await (await client.get("/checkpoint")).read())
    await client.close()

    keys = [signers[0].cosignature_verifier.vkey(), signers[1].cosignature_verifier.vkey(),
            signer_timestamp_vkey(tmp_path / "log")]
    store = SqliteLog.open(tmp_path / "log", readonly=True)
    try:
        stored = list(store.checkpoints_newest_first())
    finally:
        store.close()
    assert len(stored) == 5 and restarted in stored and published[-1] == stored[0]
    for note in stored + published:
        strict_c2sp.open_checkpoint(note, vkey, keys)  # raises on a repeated line, bad base64, a wrong key ID...
    # The restart published the same tree with w1's cosignature added and w0's first one kept as it was.
    assert restarted.startswith(before) and restarted.count(b"witness.example/w0") == 1
    assert set(strict_c2sp.open_checkpoint(restarted, vkey, keys).cosigned_at) == {
        "witness.example/w0", "witness.example/w1", log_key.name}


def signer_timestamp_vkey(data_dir) -> str:  # type: ignore[no-untyped-def]
    return load_signer(data_dir).cosignature_verifier.vkey()


async def test_the_log_reads_a_fork_in_the_old_and_the_new_witness_answers(tmp_path, aiohttp_server, caplog):
    """tlog-witness before #280 answered a same-size, different-root checkpoint 409 (no size body); since, 422.
    The log's client takes both as a witness holding another tree at that size, and says so as an error."""
    import logging

    from aiohttp import web

    from pacspace.merkle import ListHashReader, leaf_hash, tree_hash
    from pacspace.server.witnessing import WitnessPool

    signer = NoteSigner("example.com/log", Ed25519PrivateKey.generate())
    tree = ListHashReader([leaf_hash(b"%d" % i) for i in range(8)])
    checkpoint = sign_checkpoint(Checkpoint(signer.name, 8, tree_hash(8, tree)), signer, int(time.time()))
    seen: list[bytes] = []

    def witness(status: int, headers: dict[str, str], body: bytes) -> web.Application:
        async def add_checkpoint(request: web.Request) -> web.Response:
            seen.append(await request.read())
            return web.Response(status=status, body=body, headers=headers)

        app = web.Application()
        app.router.add_post("/add-checkpoint", add_checkpoint)
        return app

    old = await aiohttp_server(witness(409, {"Content-Type": "text/plain"}, b"same size, different root\n"))
    new = await aiohttp_server(witness(422, {"Content-Type": "text/plain"}, b"root mismatch\n"))
    keys = [NoteSigner(f"witness.example/{n}", Ed25519PrivateKey.generate()).cosignature_verifier.vkey() for n in "ab"]
    policy = parse_policy(f"witness old {keys[0]} {str(old.make_url('')).rstrip('/')}\n"
                          f"witness new {keys[1]} {str(new.make_url('')).rstrip('/')}\ngroup g any old new\nquorum g\n")
    pool = WitnessPool(policy, tree, 2.0, known_size={"old": 8, "new": 8})
    with caplog.at_level(logging.INFO, logger="pacspace.witnessing"), pytest.raises(WitnessQuorumFailed):
        await pool.cosign(checkpoint)
    assert all(body.startswith(b"old 8\n\n") for body in seen) and len(seen) == 2  # no proof lines between equal sizes
    forks = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(forks) == 2 and all("another tree at size 8" in m for m in forks), forks
    assert {m.split()[1] for m in forks} == {"old", "new"}
    assert pool.known_size == {"old": 8, "new": 8}  # a fork teaches no size
