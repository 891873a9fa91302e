#!/usr/bin/env python3
"""The batch route's request path per record, in-process (issue 20). Run by hand; results go in docs/performance.md.

    python3 tools/bench_batchwire.py

For one request of 2,000 records with 1,085-byte ciphertexts (the size tools/bench_records.py seals): decoding
and checking the body as the server does (64 KiB chunks into the JSON decoder and _Batch.add, or into the binary
decoder and _Batch.add_records), and building the answer (the committed code's dicts and json.dumps, the JSON
template, the binary results). Each measure is the best of ``--repeat`` rounds, the kinds interleaved within
each round, so that the machine's drift touches them alike.
"""

from __future__ import annotations

import argparse
import binascii
import json
import os
import time
from collections.abc import Callable
from hashlib import sha256

from pacspace.records.batchwire import BatchRecord, RecordsDecoder, encode_records, encode_results
from pacspace.server import batch_answer
from pacspace.server.batch_body import BatchDecoder
from pacspace.server.records_api import _Batch

CHUNK = 64 << 10


def request_json(body: bytes) -> _Batch:
    batch, decoder = _Batch(), BatchDecoder(1 << 18)
    for at in range(0, len(body), CHUNK):
        for item in decoder.feed(body[at : at + CHUNK]):
            batch.add(item)
    for item in decoder.end():
        batch.add(item)
    return batch


def request_binary(body: bytes) -> _Batch:
    batch, decoder = _Batch(), RecordsDecoder()
    for at in range(0, len(body), CHUNK):
        records = decoder.feed(body[at : at + CHUNK])
        if records:
            batch.add_records(records)
    decoder.end()
    return batch


def answer_dicts(results: list[tuple[str, int, int, bytes]]) -> bytes:
    """The answer as the code before issue 20 built it: a dict per record, then json.dumps (web.json_response)."""
    out = [{"relationship": rid, "seq": seq, "status": "ok", "index": index,
            "leaf_hash": binascii.b2a_base64(sha256(b"\x00" + entry).digest(), newline=False).decode()}
           for rid, seq, index, entry in results]
    return json.dumps({"accepted": len(out), "rejected": 0, "checkpoint": "x" * 300, "results": out}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--relationships", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    n = args.records
    records = [BatchRecord(f"acme:rel_{i % args.relationships:05d}", 1 + i // args.relationships, os.urandom(32),
                           os.urandom(1085)) for i in range(n)]
    json_body = json.dumps({"records": [r.to_json() for r in records]}).encode()
    binary_body = encode_records(records)
    batch = request_binary(binary_body)
    results = [(rid, sub.seq, 1_000_000 + i, sub.entry) for rid, group in batch.members.items() for i, sub in group]
    checkpoint = b"x" * 300
    kinds: dict[str, Callable[[], object]] = {
        "request, JSON": lambda: request_json(json_body),
        "request, binary": lambda: request_binary(binary_body),
        "answer, dicts + json.dumps (before)": lambda: answer_dicts(results),
        "answer, JSON template": lambda: batch_answer.json_answer(checkpoint, results),  # type: ignore[arg-type]
        "answer, binary": lambda: encode_results(checkpoint, [r[2] for r in results]),
    }
    best = {k: float("inf") for k in kinds}
    for _ in range(args.repeat):
        for kind, run in kinds.items():
            t0 = time.perf_counter()
            run()
            best[kind] = min(best[kind], time.perf_counter() - t0)
    print(f"{n} records of 1,085 bytes; body {len(json_body):,} bytes as JSON, {len(binary_body):,} binary")
    for kind, seconds in best.items():
        print(f"{kind:40s} {seconds / n * 1e6:6.2f} µs a record")
    print(json.dumps({k: round(v / n * 1e6, 2) for k, v in best.items()}))


if __name__ == "__main__":
    main()
