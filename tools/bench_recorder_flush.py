#!/usr/bin/env python3
"""Benchmark of the recorder's flush (issue 5): N relationships, one committed delta each. Run by hand;
results go in docs/performance.md.

    python3 tools/bench_recorder_flush.py --relationships 100000 --work /var/tmp/pacspace-bench-flush

A real `pacspace serve` process; one provider creates N hourly relationships (with
`create_relationship(..., home=...)`, as `pacspace relationship create` does), all
with one customer (the flush does not depend on who the customers are). Each
relationship gets 3 usage events in one hour; then `flush` runs in this process
against the server, twice:

- the first flush also learns every chain (from the provider's home, where creation
  left it) and writes the windows of hour 1;
- the second writes hour 2 from the recorder's own copy of the chains: the steady state.

Reports wall time per flush and records/s. The log server shares the 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import add_two_parties, free_port, register_two_homes, wait_for_health  # noqa: E402

from pacspace.client.home import Home  # noqa: E402
from pacspace.client.http import PacspaceClient  # noqa: E402
from pacspace.client.records import create_relationship  # noqa: E402
from pacspace.datadir import init_log  # noqa: E402
from pacspace.recorder.config import parse_config  # noqa: E402
from pacspace.recorder.events import cloudevent  # noqa: E402
from pacspace.recorder.flush import flush  # noqa: E402
from pacspace.recorder.spool import Spool  # noqa: E402


async def create_all(url: str, acme: Home, count: int, concurrency: int) -> list[str]:
    rids: list[str] = []
    keys = acme.keys()
    started = time.perf_counter()
    async with PacspaceClient(url, "tok-acme") as c:
        queue = list(range(count))

        async def worker() -> None:
            while queue:
                queue.pop()
                rids.append((await create_relationship(c, keys, "acme", "bob", "hourly", home=acme))["relationship"])
                if len(rids) % 10_000 == 0:
                    print(f"  {len(rids)} relationships, {len(rids) / (time.perf_counter() - started):.0f}/s",
                          file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return rids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relationships", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("bench-data/recorder-flush"))
    parser.add_argument("--concurrency", type=int, default=64, help="relationship creations in flight (setup only)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--profile", type=Path, help="write a cProfile of the steady flush here")
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    data = args.work / "data"
    init_log(data, "bench.example/recorder", int(time.time()))
    add_two_parties(data)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict[str, object] = {"relationships": args.relationships}
    try:
        wait_for_health(url)
        acme, _ = asyncio.run(register_two_homes(url, args.work))
        t0 = time.perf_counter()
        rids = asyncio.run(create_all(url, acme, args.relationships, args.concurrency))
        results["setup_create_s"] = round(time.perf_counter() - t0, 1)
        print(f"created {len(rids)} relationships in {results['setup_create_s']} s", file=sys.stderr)
        config = parse_config({
            "recorder": {"data": "spool", "grace_minutes": 0, "dedup_days": 3660},
            "customers": [{"ref": f"c{i}", "relationship": rid, "cadence": "hourly"} for i, rid in enumerate(rids)],
            "meters": {"prompt": {"meter": "llm.input.uncached_tokens", "unit": "token", "value": "tokens",
                                  "dimensions": ["model"]}},
        }, args.work)
        spool = Spool(config.data)
        received = datetime(2026, 11, 2, 13, tzinfo=timezone.utc)

        def spool_hour(hour: int) -> None:
            batch = []
            for i in range(len(rids)):
                for k in range(3):
                    event = cloudevent({"specversion": "1.0", "type": "prompt", "id": f"{hour}-{i}-{k}", "source": "gw",
                                        "subject": f"c{i}", "time": f"2026-11-02T{hour:02d}:{10 * k:02d}:00Z",
                                        "data": {"tokens": 100 + k, "model": "m-1"}}, config.meters)
                    batch.append(config.route(event, received))
            spool.accept(batch, "2026-11-02T13:00:00Z")

        async def run_flush(until: str) -> dict[str, object]:
            async with PacspaceClient(url, "tok-acme", timeout=600) as c:
                t = time.perf_counter()
                cpu = time.process_time()
                report = await flush(c, acme, spool, config, until,
                                     progress=lambda line: print(f"  {line}", file=sys.stderr))
                wall = time.perf_counter() - t
                return {**report.to_json(), "seconds": round(wall, 2), "recorder_cpu_s": round(time.process_time() - cpu, 2),
                        "records_per_s": round(report.committed / wall)}

        for name, hour in (("first_flush", 10), ("steady_flush", 11)):
            spool_hour(hour)
            if args.profile and name == "steady_flush":
                import cProfile

                profiler = cProfile.Profile()
                results[name] = profiler.runcall(asyncio.run, run_flush(f"2026-11-02T{hour + 1:02d}:00:00Z"))
                profiler.dump_stats(args.profile)
            else:
                results[name] = asyncio.run(run_flush(f"2026-11-02T{hour + 1:02d}:00:00Z"))
            print(f"{name}: {results[name]}", file=sys.stderr)
        spool.close()
        results["spool_bytes"] = os.path.getsize(config.data / "recorder.db")
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
