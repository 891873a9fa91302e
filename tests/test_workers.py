"""``pacspace serve --workers N``: HTTP workers beside the one sequencing process, as real processes."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from helpers import add_two_parties, free_port, register_two_homes, wait_for_health

from pacspace.checkpoint import open_checkpoint
from pacspace.client.http import PacspaceClient
from pacspace.client.records import append_body, create_relationship, delta_maker, load_relationship
from pacspace.merkle import verify_inclusion
from pacspace.records.body import Line


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def start(data: Path, port: int, workers: int = 2, extra: tuple[str, ...] = (),
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port),
         "--pool-interval", "0.01", "--workers", str(workers), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    wait_for_health(f"http://127.0.0.1:{port}")
    return proc


@contextmanager
def serving(data: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A server with two workers on a free port; it must stop cleanly when the test is done."""
    port = free_port()
    server = start(data, port)
    try:
        yield server, port
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "pacspace", "init", "--data", str(d)], check=True, capture_output=True)
    add_two_parties(d)
    return d


@pytest.fixture
def data_on_each(tmp_path: Path, log_database: str | None, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``data``, with the log and its records in SQLite, then in PostgreSQL (PACSPACE_DATABASE, which every
    command this test starts inherits): the workers' record writes share records.db's lock, or PostgreSQL's."""
    if log_database is None:
        monkeypatch.delenv("PACSPACE_DATABASE", raising=False)
    else:
        monkeypatch.setenv("PACSPACE_DATABASE", log_database)
    d = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "pacspace", "init", "--data", str(d)], check=True, capture_output=True)
    add_two_parties(d, log_database)
    return d


def line(n: int) -> Line:
    return Line("llm.requests", "request", str(n), {"model": "m"})


async def test_records_through_workers_read_back_with_proofs_by_hash_and_metrics(data_on_each, tmp_path):
    data = data_on_each
    with serving(data) as (server, port):
        url = f"http://127.0.0.1:{port}"
        assert len(children(server.pid)) == 2
        acme, bob = await register_two_homes(url, tmp_path)
        receipts = []
        async with PacspaceClient(url, "tok-acme") as c:
            rid = (await create_relationship(c, acme.keys(), "acme", "bob", "hourly"))["relationship"]
            view = await load_relationship(c, acme, rid, acme.log_key())
            for hour in range(6):
                window = (f"2026-11-02T{hour:02d}:00:00Z", f"2026-11-02T{hour:02d}:59:59Z")
                receipts.append(await append_body(c, acme, view, delta_maker("2026-11", window, [line(hour)])))
        vkey = bob.log_key()
        # Every new connection may land on either worker: none may serve a checkpoint older than a receipt's.
        newest = max(open_checkpoint(r["checkpoint"].encode(), vkey).size for r in receipts)
        for _ in range(20):
            async with aiohttp.ClientSession() as s, s.get(f"{url}/checkpoint") as r:
                assert open_checkpoint(await r.read(), vkey).size >= newest
        async with PacspaceClient(url, "tok-bob") as c:
            records = (await load_relationship(c, bob, rid, vkey)).records
            assert [r.seq for r in records] == list(range(7))
            # The leaf index of a just-committed entry lives in the parent's memory: asked through the channel.
            last = receipts[-1]
            at = open_checkpoint(last["checkpoint"].encode(), vkey)
            async with aiohttp.ClientSession() as s:
                query = {"hash": last["leaf_hash"], "size": str(at.size)}
                async with s.get(f"{url}/v1/proof/by-hash", params=query) as r:
                    assert r.status == 200, await r.text()
                    proof = await r.json()
                async with s.get(f"{url}/metrics") as r:
                    metrics = await r.text()
                async with s.post(f"{url}/internal/v1/sequence", data=b"\x00\x01\x01") as r:
                    assert r.status == 404  # the sequencer's channel is not on the public port
        assert proof["index"] == last["index"]
        verify_inclusion(
            proof["index"], at.size, base64.b64decode(last["leaf_hash"]),
            [base64.b64decode(h) for h in proof["hashes"]], at.root_hash,
        )
        appended = next(int(x.split()[1]) for x in metrics.splitlines() if x.startswith("pacspace_appends_total "))
        assert appended == 7  # the sequencer's own counter, served by a worker
        assert records[-1].index == last["index"]
        assert records[-1].seq == last["seq"] == 6


def test_a_worker_that_dies_stops_the_server_with_an_error(data):
    port = free_port()
    server = start(data, port)
    workers = children(server.pid)
    os.kill(workers[0], signal.SIGKILL)
    assert server.wait(timeout=60) == 1
    assert b"a worker exited" in server.stderr.read()
    for pid in workers:
        assert not alive(pid)


def test_sigterm_stops_workers_then_the_sequencer_and_removes_the_private_socket(data, tmp_path):
    port = free_port()
    # The server's own temporary directory, where other tests' servers make none; short, as a unix socket's path
    # must be (tmp_path, under xdist, is too long).
    tmp = Path(tempfile.mkdtemp(prefix="ps-"))
    try:
        _sigterm_stops_workers(data, port, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sigterm_stops_workers(data: Path, port: int, tmp: Path) -> None:
    server = start(data, port, env={**os.environ, "TMPDIR": str(tmp)})
    workers = children(server.pid)
    private = set(tmp.glob("pacspace-*"))
    assert len(private) == 1
    (directory,) = private
    assert directory.stat().st_mode & 0o777 == 0o700
    assert (directory / "sequencer.sock").is_socket()
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0
    for pid in workers:
        assert not alive(pid)
    assert not directory.exists()
    # The port is free again at once: nothing kept the listening socket.
    time.sleep(0.1)
    again = start(data, port, workers=1)
    again.terminate()
    assert again.wait(timeout=60) == 0


def test_a_busy_port_is_refused_not_shared(data, tmp_path):
    """A second server must not join the first one's port (as SO_REUSEPORT would let it) and split its clients."""
    port = free_port()
    first = subprocess.Popen(  # itself with workers
        [sys.executable, "-m", "pacspace", "serve", "--data", str(tmp_path / "other"), "--port", str(port), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_health(f"http://127.0.0.1:{port}")
        second = subprocess.run(
            [sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port), "--workers", "2"],
            capture_output=True, text=True, timeout=30,
        )
        assert second.returncode == 1
        assert "Address already in use" in second.stderr
    finally:
        first.terminate()
        first.wait(timeout=60)


def test_connections_during_shutdown_are_answered_or_refused_never_left_hanging(data):
    port = free_port()
    server = start(data, port)
    # A request still sending its body keeps one worker busy through the shutdown.
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"POST /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-acme\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"rec")
    time.sleep(0.3)
    server.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    outcomes = []
    for _ in range(4):
        probe = socket.socket()
        probe.settimeout(3)
        try:
            probe.connect(("127.0.0.1", port))
            probe.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            outcomes.append("answered" if probe.recv(100) else "closed")
        except ConnectionRefusedError:
            outcomes.append("refused")
        except TimeoutError:
            outcomes.append("hung")
        finally:
            probe.close()
    slow.close()
    assert "hung" not in outcomes, outcomes
    assert server.wait(timeout=150) == 0


class Pinned:
    """One keep-alive connection, so one worker; blocking (call it through asyncio.to_thread)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.connect()

    def worker(self, port: int, workers: list[int]) -> int | None:
        """The worker holding the server side of this connection (Linux /proc)."""
        mine = self.conn.sock.getsockname()[1]
        inode = None
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].split(":")[1], 16) == port and int(fields[2].split(":")[1], 16) == mine:
                    inode = fields[9]
        for pid in workers:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
                except OSError:
                    continue
        return None

    def call(self, method: str, path: str, body: object = None, token: str = "tok-acme") -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.conn.request(method, path, body=None if body is None else json.dumps(body).encode(), headers=headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()


def one_connection_per_worker(port: int, workers: list[int]) -> list[Pinned]:
    found: dict[int, Pinned] = {}
    for _ in range(200):
        pinned = Pinned(port)
        time.sleep(0.02)
        pid = pinned.worker(port, workers)
        if pid is not None and pid not in found:
            found[pid] = pinned
        else:
            pinned.conn.close()
        if len(found) == len(workers):
            return [found[p] for p in workers]
    raise AssertionError("could not reach every worker")


def sealed_like(seq: int) -> dict[str, object]:
    """A record the server accepts (it cannot open records: any tag and blob of the right sizes)."""
    from pacspace.records.seal import BLOB_OVERHEAD

    return {"seq": seq, "tag": base64.b64encode(os.urandom(32)).decode(),
            "ciphertext": base64.b64encode(os.urandom(BLOB_OVERHEAD + 100)).decode()}


async def test_with_witnesses_no_worker_serves_an_older_checkpoint_and_a_retry_gets_its_receipt(
    data, tmp_path, aiohttp_server
):
    """A witness outage: the entry is committed but unpublished, and the newest stored checkpoint lacks the
    quorum. Every worker keeps serving the newest cosigned one. Once the witness is back, the sequencer gets
    the checkpoint cosigned by itself, and retrying the same record through either worker returns its receipt."""
    from aiohttp import web
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pacspace.datadir import load_signer
    from pacspace.note import NoteSigner, parse_vkey
    from pacspace.server.witness_app import create_witness_app

    vkey = load_signer(data).verifier.vkey()
    log_key = parse_vkey(vkey)
    down = {"now": False}

    @web.middleware
    async def outage(request, handler):  # type: ignore[no-untyped-def]
        return web.Response(status=503, text="down\n") if down["now"] else await handler(request)

    witness = NoteSigner("witness.example/w0", Ed25519PrivateKey.generate())
    (tmp_path / "w0").mkdir()
    app = create_witness_app(tmp_path / "w0", witness, {log_key.name: log_key})
    app.middlewares.append(outage)
    wserver = await aiohttp_server(app)
    policy = tmp_path / "policy"
    policy.write_text(f"log {vkey}\nwitness w0 {witness.cosignature_verifier.vkey()} "
                      f"http://127.0.0.1:{wserver.port}\nquorum w0\n")
    port = free_port()
    server = await asyncio.to_thread(
        lambda: start(data, port, extra=("--witness-policy", str(policy), "--witness-timeout", "1"))
    )
    try:
        a, b = await asyncio.to_thread(one_connection_per_worker, port, children(server.pid))

        def size(note: bytes | str) -> int:
            return open_checkpoint(note.encode() if isinstance(note, str) else note, log_key).size

        genesis = {"relationship": "acme:r1", "customer": "bob", "genesis": sealed_like(0),
                   "wraps": {"provider": base64.b64encode(b"p" * 40).decode(), "customer": base64.b64encode(b"c" * 40).decode()}}
        status, _ = await asyncio.to_thread(a.call, "POST", "/v1/relationships", genesis)
        assert status == 201
        status, body = await asyncio.to_thread(a.call, "POST", "/v1/relationships/acme:r1/records", sealed_like(1))
        assert status == 201
        held = size(json.loads(body)["checkpoint"])
        down["now"] = True
        third = sealed_like(2)
        status, body = await asyncio.to_thread(a.call, "POST", "/v1/relationships/acme:r1/records", third)
        assert status == 503 and json.loads(body)["error"] == "witness_quorum_failed"
        for pinned in (a, b):
            status, note = await asyncio.to_thread(pinned.call, "GET", "/checkpoint")
            assert status == 200 and size(note) >= held
        down["now"] = False
        # No other traffic: the sequencer offers the unpublished checkpoint to the witnesses again by itself.
        deadline = time.monotonic() + 20
        while True:
            status, body = await asyncio.to_thread(b.call, "POST", "/v1/relationships/acme:r1/records", third)
            if status == 200 or time.monotonic() > deadline:
                break
            assert status == 409 and json.loads(body)["error"] == "previous_in_flight"
            await asyncio.sleep(0.5)
        assert status == 200, body
        receipt = json.loads(body)
        assert receipt["seq"] == 2 and size(receipt["checkpoint"]) > receipt["index"]
        status, body = await asyncio.to_thread(a.call, "POST", "/v1/relationships/acme:r1/records", third)
        assert status == 200 and json.loads(body)["index"] == receipt["index"]
    finally:
        server.terminate()
        await asyncio.to_thread(server.wait, 60)


def test_fsck_beside_a_live_server_finds_no_fault(data_on_each):
    """Records settled after fsck read the log are skipped with a warning, not reported as faults."""
    data = data_on_each
    import threading

    port = free_port()
    server = start(data, port)
    stop = threading.Event()
    appended = []

    def append() -> None:
        conn = Pinned(port)
        genesis = {"relationship": "acme:live", "customer": "bob", "genesis": sealed_like(0),
                   "wraps": {"provider": base64.b64encode(b"p" * 40).decode(), "customer": base64.b64encode(b"c" * 40).decode()}}
        assert conn.call("POST", "/v1/relationships", genesis)[0] == 201
        seq = 1
        while not stop.is_set() and seq < 5000:
            batch = {"records": [{"relationship": "acme:live", **sealed_like(seq + k)} for k in range(50)]}
            status, _ = conn.call("POST", "/v1/records", batch)
            assert status == 200
            seq += 50
            appended.append(seq)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        time.sleep(1.0)
        runs = [subprocess.run([sys.executable, "-m", "pacspace", "fsck", "--data", str(data)],
                               capture_output=True, text=True, timeout=120) for _ in range(3)]
    finally:
        stop.set()
        writer.join(timeout=60)
        server.terminate()
        server.wait(timeout=60)
    assert appended, "nothing was appended while fsck ran"
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert "fault" not in run.stderr
    final = subprocess.run([sys.executable, "-m", "pacspace", "fsck", "--data", str(data)], capture_output=True, text=True)
    assert final.returncode == 0 and "committed after the log was read" not in final.stderr


def test_a_tag_is_taken_once_whichever_worker_each_record_reaches(data_on_each):
    """Each worker stores its record in records.db; the one process that sequences admits the tag once."""
    data = data_on_each
    with serving(data) as (server, port):
        a, b = one_connection_per_worker(port, children(server.pid))
        for pinned, rid in ((a, "acme:r1"), (b, "acme:r2")):
            genesis = {"relationship": rid, "customer": "bob", "genesis": sealed_like(0),
                       "wraps": {"provider": base64.b64encode(b"p" * 40).decode(), "customer": base64.b64encode(b"c" * 40).decode()}}
            assert pinned.call("POST", "/v1/relationships", genesis)[0] == 201
        first = sealed_like(1)
        assert a.call("POST", "/v1/relationships/acme:r1/records", first)[0] == 201
        copy = {**sealed_like(1), "tag": first["tag"]}
        status, body = b.call("POST", "/v1/relationships/acme:r2/records", copy)
        assert status == 409 and json.loads(body)["error"] == "duplicate_tag"
        # In a batch through the other worker too; acme:r2 keeps its next seq for its own record.
        status, body = b.call("POST", "/v1/records", {"records": [{**copy, "relationship": "acme:r2"}]})
        assert status == 200 and json.loads(body)["results"][0]["error"] == "duplicate_tag"
        assert b.call("POST", "/v1/relationships/acme:r2/records", sealed_like(1))[0] == 201
        status, body = a.call("GET", "/v1/relationships/acme:r2/records")
        assert [r["seq"] for r in json.loads(body)["records"]] == [0, 1]


def test_after_a_receipt_the_next_record_goes_in_at_once_through_the_other_worker(data_on_each):
    """The parent settles a sequence call's rows before it answers the worker: the next seq, sent the
    moment the receipt arrives, through the other worker, never finds the previous one still in flight."""
    data = data_on_each
    with serving(data) as (server, port):
        a, b = one_connection_per_worker(port, children(server.pid))
        genesis = {"relationship": "acme:r1", "customer": "bob", "genesis": sealed_like(0),
                   "wraps": {"provider": base64.b64encode(b"p" * 40).decode(), "customer": base64.b64encode(b"c" * 40).decode()}}
        assert a.call("POST", "/v1/relationships", genesis)[0] == 201
        indexes = []
        for seq in range(1, 21):
            pinned = (a, b)[seq % 2]
            if seq % 4 == 3:
                status, body = pinned.call("POST", "/v1/records", {"records": [{**sealed_like(seq), "relationship": "acme:r1"}]})
                assert status == 200, body
                (result,) = json.loads(body)["results"]
                assert result["status"] == "ok", result
            else:
                status, body = pinned.call("POST", "/v1/relationships/acme:r1/records", sealed_like(seq))
                assert status == 201, body
                result = json.loads(body)
            indexes.append(result["index"])
        for pinned in (a, b):
            status, body = pinned.call("GET", "/v1/relationships/acme:r1/records")
            records = json.loads(body)["records"]
            assert [r["seq"] for r in records] == list(range(21))
            assert [r["index"] for r in records[1:]] == indexes


def test_connections_are_handed_to_the_workers_in_turn(data):
    """A client with a few long-lived connections (a batch sender) gets every worker, not one by chance."""
    with serving(data) as (server, port):
        workers = children(server.pid)
        pinned = [Pinned(port) for _ in range(6)]
        time.sleep(0.3)
        holders = [p.worker(port, workers) for p in pinned]
        assert sorted(holders.count(w) for w in workers) == [3, 3], holders
        assert all(p.call("GET", "/health")[0] == 200 for p in pinned)
        for p in pinned:
            p.conn.close()


async def test_a_failed_accept_is_logged_and_the_next_connection_still_handed_over(caplog):
    """Accepting can fail for a while (out of file descriptors): the parent keeps accepting, it does not stop."""
    import errno

    from pacspace.server import supervisor

    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    handed: list[int] = []

    class Pool:
        def hand_over(self, conn: socket.socket) -> bool:
            handed.append(conn.getsockname()[1])
            return True

    loop = asyncio.get_running_loop()
    real_accept = loop.sock_accept
    failures = [OSError(errno.EMFILE, "Too many open files")]

    async def accept_failing_once(sock):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return await real_accept(sock)

    loop.sock_accept = accept_failing_once  # type: ignore[method-assign]
    task = asyncio.ensure_future(supervisor.hand_out_connections(listener, Pool()))  # type: ignore[arg-type]
    try:
        client = await asyncio.to_thread(socket.create_connection, listener.getsockname())
        for _ in range(100):
            if handed:
                break
            await asyncio.sleep(0.02)
        assert handed == [listener.getsockname()[1]]
        assert "Too many open files" in caplog.text
        client.close()
    finally:
        task.cancel()
        del loop.sock_accept
        listener.close()


async def test_a_customer_decides_through_either_worker_and_every_worker_reads_the_decision(data_on_each, tmp_path):
    """Acceptance and decline are records.db writes from whichever worker the customer reaches; the signature
    is checked there against the genesis the parent settled, and the other worker serves the result."""
    data = data_on_each
    from pacspace.records.acceptance import sign_acceptance
    from pacspace.records.seal import public_entry

    with serving(data) as (server, port):
        url = f"http://127.0.0.1:{port}"
        acme, bob = await register_two_homes(url, tmp_path)
        async with PacspaceClient(url, "tok-acme") as c:
            rids = [(await create_relationship(c, acme.keys(), "acme", "bob", "hourly"))["relationship"] for _ in range(2)]
        async with PacspaceClient(url, "tok-bob") as c:
            (genesis,) = await c.records(rids[0], -1, 1)
        entry = public_entry(base64.b64decode(genesis["tag"]), base64.b64decode(genesis["ciphertext"]))
        acceptance = {"signature": base64.b64encode(sign_acceptance(bob.keys().ed25519, rids[0], entry)).decode()}
        a, b = one_connection_per_worker(port, children(server.pid))
        status, body = a.call("POST", f"/v1/relationships/{rids[0]}/acceptance", acceptance, token="tok-bob")
        assert status == 200 and json.loads(body)["state"] == "accepted", body
        status, body = b.call("POST", f"/v1/relationships/{rids[1]}/decline", token="tok-bob")
        assert status == 200 and json.loads(body)["state"] == "declined", body
        for seq, pinned in enumerate((b, a), start=1):
            status, body = pinned.call("GET", "/v1/relationships", token="tok-bob")
            assert [(r["relationship"], r["state"]) for r in json.loads(body)["relationships"]] == [(rids[0], "accepted")]
            status, body = pinned.call("POST", f"/v1/relationships/{rids[0]}/acceptance", acceptance, token="tok-bob")
            assert status == 200 and json.loads(body)["acceptance"] == acceptance["signature"]
            status, body = pinned.call("POST", f"/v1/relationships/{rids[1]}/records", sealed_like(1))
            assert status == 409 and json.loads(body)["error"] == "relationship_declined"
            assert pinned.call("POST", f"/v1/relationships/{rids[0]}/records", sealed_like(seq))[0] == 201


def test_workers_cap_their_connections_time_out_slow_heads_and_answer_bad_framing_in_json(data):
    """serve --workers: each worker has the limits of ServerConfig, as a single process has."""
    from helpers import closed_by_peer, read_answer

    port = free_port()
    config = {"max_connections": 4, "header_timeout": 1.0}
    code = (
        "import logging, sys; from pathlib import Path; from pacspace.config import ServerConfig; "
        "from pacspace.server.supervisor import serve_with_workers; logging.basicConfig(level=logging.INFO); "
        f"sys.exit(serve_with_workers(ServerConfig(data_dir=Path({str(data)!r}), port={port}, **{config!r}), 2, "
        "lambda app: None))"
    )
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_health(f"http://127.0.0.1:{port}")

        async def probe() -> None:
            # Two workers of 4 connections each: of 20 idle connections, at least 12 are closed to make room.
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
            await asyncio.sleep(0.3)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n")
            status, headers, body = await read_answer(reader)
            assert status == 400 and json.loads(body)["error"] == "bad_request"
            assert headers["content-type"].startswith("application/json")
            closed = await asyncio.gather(*(closed_by_peer(r, timeout=0.5) for r, _ in idle))
            assert closed.count(True) >= 12, closed
            # A head that never ends is closed after header_timeout, well before our 10 s bound.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            assert await closed_by_peer(reader, timeout=10)
            for _, w in [*idle, (reader, writer)]:
                w.close()

        asyncio.run(probe())
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0
    assert b"Traceback" not in server.stderr.read()


def test_a_long_tmpdir_does_not_stop_the_workers(data, tmp_path):
    """The sequencer's private socket needs a short path (108 bytes on Linux): under a $TMPDIR too long for one,
    it goes under /tmp instead of the server failing to start."""
    long_tmp = tmp_path / ("t" * 100)
    long_tmp.mkdir()
    port = free_port()
    server = start(data, port, env={**os.environ, "TMPDIR": str(long_tmp)})
    try:
        assert len(children(server.pid)) == 2
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0
