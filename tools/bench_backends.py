#!/usr/bin/env python3
"""The log's tables on SQLite and on PostgreSQL, in the same run (issue 18). By hand; results in docs/performance.md.

    python3 tools/bench_backends.py --size 1000000 --work /var/tmp/pacspace-bench-backends

Starts a throwaway PostgreSQL on 127.0.0.1 (fsync on; tests/postgres_server.py, Debian's binaries), then for
each backend, through the real sequencer:

- batch appends: the log grown to ``--size`` in submissions of ``--batch`` entries, 4 in flight
  (entries/s);
- single appends: ``--tasks`` tasks each submitting one entry at a time for ``--seconds`` (entries/s, and
  the acknowledgement latency p50/p99);
- proofs at that size: ``--proofs`` random inclusion and consistency proofs from a read-only copy, as an
  HTTP worker or a frontend opens the log (p50/p99).

The backends alternate phase by phase (SQLite, then PostgreSQL), so drift on the machine hits both alike.
Prints a table, and the ratio PostgreSQL / SQLite for each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_log import entries, pct  # noqa: E402  (the same entries and percentiles as the log's benchmark)
from postgres_server import PostgresServer, find_bindir  # noqa: E402

from pacspace.datadir import init_log, load_signer, load_state, open_log  # noqa: E402
from pacspace.merkle import consistency_proof, inclusion_proof  # noqa: E402
from pacspace.sequencer import Sequencer, SequencerConfig  # noqa: E402


class Backend:
    def __init__(self, name: str, data: Path, database: str | None) -> None:
        self.name, self.data, self.database = name, data, database
        init_log(data, "bench.example/backends", int(time.time()), database)
        self.signer = load_signer(data)
        self.size = 0
        self.results: dict[str, float] = {}

    async def run_sequencer(self, work):  # type: ignore[no-untyped-def]
        store = open_log(self.data, self.database)
        sequencer = Sequencer(store, self.signer, load_state(store, self.signer),
                              SequencerConfig(pool_capacity=1 << 20, batch_size=1 << 16))
        task = asyncio.create_task(sequencer.run())
        try:
            return await work(sequencer)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.size = sequencer.latest.size
            store.close()

    async def batches(self, target: int, batch: int) -> None:
        async def work(sequencer: Sequencer) -> None:
            queue = list(range(sequencer.latest.size, target, batch))

            async def lane() -> None:
                while queue:
                    start = queue.pop(0)
                    await sequencer.submit_many(entries(start, min(target, start + batch)))

            began = time.perf_counter()
            first = sequencer.latest.size
            await asyncio.gather(*(lane() for _ in range(4)))
            self.results["batch appends/s"] = (target - first) / (time.perf_counter() - began)

        await self.run_sequencer(work)

    async def singles(self, tasks: int, seconds: float) -> None:
        async def work(sequencer: Sequencer) -> None:
            latencies: list[float] = []
            stop = time.perf_counter() + seconds
            counter = iter(range(10**9, 2 * 10**9))

            async def one() -> None:
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    await sequencer.submit(entries(next(counter), next(counter) + 1)[0])
                    latencies.append(time.perf_counter() - t)

            began = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(tasks)))
            self.results["single appends/s"] = len(latencies) / (time.perf_counter() - began)
            self.results["single p50 ms"] = pct(latencies, 50) * 1e3
            self.results["single p99 ms"] = pct(latencies, 99) * 1e3

        await self.run_sequencer(work)

    def proofs(self, count: int) -> None:
        store = open_log(self.data, self.database, readonly=True)
        size = load_state(store, self.signer).size
        rng = random.Random(7)
        inclusion, consistency = [], []
        for _ in range(count):
            i = rng.randrange(size)
            t = time.perf_counter()
            inclusion_proof(i, size, store)
            inclusion.append(time.perf_counter() - t)
            old = rng.randrange(1, size)
            t = time.perf_counter()
            consistency_proof(old, size, store)
            consistency.append(time.perf_counter() - t)
        store.close()
        self.results["inclusion p50 ms"] = pct(inclusion, 50) * 1e3
        self.results["inclusion p99 ms"] = pct(inclusion, 99) * 1e3
        self.results["consistency p50 ms"] = pct(consistency, 50) * 1e3
        self.results["consistency p99 ms"] = pct(consistency, 99) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="entries in each log before the proofs")
    parser.add_argument("--batch", type=int, default=4096, help="entries in each batch submission")
    parser.add_argument("--tasks", type=int, default=256, help="concurrent single-entry submitters")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the single-append phase")
    parser.add_argument("--proofs", type=int, default=5000, help="proofs of each kind")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/pacspace-bench-backends"))
    args = parser.parse_args()
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    server = PostgresServer(bindir)
    try:
        backends = [Backend("sqlite", args.work / "sqlite", None),
                    Backend("postgres", args.work / "postgres", server.database())]
        for b in backends:
            asyncio.run(b.batches(args.size, args.batch))
            print(f"{b.name}: {b.size:,} entries, {b.results['batch appends/s']:,.0f}/s", flush=True)
        for b in backends:
            asyncio.run(b.singles(args.tasks, args.seconds))
        for b in backends:
            b.proofs(args.proofs)
        sqlite, postgres = backends
        print(f"\n{'':22} {'sqlite':>12} {'postgres':>12} {'pg/sqlite':>10}")
        for key in sqlite.results:
            a, b = sqlite.results[key], postgres.results[key]
            print(f"{key:22} {a:12,.3f} {b:12,.3f} {b / a:10.2f}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
