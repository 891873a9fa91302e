#!/usr/bin/env python3
"""The default `pacspace serve` against an aiohttp baseline, in the same run (issue 20). Run by hand.

    python3 tools/bench_defaults.py --work /var/tmp/pacspace-bench-defaults [--rounds 2] [--seconds 10]

Each round runs, one after the other on the same machine, the same wrk load (tools/bench_records_wrk.lua:
single-record appends at concurrency 256 over 1,000 relationships, each relationship's records in seq
order) against:

- baseline: an aiohttp app served by as many processes as the machine has cores (SO_REUSEPORT), that
  only parses the JSON body, computes the leaf hash the load generator matches answers by, and answers
  201 with a small JSON body: what any Python HTTP service must do for such a request, and no more;
- pacspace: `pacspace serve` on a fresh data directory with no flags but --data and --port (the
  default configuration; ``--serve-args`` adds flags, to compare with another configuration);
- previous (with ``--previous-src DIR``): the same, from another source tree, through PYTHONPATH.

Prints records/s, p50/p99 per target and each target's ratio to the baseline of its own round.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_records import free_port, setup, wrk_phase  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import wait_for_health  # noqa: E402

# The baseline app: run as `bench_defaults.py --baseline-worker PORT` by each of its processes.
def baseline_worker(port: int) -> None:
    from aiohttp import web

    from pacspace.records.seal import entry_from_ct_hash

    async def append(request: web.Request) -> web.Response:
        body = await request.json()
        blob = base64.b64decode(body["ciphertext"])
        tag = base64.b64decode(body["tag"])
        leaf = hashlib.sha256(b"\x00" + entry_from_ct_hash(tag, hashlib.sha256(blob).digest())).digest()
        return web.json_response({"seq": body["seq"], "leaf_hash": base64.b64encode(leaf).decode()}, status=201)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/relationships/{rid}/records", append)
    app.router.add_get("/health", health)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    web.run_app(app, sock=sock, print=None, access_log=None)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def run_baseline(args: argparse.Namespace, token: str, provider, rels) -> dict[str, float]:  # type: ignore[no-untyped-def]
    port = free_port()
    cores = len(os.sched_getaffinity(0))
    procs = [subprocess.Popen([sys.executable, __file__, "--baseline-worker", str(port)]) for _ in range(cores)]
    try:
        wait_for_health(f"http://127.0.0.1:{port}")
        time.sleep(0.5)  # every process listening
        return wrk_phase(f"http://127.0.0.1:{port}", token, provider, rels, args.per_relationship, args.concurrency,
                         args.seconds, args.work, procs[0].pid)
    finally:
        stop(procs)


def run_pacspace(args: argparse.Namespace, name: str, src: Path | None) -> dict[str, float]:
    data = args.work / name
    shutil.rmtree(data, ignore_errors=True)
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port),
                               *args.serve_args.split()], env=env, stdout=subprocess.DEVNULL,
                              stderr=(args.work / f"{name}.log").open("w"))
    try:
        wait_for_health(url)
        token, provider, rels = asyncio.run(_setup(url, data, args.relationships, env))
        result = wrk_phase(url, token, provider, rels, args.per_relationship, args.concurrency, args.seconds,
                           args.work, server.pid)
        return result
    finally:
        stop([server])


async def _setup(url: str, data: Path, count: int, env: dict[str, str]):  # type: ignore[no-untyped-def]
    # bench_records.setup runs `python3 -m pacspace admin` from this process's environment: the same source.
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return await setup(url, data, count)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=Path("bench-data/defaults"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--relationships", type=int, default=1000)
    parser.add_argument("--per-relationship", type=int, default=150, help="records sealed per relationship per run")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--serve-args", default="", help="flags for pacspace serve (default: none)")
    parser.add_argument("--previous-src", type=Path, help="also run pacspace from this source tree's src/")
    args = parser.parse_args()
    if args.baseline_worker:
        baseline_worker(args.baseline_worker)
        return
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk (apt-get install wrk)")
    args.work.mkdir(parents=True, exist_ok=True)
    rounds = []
    for r in range(args.rounds):
        row: dict[str, dict[str, float]] = {}
        row["pacspace"] = run_pacspace(args, "pacspace", None)
        print(f"round {r} pacspace: {row['pacspace']}", file=sys.stderr)
        if args.previous_src:
            row["previous"] = run_pacspace(args, "previous", args.previous_src)
            print(f"round {r} previous: {row['previous']}", file=sys.stderr)
        # The baseline reuses a pacspace run's keys only to seal bodies of the same size.
        port = free_port()
        data = args.work / "keys"
        shutil.rmtree(data, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pacspace", "init", "--data", str(data)], check=True, capture_output=True)
        server = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port),
                                   "--workers", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_health(f"http://127.0.0.1:{port}")
            token, provider, rels = asyncio.run(setup(f"http://127.0.0.1:{port}", data, args.relationships))
        finally:
            stop([server])
        row["baseline"] = run_baseline(args, token, provider, rels)
        print(f"round {r} baseline: {row['baseline']}", file=sys.stderr)
        for name in row:
            row[name]["ratio_to_baseline"] = round(row[name]["records_per_s"] / row["baseline"]["records_per_s"], 3)
        rounds.append(row)
    print(json.dumps(rounds, indent=1))


if __name__ == "__main__":
    main()
