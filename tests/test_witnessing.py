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
    lines += ["group two-of-three 2 w0 w1 w2", "group all-three all w0 w1 w2", f"quorum {quorum}"]
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
    assert ok.returncode == 0 and "witnessed: by w0, w1, w2" in ok.stdout and "before 2999-01-01T00:00:00Z: yes" in ok.stdout
    late = verify("--before", "2001-01-01T00:00:00Z")
    assert late.returncode == 1 and "NOT before" in late.stderr
