#!/usr/bin/env python3
"""Failover time of a log in PostgreSQL (issue 18): from the SIGKILL of the serve that sequences to the next
checkpoint published by another. By hand; results in docs/performance.md.

    python3 tools/bench_failover.py --kills 20 --work /var/tmp/pacspace-bench-failover

Starts a throwaway PostgreSQL on 127.0.0.1 (fsync on; tests/postgres_server.py, Debian's binaries) and three
``pacspace serve --database`` processes on one log, each with its own copy of the log key and the defaults
otherwise (``--workers`` auto). One sends a record every ``--interval`` seconds through a standby, so the
sequencer has something to publish. Each round: find the sequencer (``/health`` role), SIGKILL it, then poll
``/checkpoint`` of the other two every 10 ms until one serves a checkpoint larger than the largest seen before
the kill, signed by the log key: that is the failover time. The killed serve is started again, as a standby.

The clock starts at the kill; the mark to beat is the newest checkpoint in the database once the killed process
is gone (it can commit nothing more). Prints each round's time, then p50 and max.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg  # noqa: E402
from postgres_server import PostgresServer, find_bindir  # noqa: E402

from pacspace.checkpoint import open_checkpoint  # noqa: E402
from pacspace.datadir import load_signer, open_records  # noqa: E402
from pacspace.records.seal import BLOB_OVERHEAD  # noqa: E402


def call(port: int, method: str, path: str, body: object | None = None, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Authorization": "Bearer tok-acme", "Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def role(port: int) -> str | None:
    try:
        status, body = call(port, "GET", "/health", timeout=1)
    except OSError:
        return None
    return json.loads(body).get("role") if status == 200 else None


def sealed(seq: int) -> dict[str, object]:
    return {"seq": seq, "tag": base64.b64encode(os.urandom(32)).decode(),
            "ciphertext": base64.b64encode(os.urandom(BLOB_OVERHEAD + 100)).decode()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between two records sent")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/pacspace-bench-failover"))
    args = parser.parse_args()
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    server = PostgresServer(bindir)
    env = {**os.environ, "PACSPACE_DATABASE": server.database()}
    dirs = [args.work / f"serve{i}" for i in range(3)]
    subprocess.run([sys.executable, "-m", "pacspace", "init", "--data", str(dirs[0])], env=env, check=True,
                   capture_output=True)
    for d in dirs[1:]:
        d.mkdir(mode=0o700)
        for name in ("log.key", "database"):
            shutil.copy2(dirs[0] / name, d / name)
    records = open_records(dirs[0], env["PACSPACE_DATABASE"])
    records.add_party("acme", "provider", "tok-acme", 1)
    records.add_party("bob", "customer", "tok-bob", 1)
    records.close()
    verifier = load_signer(dirs[0]).verifier
    ports = [0, 0, 0]
    procs: list[subprocess.Popen[bytes] | None] = [None, None, None]

    def start(i: int) -> None:
        ports[i] = ports[i] or _free_port()
        with open(args.work / f"serve{i}.log", "ab") as out:
            procs[i] = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(dirs[i]),
                                         "--port", str(ports[i])], env=env, stdout=subprocess.DEVNULL, stderr=out)
        while role(ports[i]) is None:
            time.sleep(0.05)

    stop = threading.Event()

    def sender() -> None:
        seq = 0
        pending = sealed(0)
        while not stop.is_set():
            time.sleep(args.interval)
            for port in ports:
                try:
                    if seq == 0:
                        status, _ = call(port, "POST", "/v1/relationships", {
                            "relationship": "acme:bench", "customer": "bob", "genesis": pending,
                            "wraps": {"provider": base64.b64encode(b"p" * 40).decode(),
                                      "customer": base64.b64encode(b"c" * 40).decode()}})
                    else:
                        status, _ = call(port, "POST", "/v1/relationships/acme:bench/records", pending)
                except OSError:
                    continue
                if status in (200, 201):
                    seq += 1
                    pending = sealed(seq)
                break

    def largest(exclude: int) -> int:
        size = 0
        for i, port in enumerate(ports):
            if i == exclude:
                continue
            try:
                status, body = call(port, "GET", "/checkpoint", timeout=1)
            except OSError:
                continue
            if status == 200:
                size = max(size, open_checkpoint(body, verifier).size)
        return size

    times = []
    try:
        for i in range(3):
            start(i)
        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        time.sleep(2)
        for k in range(args.kills):
            current = next(i for i in range(3) if role(ports[i]) == "sequencer")
            time.sleep(0.5)
            proc = procs[current]
            assert proc is not None
            killed = time.perf_counter()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # The newest checkpoint the dead sequencer committed: the next one is the new sequencer's.
            with psycopg.connect(env["PACSPACE_DATABASE"]) as conn:
                row = conn.execute("SELECT max(size) FROM checkpoints").fetchone()
            before = int(row[0]) if row and row[0] is not None else 0
            while largest(current) <= before:
                if time.perf_counter() - killed > 120:
                    raise SystemExit("no checkpoint was published within 120 s of the kill")
                time.sleep(0.01)
            times.append(time.perf_counter() - killed)
            print(f"kill {k + 1}: the next checkpoint after {times[-1]:.2f} s", flush=True)
            start(current)
            while not any(role(p) == "sequencer" for p in ports):
                time.sleep(0.05)
    finally:
        stop.set()
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
        server.stop()
    times.sort()
    print(f"failover over {len(times)} kills: p50 {times[len(times) // 2]:.2f} s, max {times[-1]:.2f} s")
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    raise SystemExit(main())
