#!/usr/bin/env python3
"""records.db alone, without HTTP: how fast the write path stores and settles records. Run by hand.

    python3 tools/bench_records_store.py --work /var/tmp/pacspace-bench-store --rounds 60

Each round stores one record for each of ``--relationships`` relationships in
one transaction (one bulk reserve op, 1.4 KB blobs, random tags), then settles
them in another (one settle op), as the server does for a batch request.
Prints records/s for each and both; docs/performance.md has the results.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import time
from pathlib import Path

from pacspace.storage.records import RecordStore, Relationship


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-data/records-store"))
    parser.add_argument("--relationships", type=int, default=2000, help="records per transaction")
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    store = RecordStore(args.work)
    store.add_party("acme", "provider", "t1", 0)
    store.add_party("bob", "customer", "t2", 0)
    rids = [f"acme:rel_{i:05d}" for i in range(args.relationships)]
    for rid in rids:
        store.add_relationship(Relationship(rid, "acme", "bob", "hourly", "monthly", 0), {"acme": b"w", "bob": b"w"})
    blob = os.urandom(1400)
    ct_hash = hashlib.sha256(blob).digest()
    reserve_s = settle_s = 0.0
    for seq in range(args.rounds):
        groups = [(rid, [(seq, secrets.token_bytes(32), ct_hash, blob)]) for rid in rids]
        t0 = time.perf_counter()
        (results,) = store.write([RecordStore.reserve_many_op(groups)])
        reserve_s += time.perf_counter() - t0
        if not isinstance(results, list) or any(r is not None for r in results):
            raise SystemExit(f"reserve failed: {results if not isinstance(results, list) else results[:2]}")
        settle = RecordStore.settle_run_op([tag for _, ((_, tag, _, _),) in groups], seq * len(rids), seq + 1)
        t0 = time.perf_counter()
        store.write([settle])
        settle_s += time.perf_counter() - t0
    store.close()
    n = args.rounds * len(rids)
    print(f"{n:,} records in transactions of {len(rids):,}: store {n / reserve_s:,.0f}/s, "
          f"settle {n / settle_s:,.0f}/s, both {n / (reserve_s + settle_s):,.0f}/s")


if __name__ == "__main__":
    main()
