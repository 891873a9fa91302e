#!/usr/bin/env python3
"""How much witnessing adds to the log's acknowledgement latency (issue 6). Run by hand.

    python3 tools/bench_witnessing.py --samples 200

Runs a log in-process twice: without witnesses, then with three witnesses on
loopback (`pacspace witness serve` processes) and a quorum of two. Each sample
is one submit() of one entry, waited for; prints p50/p99 of both and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import entry, free_port, wait_for_witness  # noqa: E402

from pacspace.datadir import init_log, load_signer, load_state  # noqa: E402
from pacspace.policy import parse_policy  # noqa: E402
from pacspace.sequencer import Sequencer, SequencerConfig  # noqa: E402
from pacspace.server.witnessing import WitnessPool  # noqa: E402
from pacspace.storage.sqlite import SqliteLog  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def latencies(data: Path, samples: int, policy_text: str | None) -> list[float]:
    signer = load_signer(data)
    store = SqliteLog.open(data)
    seq = Sequencer(store, signer, load_state(store, signer), SequencerConfig(pool_interval=0.01))
    if policy_text:
        seq.witness = WitnessPool(parse_policy(policy_text), store, 5.0).cosign
    task = asyncio.create_task(seq.run())
    out = []
    base = seq.state.size
    for i in range(samples):
        t0 = time.perf_counter()
        await seq.submit(entry(base + i + 10**6))
        out.append(time.perf_counter() - t0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pacspace-witnessing-bench-"))
    data = work / "log"
    vkey = init_log(data, "bench.example/witnessed", int(time.time())).verifier.vkey()
    (work / "witness-policy").write_text(f"log {vkey}\nquorum none\n")
    procs, lines = [], [f"log {vkey}"]
    for i in range(3):
        wdata = work / f"w{i}"
        out = subprocess.run([sys.executable, "-m", "pacspace", "witness", "init", "--data", str(wdata), "--name", f"bench.example/w{i}"],
                             check=True, capture_output=True, text=True).stdout.strip()
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "pacspace", "witness", "serve", "--data", str(wdata), "--policy",
                                       str(work / "witness-policy"), "--port", str(port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        lines.append(f"witness w{i} {out} http://127.0.0.1:{port}")
        wait_for_witness(port)
    lines += ["group two 2 w0 w1 w2", "quorum two"]
    try:
        plain = asyncio.run(latencies(data, args.samples, None))
        witnessed = asyncio.run(latencies(data, args.samples, "\n".join(lines) + "\n"))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    results = {
        "samples": args.samples,
        "without_p50_ms": pct(plain, 50) * 1000, "without_p99_ms": pct(plain, 99) * 1000,
        "with_p50_ms": pct(witnessed, 50) * 1000, "with_p99_ms": pct(witnessed, 99) * 1000,
    }
    results["added_p50_ms"] = results["with_p50_ms"] - results["without_p50_ms"]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
