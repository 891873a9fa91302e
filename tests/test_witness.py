"""The witness (C2SP tlog-witness): every answer the spec defines, against real signed checkpoints."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import free_port, wait_for_witness

from pacspace.checkpoint import Checkpoint, sign_checkpoint
from pacspace.merkle import EMPTY_ROOT, ListHashReader, consistency_proof, leaf_hash, tree_hash
from pacspace.note import NoteSigner, parse_note
from pacspace.server.witness_app import create_witness_app
from pacspace.witness import Latest, WitnessRefusal, decide, parse_add_checkpoint, parse_log_policy

ORIGIN = "example.com/witnessed-log"
LOG = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
WITNESS = NoteSigner("witness.example/w1", Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
LEAVES = [leaf_hash(b"entry %d" % i) for i in range(300)]
TREE = ListHashReader(LEAVES)
FORK = ListHashReader([leaf_hash(b"other %d" % i) for i in range(300)])


def note(size: int, tree=TREE, signer=LOG) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, size, tree_hash(size, tree)), signer, 1_800_000_000).format()


def body(old: int, size: int, tree=TREE, proof=None, signer=LOG) -> bytes:
    hashes = consistency_proof(old, size, tree) if proof is None else proof
    lines = [f"old {old}"] + [base64.b64encode(h).decode() for h in hashes]
    return ("\n".join(lines) + "\n\n").encode() + note(size, tree, signer)


def latest(size: int, tree=TREE) -> Latest:
    return Latest(size, tree_hash(size, tree), note(size, tree))


LOGS = {ORIGIN: LOG.verifier}


def refusal(raw: bytes, held: Latest | None) -> WitnessRefusal:
    with pytest.raises(WitnessRefusal) as info:
        decide(parse_add_checkpoint(raw), LOGS, held)
    return info.value


def test_decisions_follow_the_spec():
    decide(parse_add_checkpoint(body(0, 10)), LOGS, None)
    decide(parse_add_checkpoint(body(10, 257)), LOGS, latest(10))
    decide(parse_add_checkpoint(body(10, 10)), LOGS, latest(10))  # same checkpoint again: cosign afresh
    other = NoteSigner("example.com/another", Ed25519PrivateKey.generate())
    raw = b"old 0\n\n" + sign_checkpoint(Checkpoint("example.com/another", 1, tree_hash(1, TREE)), other, 1).format()
    assert refusal(raw, None).http_status == 404
    impostor = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    assert refusal(body(0, 10, signer=impostor), None).http_status == 403
    assert refusal(b"old 20\n\n" + note(10), latest(20)).http_status == 400
    stale = refusal(body(5, 20), latest(10))
    assert stale.http_status == 409 and stale.size == 10
    rollback = refusal(body(0, 5), latest(10))
    assert rollback.http_status == 409 and rollback.size == 10
    # C2SP tlog-witness since C2SP/C2SP@95978ca: a same-size checkpoint with another root is 422, not 409.
    fork_same_size = refusal(b"old 10\n\n" + note(10, FORK), latest(10))
    assert fork_same_size.http_status == 422 and fork_same_size.size is None
    fork_bigger = refusal(body(10, 20, tree=FORK), latest(10))
    assert fork_bigger.http_status == 422
    bad_proof = consistency_proof(10, 20, TREE)
    bad_proof[0] = bytes(32)
    assert refusal(body(10, 20, proof=bad_proof), latest(10)).http_status == 422
    assert refusal(body(0, 20, proof=[bytes(32)]), None).http_status == 422


def test_a_size_zero_checkpoint_must_have_the_empty_root():
    empty = sign_checkpoint(Checkpoint(ORIGIN, 0, EMPTY_ROOT), LOG, 1_800_000_000).format()
    decide(parse_add_checkpoint(b"old 0\n\n" + empty), LOGS, None)
    bogus = sign_checkpoint(Checkpoint(ORIGIN, 0, bytes(32)), LOG, 1_800_000_000).format()
    assert refusal(b"old 0\n\n" + bogus, None).http_status == 422
    assert refusal(b"old 0\n\n" + bogus, Latest(0, EMPTY_ROOT, empty)).http_status == 422


def test_proof_lines_between_equal_sizes_are_refused():
    """RFC 6962's consistency proof from a size to itself is empty: any line is a proof that does not verify."""
    extra = base64.b64encode(tree_hash(4, TREE)).decode().encode()
    refused = refusal(b"old 10\n" + extra + b"\n\n" + note(10), latest(10))
    assert refused.http_status == 422
    decide(parse_add_checkpoint(b"old 10\n\n" + note(10)), LOGS, latest(10))


@pytest.mark.parametrize(
    "raw",
    [b"", b"old 01\n\n" + b"x", b"new 1\n\n", b"old 1\n!!!\n\n", b"old 1\nAAAA\n\n", b"old 1\n" + b"AAAA\n" * 64 + b"\n"],
)
def test_malformed_requests(raw):
    from pacspace.errors import PacspaceError

    with pytest.raises(PacspaceError):
        parse_add_checkpoint(raw + note(1))


def test_policy_lines():
    text = f"# witnesses\nlog {LOG.verifier.vkey()} https://log.example\nwitness w1 {WITNESS.cosignature_verifier.vkey()}\nquorum none\n"
    assert parse_log_policy(text) == {ORIGIN: LOG.verifier}
    from pacspace.errors import MalformedInput

    with pytest.raises(MalformedInput):
        parse_log_policy("frobnicate x\n")
    with pytest.raises(MalformedInput):
        parse_log_policy("")


async def test_http_add_checkpoint(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_witness_app(tmp_path, WITNESS, LOGS))
    resp = await client.post("/add-checkpoint", data=body(0, 10))
    assert resp.status == 200
    line = (await resp.read()).decode()
    assert line.startswith("\u2014 witness.example/w1 ") and line.endswith("\n")
    cosigned = parse_note(note(10) + line.encode())
    sig = cosigned.signatures[-1]
    assert WITNESS.cosignature_verifier.timestamp(cosigned.text, sig.signature) is not None
    resp = await client.post("/add-checkpoint", data=body(0, 20))
    assert resp.status == 409
    assert resp.headers["Content-Type"] == "text/x.tlog.size"
    assert await resp.read() == b"10\n"
    assert (await client.post("/add-checkpoint", data=body(10, 20))).status == 200
    assert (await client.post("/add-checkpoint", data=body(20, 30, tree=FORK))).status == 422
    assert (await client.post("/add-checkpoint", data=b"garbage")).status == 400
    latest_note = await (await client.get("/checkpoint", params={"origin": ORIGIN})).read()
    assert latest_note.startswith(note(20)[: note(20).index(b"\n\n")])
    assert (await client.get("/checkpoint", params={"origin": "nope"})).status == 404


async def test_the_monitoring_endpoint_serves_the_cosignature_add_checkpoint_returned(aiohttp_client, tmp_path):
    """C2SP tlog-witness: GET <prefix>/<hex SHA-256 of the origin>/checkpoint carries the witness's cosignature that
    add-checkpoint returned (not a fresh one) and the log's signatures it verified; 404 for a log never cosigned."""
    now = [1_800_000_000.0]
    client = await aiohttp_client(create_witness_app(tmp_path, WITNESS, LOGS, clock=lambda: now[0]))
    path = f"/{hashlib.sha256(ORIGIN.encode()).hexdigest()}/checkpoint"
    assert (await client.get(path)).status == 404
    stranger = NoteSigner("witness.example/stranger", Ed25519PrivateKey.generate())
    submitted = note(10) + stranger.cosign(parse_note(note(10)).text, 1_800_000_000).line().encode()
    resp = await client.post("/add-checkpoint", data=b"old 0\n\n" + submitted)
    assert resp.status == 200
    line = await resp.read()
    now[0] += 3600  # a fresh cosignature now would carry another time
    served = await client.get(path)
    assert served.status == 200 and served.headers["Content-Type"] == "text/plain; charset=utf-8"
    body = await served.read()
    assert body == note(10) + line  # the log's signature and timestamp line, then the witness's: no stranger's
    cosigned = parse_note(body)
    assert WITNESS.cosignature_verifier.timestamp(cosigned.text, cosigned.signatures[-1].signature) == 1_800_000_000
    assert await (await client.get("/checkpoint", params={"origin": ORIGIN})).read() == body  # the older query form
    for wrong in (path.upper(), f"/{hashlib.sha256(b'example.com/other').hexdigest()}/checkpoint", "/abc/checkpoint"):
        assert (await client.get(wrong)).status == 404, wrong
    # Kept across a restart: the stored answer, not one signed at start-up.
    await client.close()
    again = await aiohttp_client(create_witness_app(tmp_path, WITNESS, LOGS, clock=lambda: now[0] + 1))
    assert await (await again.get(path)).read() == body


async def test_a_store_from_before_the_monitoring_endpoint_is_cosigned_once_at_start(aiohttp_client, tmp_path):
    from pacspace.storage.witness import WitnessStore

    store = WitnessStore(tmp_path)
    store.advance(ORIGIN, lambda _: latest(10))  # what earlier versions stored: the note as submitted
    store.close()
    client = await aiohttp_client(create_witness_app(tmp_path, WITNESS, LOGS, clock=lambda: 1_800_000_500))
    path = f"/{hashlib.sha256(ORIGIN.encode()).hexdigest()}/checkpoint"
    body = await (await client.get(path)).read()
    cosigned = parse_note(body)
    assert body.startswith(note(10)) and len(cosigned.signatures) == 3
    assert WITNESS.cosignature_verifier.timestamp(cosigned.text, cosigned.signatures[-1].signature) == 1_800_000_500
    await client.close()
    again = await aiohttp_client(create_witness_app(tmp_path, WITNESS, LOGS, clock=lambda: 1_900_000_000))
    assert await (await again.get(path)).read() == body


def test_state_survives_sigkill_after_a_reply(tmp_path):
    data = tmp_path / "w"
    subprocess.run([sys.executable, "-m", "pacspace", "witness", "init", "--data", str(data), "--name", "witness.example/w1"],
                   check=True, capture_output=True)
    policy = tmp_path / "policy"
    policy.write_text(f"log {LOG.verifier.vkey()}\nquorum none\n")
    port = free_port()

    def start():
        proc = subprocess.Popen([sys.executable, "-m", "pacspace", "witness", "serve", "--data", str(data), "--policy",
                                 str(policy), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_witness(port)
        return proc

    def post(raw):
        try:
            with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/add-checkpoint", data=raw), timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    proc = start()
    assert post(body(0, 42))[0] == 200
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc = start()
    try:
        assert post(body(0, 50)) == (409, b"42\n")
        assert post(body(42, 50))[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_two_witness_processes_share_their_state_in_postgresql(tmp_path, postgres_url):
    """``witness serve --database``: two processes of one witness key on one database hold one state. Each sees
    what the other cosigned (409 with its size), and of two requests racing from one size, through one each,
    only one is cosigned: the state never goes back, and never forks."""
    import threading

    data = tmp_path / "w"
    subprocess.run([sys.executable, "-m", "pacspace", "witness", "init", "--data", str(data), "--name", "witness.example/w1"],
                   check=True, capture_output=True)
    policy = tmp_path / "policy"
    policy.write_text(f"log {LOG.verifier.vkey()}\nquorum none\n")
    ports = [free_port(), free_port()]
    env = {**os.environ, "PACSPACE_WITNESS_DATABASE": postgres_url}
    procs = [subprocess.Popen([sys.executable, "-m", "pacspace", "witness", "serve", "--data", str(data), "--policy",
                               str(policy), "--port", str(p)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for p in ports]

    def post(port: int, raw: bytes) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/add-checkpoint", data=raw),
                                        timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    try:
        for port in ports:
            wait_for_witness(port)
        assert post(ports[0], body(0, 10))[0] == 200
        assert post(ports[1], body(0, 20)) == (409, b"10\n")
        assert post(ports[1], body(10, 20))[0] == 200
        for round_ in range(5):
            old = 20 + 30 * round_
            answers: list[tuple[int, bytes]] = []
            racers = [threading.Thread(target=lambda p=p, s=s: answers.append(post(p, body(old, s))))
                      for p, s in ((ports[0], old + 10), (ports[1], old + 30))]
            for t in racers:
                t.start()
            for t in racers:
                t.join()
            statuses = sorted(status for status, _ in answers)
            assert statuses == [200, 409], answers
            if answers[0][0] == 409:
                won = int(answers[0][1])
            else:
                won = int(answers[1][1])
            assert won in (old + 10, old + 30)
            if won != old + 30:  # bring it to the next round's start
                assert post(ports[0], body(won, old + 30))[0] == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/checkpoint?origin={ORIGIN}", timeout=5) as r:
            assert r.read().startswith(note(170)[: note(170).index(b"\n\n")])
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            _, err = proc.communicate(timeout=10)
            assert b"Traceback" not in err, err
