#!/usr/bin/env python3
"""How long `pacspace fsck` takes on a large log. Run by hand; results go in docs/performance.md.

    python3 tools/bench_fsck.py --size 10000000 --work /var/tmp/pacspace-bench-fsck

Grows a log to --size entries through the sequencer's bulk path (as tools/bench_log.py
does), then runs `pacspace fsck --data DIR` as a subprocess and reports its wall time,
exit status and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pacspace.datadir import init_log, load_signer, load_state
from pacspace.sequencer import Sequencer, SequencerConfig
from pacspace.storage.sqlite import SqliteLog


async def fill(data: Path, count: int) -> None:
    signer = load_signer(data)
    store = SqliteLog.open(data)
    seq = Sequencer(store, signer, load_state(store, signer), SequencerConfig(pool_capacity=1 << 20))
    task = asyncio.create_task(seq.run())
    started = time.perf_counter()
    for start in range(0, count, 100_000):
        await seq.submit_many([b"\x01" + hashlib.sha256(i.to_bytes(8, "big")).digest() * 2
                               for i in range(start, min(count, start + 100_000))])
        if (start // 100_000) % 10 == 9:
            print(f"  {start + 100_000:,} entries, {(start + 100_000) / (time.perf_counter() - started):,.0f}/s",
                  file=sys.stderr)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument("--work", type=Path, default=Path("bench-data/fsck"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    data = args.work / "data"
    init_log(data, "bench.example/fsck", int(time.time()))
    t = time.perf_counter()
    asyncio.run(fill(data, args.size))
    fill_s = time.perf_counter() - t
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pacspace", "fsck", "--data", str(data)], capture_output=True, text=True)
    fsck_s = time.perf_counter() - t
    results = {
        "size": args.size, "fill_s": round(fill_s, 1), "fsck_s": round(fsck_s, 1),
        "fsck_entries_per_s": round(args.size / fsck_s), "fsck_exit": run.returncode,
        "fsck_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "fsck_said": (run.stdout + run.stderr).strip().splitlines()[-3:],
        "data_bytes": sum(p.stat().st_size for p in data.iterdir() if p.is_file()),
    }
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
