#!/usr/bin/env python3
"""Benchmark of the witness (issue 6). Run by hand; results go in docs/performance.md.

    python3 tools/bench_witness.py --logs 100 --steps 30

Starts `pacspace witness serve` for ``--logs`` logs and sends each log's
checkpoints in turn (one request in flight per log, all logs at once), each
with the consistency proof from the previous one: add-checkpoint requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import free_port  # noqa: E402

from pacspace.checkpoint import Checkpoint, sign_checkpoint  # noqa: E402
from pacspace.merkle import ListHashReader, consistency_proof, leaf_hash, tree_hash  # noqa: E402
from pacspace.note import NoteSigner  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pacspace-witness-bench-"))
    tree = ListHashReader([leaf_hash(i.to_bytes(4, "big")) for i in range(args.steps * 7 + 1)])
    signers = [NoteSigner(f"bench.example/log{i}", Ed25519PrivateKey.generate()) for i in range(args.logs)]
    (work / "policy").write_text("".join(f"log {s.verifier.vkey()}\n" for s in signers) + "quorum none\n")
    plans = []
    for signer in signers:
        plan, old = [], 0
        for step in range(1, args.steps + 1):
            size = step * 7
            lines = [f"old {old}"] + [base64.b64encode(h).decode() for h in consistency_proof(old, size, tree)]
            cp = sign_checkpoint(Checkpoint(signer.name, size, tree_hash(size, tree)), signer, int(time.time())).format()
            plan.append(("\n".join(lines) + "\n\n").encode() + cp)
            old = size
        plans.append(plan)
    subprocess.run([sys.executable, "-m", "pacspace", "witness", "init", "--data", str(work / "w"), "--name", "bench.example/w"],
                   check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pacspace", "witness", "serve", "--data", str(work / "w"), "--policy",
                             str(work / "policy"), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/checkpoint?origin=x", timeout=1)
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.05)

    async def run() -> tuple[int, float]:
        done = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.logs)) as s:

            async def one_log(plan: list[bytes]) -> None:
                nonlocal done
                for raw in plan:
                    async with s.post(url + "/add-checkpoint", data=raw) as r:
                        await r.read()
                        if r.status != 200:
                            raise SystemExit(f"witness answered {r.status}")
                    done += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(one_log(p) for p in plans))
            return done, time.perf_counter() - t0

    try:
        done, elapsed = asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    results = {"logs": args.logs, "requests": done, "seconds": elapsed, "requests_per_s": done / elapsed}
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
