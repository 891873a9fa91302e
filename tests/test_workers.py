"""``pacspace serve --workers N``: HTTP workers beside the one sequencing process, as real processes."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import tempfile
import time
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


def start(data: Path, port: int, workers: int = 2) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port),
         "--pool-interval", "0.01", "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for_health(f"http://127.0.0.1:{port}")
    return proc


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "pacspace", "init", "--data", str(d)], check=True, capture_output=True)
    add_two_parties(d)
    return d


def line(n: int) -> Line:
    return Line("llm.requests", "request", str(n), {"model": "m"})


async def test_records_through_workers_read_back_with_proofs_by_hash_and_metrics(data, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start(data, port)
    try:
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
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0


def test_a_worker_that_dies_stops_the_server_with_an_error(data):
    port = free_port()
    server = start(data, port)
    workers = children(server.pid)
    os.kill(workers[0], signal.SIGKILL)
    assert server.wait(timeout=60) == 1
    assert b"a worker exited" in server.stderr.read()
    for pid in workers:
        assert not alive(pid)


def test_sigterm_stops_workers_then_the_sequencer_and_removes_the_private_socket(data):
    port = free_port()
    before = set(Path(tempfile.gettempdir()).glob("pacspace-*"))
    server = start(data, port)
    workers = children(server.pid)
    private = set(Path(tempfile.gettempdir()).glob("pacspace-*")) - before
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
