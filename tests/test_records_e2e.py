"""End to end with the real server process: concurrent appends across relationships, SIGKILL mid-load, restart,
then every acknowledged record is fetched, verified and decrypted, and every checkpoint seen is consistent."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pytest
from helpers import add_two_parties, register_two_homes, free_port

from pacspace.checkpoint import open_checkpoint
from pacspace.client.http import PacspaceClient, Unreachable
from pacspace.client.records import append_body, create_relationship, delta_maker, load_relationship
from pacspace.errors import PacspaceError
from pacspace.merkle import verify_consistency
from pacspace.records.body import Delta, Line

RELATIONSHIPS = 12


def start(data, port, workers: int = 0, env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port), "--pool-interval", "0.02",
         "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode())
            time.sleep(0.05)
    raise AssertionError("server did not start")


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while os.path.exists(f"/proc/{pid}") and "State:\tZ" not in open(f"/proc/{pid}/status").read():
            assert time.monotonic() < deadline, f"process {pid} outlived its parent"
            time.sleep(0.02)


# With workers, the SIGKILL hits the sequencing parent; the kernel takes its HTTP workers with it. With
# "postgres", the log's tables are in a real PostgreSQL (PACSPACE_DATABASE, which the workers get too).
@pytest.mark.parametrize(("workers", "backend"), [(0, "sqlite"), (2, "sqlite"), (2, "postgres")])
async def test_sigkill_mid_load_then_everything_acknowledged_verifies(tmp_path, workers, backend, request):
    data = tmp_path / "data"
    env = dict(os.environ)
    if backend == "postgres":
        env["PACSPACE_DATABASE"] = request.getfixturevalue("postgres_url")
    subprocess.run([sys.executable, "-m", "pacspace", "init", "--data", str(data)], check=True, capture_output=True,
                   env=env)
    add_two_parties(data)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start(data, port, workers, env)
    try:
        acme, bob = await register_two_homes(url, tmp_path)
        async with PacspaceClient(url, "tok-acme") as c:
            rids = [
                (await create_relationship(c, acme.keys(), "acme", "bob", "hourly"))["relationship"]
                for _ in range(RELATIONSHIPS)
            ]
        acked: dict[tuple[str, int], int] = {}
        checkpoints: list[bytes] = []
        stop = asyncio.Event()

        async def appender(rid: str) -> None:
            async with PacspaceClient(url, "tok-acme", timeout=10) as c:
                try:
                    view = await load_relationship(c, acme, rid, acme.log_key())
                    hour = 0
                    while not stop.is_set():
                        line = Line("llm.requests", "request", str(random.randint(1, 99)), {"model": "m"})
                        receipt = await append_body(
                            c, acme, view,
                            delta_maker("2026-11", (f"2026-11-02T{hour % 24:02d}:00:00Z", f"2026-11-02T{hour % 24:02d}:59:59Z"), [line]),
                        )
                        acked[(rid, receipt["seq"])] = receipt["index"]
                        checkpoints.append(receipt["checkpoint"].encode())
                        hour += 1
                except (Unreachable, aiohttp.ClientError, PacspaceError, asyncio.TimeoutError):
                    return

        tasks = [asyncio.create_task(appender(rid)) for rid in rids]
        await asyncio.sleep(random.uniform(1.5, 3.0))
        helpers = children(server.pid)
        assert len(helpers) == workers
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        wait_gone(helpers)
        stop.set()
        await asyncio.gather(*tasks)
        assert len(acked) >= RELATIONSHIPS, "too few records were acknowledged before the kill"

        server = start(data, port, workers, env)
        vkey = bob.log_key()
        async with PacspaceClient(url, "tok-bob") as c:
            final = open_checkpoint(await c.checkpoint(), vkey)
            for rid in rids:
                view = await load_relationship(c, bob, rid, vkey)
                by_seq = {r.seq: r for r in view.records}
                for (r, seq), index in acked.items():
                    if r == rid:
                        assert seq in by_seq, f"acknowledged {rid} seq {seq} is missing"
                        assert by_seq[seq].index == index
                        assert isinstance(by_seq[seq].body, Delta)
            for note in checkpoints:
                seen = open_checkpoint(note, vkey)
                proof = await c.consistency(seen.size, final.size)
                verify_consistency(seen.size, final.size, seen.root_hash, final.root_hash,
                                   [base64.b64decode(h) for h in proof["hashes"]])
        # The provider can continue every chain after the restart.
        async with PacspaceClient(url, "tok-acme") as c:
            view = await load_relationship(c, acme, rids[0], acme.log_key())
            last = view.records[-1].seq
            receipt = await append_body(c, acme, view, delta_maker("2026-11", ("2026-11-03T00:00:00Z", "2026-11-03T01:00:00Z"),
                                                                     [Line("llm.requests", "request", "1", {})]))
            assert receipt["seq"] == last + 1 == view.records[-1].seq
        # And the operator's full check passes on what the kill left (beside the live server).
        fsck = subprocess.run([sys.executable, "-m", "pacspace", "fsck", "--data", str(data)], capture_output=True,
                              text=True, env=env, timeout=300)
        assert fsck.returncode == 0 and "fsck: ok" in fsck.stdout, fsck.stderr
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)

