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
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import fill_log  # noqa: E402

from pacspace.datadir import init_log  # noqa: E402


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
    print(f"growing the log to {args.size:,} entries...", file=sys.stderr)
    t = time.perf_counter()
    asyncio.run(fill_log(data, args.size, chunk=100_000))
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
