#!/usr/bin/env python3
"""Benchmark of the recorder's ingest (issue 5). Run by hand; results go in docs/performance.md.

    python3 tools/bench_recorder.py --events 200000

Starts `pacspace recorder serve` (no flushing) for 1,000 customers and posts
CloudEvents batches (`application/cloudevents-batch+json`, 1,000 events each,
4 in flight); each 202 means the batch is spooled and fsynced. Prints events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import free_port, wait_for_health  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--profile", type=Path, help="run the recorder under cProfile, writing its stats here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pacspace-recorder-bench-"))
    customers = "".join(f'[[customers]]\nref = "c{i}"\nrelationship = "acme:r{i}"\ncadence = "hourly"\n\n' for i in range(1000))
    (work / "recorder.toml").write_text('[recorder]\ndata = "spool"\n\n' + customers +
                                        '[meters.prompt]\nmeter = "llm.input.uncached_tokens"\nunit = "token"\nvalue = "tokens"\n'
                                        'dimensions = ["model"]\n')
    bodies = []
    for start in range(0, args.events, args.batch):
        bodies.append(json.dumps([
            {"specversion": "1.0", "type": "prompt", "id": f"e{i}", "source": "gw", "subject": f"c{i % 1000}",
             "time": f"2026-11-02T{(i // 100000) % 24:02d}:{(i // 1000) % 60:02d}:00Z", "data": {"tokens": i % 5000, "model": "m-1"}}
            for i in range(start, min(args.events, start + args.batch))
        ]).encode())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PACSPACE_TOKEN"}
    prefix = [sys.executable, "-m", "cProfile", "-o", str(args.profile)] if args.profile else [sys.executable]
    proc = subprocess.Popen([*prefix, "-m", "pacspace", "recorder", "serve", "--config", str(work / "recorder.toml"),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_for_health(url)

    async def run() -> tuple[int, float]:
        accepted = 0
        queue = list(bodies)
        async with aiohttp.ClientSession(headers={"Content-Type": "application/cloudevents-batch+json"}) as s:

            async def sender() -> None:
                nonlocal accepted
                while queue:
                    body = queue.pop()
                    async with s.post(url + "/events", data=body) as r:
                        answer = await r.json()
                        if r.status != 202 or answer["rejected"]:
                            raise SystemExit(f"ingest refused: {r.status} {answer}")
                        accepted += answer["accepted"]

            t0 = time.perf_counter()
            await asyncio.gather(*(sender() for _ in range(args.in_flight)))
            return accepted, time.perf_counter() - t0

    try:
        accepted, elapsed = asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    results = {"events": accepted, "seconds": elapsed, "events_per_s": accepted / elapsed, "batch": args.batch,
               "in_flight": args.in_flight}
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
