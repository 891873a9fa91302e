#!/usr/bin/env python3
"""Benchmark of the verifiable log (issue 2). Run by hand; results go in docs/performance.md.

    python3 tools/bench_log.py --sizes 100000,1000000,10000000 --work /var/tmp/pacspace-bench

For each size, growing one log through the sequencer's bulk path:

- durable append throughput (entries/s) of the segment that reached the size;
- log open time (the start-up trust check) and in-process proof times, p50/p99;
- ``pacspace serve`` as a subprocess: time to first 200 on /health, HTTP proof
  requests/s (wrk if installed, else a Python client), and the server's RSS;
- pymerkle's SqliteTree on the same entries, as the reference a Python user would pick.

Then, at the largest size: single-entry submissions from many tasks, and
acknowledgement latency p50/p99 under sustained offered loads (5k, 10k, 20k
entries/s one per call; 50k and 100k entries/s in calls of 100).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pacspace.datadir import init_log, load_signer, load_state
from pacspace.errors import PoolFull
from pacspace.merkle import consistency_proof, inclusion_proof
from pacspace.sequencer import Sequencer, SequencerConfig
from pacspace.storage.sqlite import SqliteLog

CHUNK = 65536
PROOF_SAMPLES = 5000


def entries(start: int, stop: int) -> list[bytes]:
    """65-byte entries shaped like pacspace's public entry (0x01 || tag || ct_hash)."""
    out = []
    for i in range(start, stop):
        d = hashlib.sha256(i.to_bytes(8, "big")).digest()
        out.append(b"\x01" + d + d[::-1])
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


class Log:
    def __init__(self, data: Path, config: SequencerConfig = SequencerConfig()) -> None:
        self.signer = load_signer(data)
        t0 = time.perf_counter()
        self.store = SqliteLog.open(data)
        self.sequencer = Sequencer(self.store, self.signer, load_state(self.store, self.signer), config)
        self.open_seconds = time.perf_counter() - t0

    async def __aenter__(self) -> Sequencer:
        self.task = asyncio.create_task(self.sequencer.run())
        return self.sequencer

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        self.store.close()


async def grow(data: Path, target: int) -> dict[str, float]:
    """Append up to ``target`` through the bulk path; entry generation is excluded from the timing."""
    async with Log(data) as seq:
        start = seq.latest.size
        busy = 0.0
        done = start
        while done < target:
            batch = entries(done, min(target, done + CHUNK))
            t0 = time.perf_counter()
            await seq.submit_many(batch)
            busy += time.perf_counter() - t0
            done += len(batch)
            print(f"  appended {done:,}/{target:,} ({(done - start) / busy:,.0f} entries/s)", end="\r", file=sys.stderr)
        print(file=sys.stderr)
    return {"appended": target - start, "seconds": busy, "entries_per_second": (target - start) / busy}


def proof_times(data: Path, size: int) -> dict[str, float]:
    log = Log(data)
    rng = random.Random(size)
    inc, con = [], []
    for _ in range(PROOF_SAMPLES):
        i = rng.randrange(size)
        t0 = time.perf_counter()
        inclusion_proof(i, size, log.store)
        inc.append(time.perf_counter() - t0)
        m = rng.randrange(1, size)
        t0 = time.perf_counter()
        consistency_proof(m, size, log.store)
        con.append(time.perf_counter() - t0)
    log.store.close()
    ms = 1000.0
    return {
        "open_ms": log.open_seconds * ms,
        "inclusion_p50_ms": pct(inc, 50) * ms,
        "inclusion_p99_ms": pct(inc, 99) * ms,
        "consistency_p50_ms": pct(con, 50) * ms,
        "consistency_p99_ms": pct(con, 99) * ms,
    }


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


WRK_SCRIPT = """
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/v1/proof/inclusion?index=" .. math.random(0, {size} - 1) .. "&size={size}")
end
"""


def http_phase(data: Path, size: int, port: int, seconds: int) -> dict[str, float]:
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            if server.poll() is not None:
                raise SystemExit("pacspace serve exited during start-up")
            time.sleep(0.01)
    startup = time.perf_counter() - t0
    rss_idle = rss_kib(server.pid)
    try:
        if shutil.which("wrk"):
            rps = _wrk(url, size, seconds)
            tool = "wrk -t2 -c64"
        else:
            rps = asyncio.run(_python_load(url, size, seconds))
            tool = "aiohttp client, 64 concurrent"
        rss = rss_kib(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    return {
        "serve_startup_s": startup,
        "http_proofs_per_s": rps,
        "load_tool": tool,
        "rss_idle_mib": rss_idle["VmRSS"] / 1024,
        "rss_after_load_mib": rss["VmRSS"] / 1024,
        "rss_peak_mib": rss["VmHWM"] / 1024,
    }


def _wrk(url: str, size: int, seconds: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.replace("{size}", str(size)))
    try:
        out = subprocess.run(
            ["wrk", "-t2", "-c64", f"-d{seconds}s", "-s", script.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    raise SystemExit(f"could not read wrk output:\n{out}")


async def _python_load(url: str, size: int, seconds: int) -> float:
    import aiohttp

    rng = random.Random(1)
    count = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                i = rng.randrange(size)
                async with session.get(f"{url}/v1/proof/inclusion?index={i}&size={size}") as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"HTTP {resp.status}")
                count += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(64)))
        return count / (time.perf_counter() - t0)


def pymerkle_phase(work: Path, size: int, budget_s: float) -> dict[str, float | str]:
    """pymerkle's SqliteTree on the same entries (it counts leaves from 1)."""
    from pymerkle import SqliteTree

    db = work / f"pymerkle-{size}.db"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    tree = SqliteTree(str(db))
    t0 = time.perf_counter()
    for start in range(0, size, CHUNK):
        tree.append_entries(entries(start, min(size, start + CHUNK)))
    append_s = time.perf_counter() - t0
    rng = random.Random(size)
    inc: list[float] = []
    con: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(inc) < 1000 and time.perf_counter() < deadline:
        i = rng.randrange(1, size + 1)
        t0 = time.perf_counter()
        tree.prove_inclusion(i, size)
        inc.append(time.perf_counter() - t0)
        m = rng.randrange(1, size)
        t0 = time.perf_counter()
        tree.prove_consistency(m, size)
        con.append(time.perf_counter() - t0)
    tree.close()
    db.unlink(missing_ok=True)
    ms = 1000.0
    return {
        "append_entries_per_s": size / append_s,
        "proof_samples": len(inc),
        "inclusion_p50_ms": pct(inc, 50) * ms,
        "inclusion_p99_ms": pct(inc, 99) * ms,
        "consistency_p50_ms": pct(con, 50) * ms,
        "consistency_p99_ms": pct(con, 99) * ms,
    }


async def single_submissions(data: Path, count: int) -> dict[str, float]:
    """``count`` concurrent submit() calls of one entry each: the per-call overhead the bulk path avoids."""
    async with Log(data) as seq:
        base = seq.latest.size + 10**9
        todo = entries(base, base + count)
        t0 = time.perf_counter()
        await asyncio.gather(*(seq.submit(e) for e in todo))
        elapsed = time.perf_counter() - t0
    return {"entries": count, "entries_per_second": count / elapsed}


async def sustained_latency(data: Path, rate: int, seconds: float, per_call: int) -> dict[str, float]:
    """Offer ``rate`` entries/s for ``seconds`` in calls of ``per_call`` entries; latency submit -> durable ack.

    Calls are started in 10 ms ticks (open loop: a slow log does not slow the offered load).
    """
    async with Log(data) as seq:
        latencies: list[float] = []
        rejected = 0
        base = seq.latest.size + 2 * 10**9 + rate * 1000
        tick = 0.01
        calls_per_tick = max(1, round(rate * tick / per_call))
        tasks = []

        async def one(batch: list[bytes]) -> None:
            nonlocal rejected
            t0 = time.perf_counter()
            try:
                await seq.submit_many(batch)
            except PoolFull:
                rejected += len(batch)  # back-pressure: the caller would retry after Retry-After
                return
            latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        n = 0
        ticks = 0
        while time.perf_counter() - start < seconds:
            for _ in range(calls_per_tick):
                tasks.append(asyncio.create_task(one(entries(base + n, base + n + per_call))))
                n += per_call
            ticks += 1
            await asyncio.sleep(max(0.0, start + ticks * tick - time.perf_counter()))
        offered_for = time.perf_counter() - start
        await asyncio.gather(*tasks)
    return {
        "offered_entries_per_s": rate,
        "submitted_entries_per_s": n / offered_for,
        "entries_per_call": per_call,
        "ack_p50_ms": pct(latencies, 50) * 1000,
        "ack_p99_ms": pct(latencies, 99) * 1000,
        "ack_max_ms": max(latencies) * 1000,
        "rejected_pool_full": rejected,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--work", type=Path, default=Path("bench-data"))
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--http-seconds", type=int, default=10)
    parser.add_argument("--pymerkle-budget", type=float, default=60.0, help="seconds of pymerkle proofs per size")
    parser.add_argument("--no-pymerkle", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="keep an existing log in --work and only run the load phases")
    parser.add_argument("--out", type=Path, help="write results as JSON here too")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    data = args.work / "log"
    results: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "sizes": {}}
    if args.reuse and data.exists():
        sizes = []
    else:
        if data.exists():
            shutil.rmtree(data)
        args.work.mkdir(parents=True, exist_ok=True)
        init_log(data, "bench.example/pacspace", int(time.time()))
    for size in sizes:
        print(f"== size {size:,}", file=sys.stderr)
        row: dict[str, object] = {"append": asyncio.run(grow(data, size))}
        row["proofs"] = proof_times(data, size)
        row["http"] = http_phase(data, size, args.port, args.http_seconds)
        if not args.no_pymerkle:
            print("  pymerkle SqliteTree ...", file=sys.stderr)
            row["pymerkle"] = pymerkle_phase(args.work, size, args.pymerkle_budget)
        results["sizes"][str(size)] = row  # type: ignore[index]
        print(json.dumps(row, indent=1), file=sys.stderr)
    print("== single-entry submissions and sustained acknowledgement latency", file=sys.stderr)
    results["single_submissions"] = asyncio.run(single_submissions(data, 100_000))
    results["sustained"] = []
    for rate, per_call in [(5_000, 1), (10_000, 1), (20_000, 1), (50_000, 100), (100_000, 100)]:
        row = asyncio.run(sustained_latency(data, rate, 10, per_call))
        print(f"  sustained {rate:,}/s in calls of {per_call}: {row}", file=sys.stderr)
        results["sustained"].append(row)  # type: ignore[attr-defined]
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
