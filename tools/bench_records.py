#!/usr/bin/env python3
"""Benchmark of recordation over HTTP (issue 3). Run by hand; results go in docs/performance.md.

    python3 tools/bench_records.py --work /var/tmp/pacspace-bench-records

Starts a real `pacspace serve` on a fresh data directory, creates a provider, a
customer and 1,000 relationships, then measures:

- client sealing per second (in-process, one core);
- single-record appends (POST /v1/relationships/{rid}/records) at concurrency
  256 across the 1,000 relationships: records/s and append-to-receipt p50/p99;
- batch appends (POST /v1/records, 2,000 records a request, 4 requests in
  flight, each sender over its own quarter of the relationships): records/s,
  in the binary encoding with binary results (``--encoding binary``, the
  default) or as JSON (``--encoding json``, the only one a server from before
  issue 20 takes).

``--backends sqlite,postgres`` runs the whole benchmark once on each, in this order, in the same run: the
second (after an os.sync() and a 5 s pause, so that the first's writes still being flushed do not slow its
fsyncs) with the log and its records in a throwaway PostgreSQL on 127.0.0.1 (fsync on; tests/postgres_server.py,
Debian's binaries), as ``serve --database`` keeps them; then prints each figure's ratio to SQLite's.

``--server-src DIR`` runs the server (and the commands that create its data
directory and parties) from another source tree, e.g. a ``git worktree`` of
the previous commit, for interleaved comparisons; the load generator stays
this tree's.

Records are sealed before each timed phase, so the load generator spends its
time on HTTP, not on cryptography; it still shares the machine's two cores
with the server.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import asyncio
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

from pacspace.keys import PartyKeys, wrap_secret
from pacspace.records.batchwire import CONTENT_TYPE, RESULTS_TYPE, BatchRecord, decode_results, encode_records
from pacspace.records.body import GENESIS_PREV, Common, Delta, Genesis, Line, body_hash
from pacspace.records.body import PartyKeys as NamedKeys
from pacspace.records.seal import RelationshipKeys, Sealed, seal

B64 = lambda b: base64.b64encode(b).decode()  # noqa: E731


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def named(name: str, keys: PartyKeys) -> NamedKeys:
    j = keys.public.to_json()
    return NamedKeys(name, j["x25519"], j["ed25519"])


class Rel:
    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.keys = RelationshipKeys.generate()
        self.next_seq = 0
        self.head = GENESIS_PREV

    def next_delta(self, provider: PartyKeys, hour: int) -> Sealed:
        body = Delta(
            Common(self.rid, self.next_seq, self.head, secrets.token_hex(6), "2026-11-02T00:00:00Z"),
            "2026-11",
            f"2026-11-02T{hour % 24:02d}:00:00Z",
            f"2026-11-02T{hour % 24:02d}:59:59Z",
            (
                Line("llm.input.uncached_tokens", "token", str(1000 + hour), {"model": "m-1"}),
                Line("llm.output.visible_tokens", "token", str(300 + hour), {"model": "m-1"}),
            ),
        )
        sealed = seal(body, self.keys, provider.ed25519)
        self.next_seq += 1
        self.head = body_hash(sealed.body)
        return sealed


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user + system) of a process and of each of its children, from /proc (Linux)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for p in [str(pid), *children]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out["server" if p == str(pid) else f"worker {p}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_used(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Cores used by each server process over ``seconds``."""
    return {k: round((after[k] - before.get(k, 0.0)) / seconds, 2) for k in after}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVER_ENV = dict(os.environ)  # --server-src puts another tree first on the server's PYTHONPATH


def pacspace(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "pacspace", *args], check=True, capture_output=True, text=True,
                          env=SERVER_ENV).stdout.strip()


async def setup(url: str, data: Path, count: int) -> tuple[str, PartyKeys, list[Rel]]:
    ptoken = pacspace("admin", "party", "add", "acme", "--role", "provider", "--data", str(data))
    ctoken = pacspace("admin", "party", "add", "bob", "--role", "customer", "--data", str(data))
    provider, customer = PartyKeys.generate(), PartyKeys.generate()
    async with aiohttp.ClientSession() as s:
        for token, keys in ((ptoken, provider), (ctoken, customer)):
            pub = keys.public
            async with s.put(f"{url}/v1/me/keys", json={"x25519": B64(pub.x25519), "ed25519": B64(pub.ed25519)},
                             headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200, await r.text()
        rels = [Rel(f"acme:rel_{i:05d}") for i in range(count)]
        sem = asyncio.Semaphore(128)

        async def create(rel: Rel) -> None:
            g = seal(Genesis(Common(rel.rid, 0, GENESIS_PREV, "g", "2026-11-01T00:00:00Z"),
                             named("acme", provider), named("bob", customer), "hourly"), rel.keys, provider.ed25519)
            body = {"relationship": rel.rid, "customer": "bob", "cadence": "hourly",
                    "wraps": {"provider": B64(wrap_secret(rel.keys.secret, provider.public, rel.rid, 0)),
                              "customer": B64(wrap_secret(rel.keys.secret, customer.public, rel.rid, 0))},
                    "genesis": {"seq": 0, "tag": B64(g.tag), "ciphertext": B64(g.blob)}}
            async with sem, s.post(f"{url}/v1/relationships", json=body, headers={"Authorization": f"Bearer {ptoken}"}) as r:
                assert r.status == 201, await r.text()
            rel.next_seq, rel.head = 1, body_hash(g.body)

        await asyncio.gather(*(create(r) for r in rels))
    return ptoken, provider, rels


def sealing_rate(provider: PartyKeys, rels: list[Rel], seconds: float = 3.0) -> float:
    scratch = [Rel(f"scratch_{i}") for i in range(10)]
    for rel in scratch:
        rel.next_seq = 1
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        scratch[n % 10].next_delta(provider, n)
        n += 1
    return n / (time.perf_counter() - t0)


async def single_phase(url: str, token: str, provider: PartyKeys, rels: list[Rel], per_rel: int, concurrency: int) -> dict[str, float]:
    # Each worker owns a disjoint set of relationships and appends to them in turn (seqs stay in order).
    work = {i: [] for i in range(concurrency)}  # type: dict[int, list[tuple[str, Sealed]]]
    for i, rel in enumerate(rels):
        for k in range(per_rel):
            work[i % concurrency].append((rel.rid, rel.next_delta(provider, k)))
    for i in work:
        work[i].sort(key=lambda item: item[1].seq)
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as s:

        async def worker(items: list[tuple[str, Sealed]]) -> None:
            for rid, sealed in items:
                body = {"seq": sealed.seq, "tag": B64(sealed.tag), "ciphertext": B64(sealed.blob)}
                t0 = time.perf_counter()
                async with s.post(f"{url}/v1/relationships/{rid}/records", json=body) as r:
                    await r.read()
                    if r.status != 201:
                        raise SystemExit(f"append failed: {r.status} {await r.text()}")
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(items) for items in work.values()))
        elapsed = time.perf_counter() - t0
    return {
        "records": len(latencies),
        "concurrency": concurrency,
        "records_per_s": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 50) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
    }


def wrk_phase(url: str, token: str, provider: PartyKeys, rels: list[Rel], per_rel: int, concurrency: int,
              seconds: int, work: Path, server_pid: int) -> dict[str, float]:
    """The single-record phase driven by wrk (C, two threads): the load generator costs the server's cores far less.

    Records are sealed first; each wrk thread owns half the relationships and
    appends to each in seq order (tools/bench_records_wrk.lua). Runs for
    ``seconds``; ``per_rel`` must cover what the server can take in that time.
    """
    import hashlib

    from pacspace.records.seal import entry_from_ct_hash

    threads = 2
    prefix = work / "wrk-bodies-"
    files = [open(f"{prefix}{t}", "w") for t in range(threads)]
    try:
        for i, rel in enumerate(rels):
            out = files[i % threads]
            for k in range(per_rel):
                sealed = rel.next_delta(provider, k)
                ct_hash = hashlib.sha256(sealed.blob).digest()
                leaf = hashlib.sha256(b"\x00" + entry_from_ct_hash(sealed.tag, ct_hash)).digest()
                body = json.dumps({"seq": sealed.seq, "tag": B64(sealed.tag), "ciphertext": B64(sealed.blob)})
                out.write(f"{rel.rid}\t{B64(leaf)}\t{body}\n")
    finally:
        for f in files:
            f.close()
    script = Path(__file__).with_name("bench_records_wrk.lua")
    import resource

    cpu0, t0 = cpu_seconds(server_pid), time.perf_counter()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url,
         "--", token, str(prefix)],
        check=True, capture_output=True, text=True,
    )
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    appended = report["requests"] - report["exhausted"] - report["failures"]
    if report["failures"] or report["socket_errors"]:
        raise SystemExit(f"wrk saw failures: {report}")
    if report["exhausted"]:
        raise SystemExit(f"ran out of sealed records ({report}): raise --per-relationship")
    return {"records": appended, "concurrency": concurrency, "client": "wrk",
            "records_per_s": appended / report["seconds"], "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"],
            "max_ms": report["max_ms"],
            "server_cores": cpu_used(cpu0, cpu_seconds(server_pid), time.perf_counter() - t0),
            "wrk_cores": round(wrk_cpu / report["seconds"], 2)}


async def batch_phase(url: str, token: str, provider: PartyKeys, rels: list[Rel], rounds: int, per_request: int,
                      in_flight: int, server_pid: int, encoding: str = "binary") -> dict[str, float]:
    """``in_flight`` senders, each over its own share of the relationships, each sending ``rounds`` requests in turn."""
    shares = [rels[i::in_flight] for i in range(in_flight)]
    plans: list[list[list[BatchRecord]]] = []
    for share in shares:
        per_rel = max(1, per_request // len(share))
        plan = []
        for _ in range(rounds):
            items = []
            for rel in share:
                for k in range(per_rel):
                    sealed = rel.next_delta(provider, k)
                    items.append(BatchRecord(rel.rid, sealed.seq, sealed.tag, sealed.blob))
            plan.append(items)
        plans.append(plan)
    # Bodies are encoded before the clock starts: the load generator shares the server's two cores.
    if encoding == "binary":
        bodies = [[encode_records(items) for items in plan] for plan in plans]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": CONTENT_TYPE, "Accept": RESULTS_TYPE}
    else:
        bodies = [[json.dumps({"records": [r.to_json() for r in items]}).encode() for items in plan] for plan in plans]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    total = 0
    latencies: list[float] = []
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=600)) as s:

        async def sender(plan: list[bytes]) -> None:
            nonlocal total
            for data in plan:
                t0 = time.perf_counter()
                async with s.post(f"{url}/v1/records", data=data) as r:
                    if r.status != 200:
                        raise SystemExit(f"batch refused: {r.status} {await r.text()}")
                    if r.content_type == RESULTS_TYPE:
                        answer = decode_results(await r.read())
                        accepted, rejected, first = answer.accepted, answer.rejected, answer.results[:2]
                    else:
                        body = await r.json()
                        accepted, rejected, first = body["accepted"], body["rejected"], body["results"][:2]
                latencies.append(time.perf_counter() - t0)
                if rejected:
                    raise SystemExit(f"batch rejected records: {first}")
                total += accepted

        print(f"batch: sending {sum(map(len, bodies))} requests", file=sys.stderr, flush=True)
        cpu0, t0, own0 = cpu_seconds(server_pid), time.perf_counter(), time.process_time()
        await asyncio.gather(*(sender(plan) for plan in bodies))
        elapsed = time.perf_counter() - t0
        cores = cpu_used(cpu0, cpu_seconds(server_pid), elapsed)
        cores["load generator"] = round((time.process_time() - own0) / elapsed, 2)
    server_cpu_us = sum(v for k, v in cores.items() if k != "load generator") * elapsed / total * 1e6
    return {"records": total, "encoding": encoding, "records_per_request": len(plans[0][0]), "in_flight": in_flight,
            "records_per_s": total / elapsed, "request_p50_ms": pct(latencies, 50) * 1000, "server_cores": cores,
            "server_cpu_us_per_record": round(server_cpu_us, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-data/records"))
    parser.add_argument("--relationships", type=int, default=1000)
    parser.add_argument("--per-relationship", type=int, default=20, help="single-record appends per relationship")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python",
                        help="load generator of the single phase (default: wrk when installed)")
    parser.add_argument("--seconds", type=int, default=10, help="length of the wrk single phase")
    parser.add_argument("--batch-size", type=int, default=2000, help="records per batch request")
    parser.add_argument("--batch-in-flight", type=int, default=4, help="batch requests in flight")
    parser.add_argument("--batch-rounds", type=int, default=25)
    parser.add_argument("--serve-args", default="", help="extra arguments for pacspace serve")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--phases", default="single,batch", help="which timed phases to run")
    parser.add_argument("--profile", type=Path, help="run the server under cProfile, writing its stats here")
    parser.add_argument("--encoding", choices=("binary", "json"), default="binary", help="the batch phase's encoding")
    parser.add_argument("--server-src", type=Path, help="run the server from this source tree (its src/ directory)")
    parser.add_argument("--backends", default="sqlite",
                        help="sqlite, postgres, postgres+s3 (with --objects on a throwaway SeaweedFS), or several in "
                        "turn: sqlite,postgres,postgres+s3")
    args = parser.parse_args()
    if args.server_src:
        SERVER_ENV["PYTHONPATH"] = os.pathsep.join(p for p in (str(args.server_src.resolve()), os.environ.get("PYTHONPATH")) if p)
    SERVER_ENV.pop("PACSPACE_DATABASE", None)
    backends = args.backends.split(",")
    postgres = s3 = None
    if any(b.startswith("postgres") for b in backends):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from postgres_server import PostgresServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
        postgres = PostgresServer(bindir)  # started by its constructor
    results = {}
    try:
        if "postgres+s3" in backends:
            from s3_server import start_s3

            s3 = start_s3()
        for backend in backends:
            env = dict(SERVER_ENV)
            extra: list[str] = []
            if backend.startswith("postgres"):
                assert postgres is not None
                env["PACSPACE_DATABASE"] = postgres.database()
            if backend == "postgres+s3":
                assert s3 is not None
                env.update(s3.env())
                extra = ["--objects", f"s3://{s3.bucket()}"]
            # The previous backend's writes still being flushed would slow this one's fsyncs: flush them first.
            os.sync()
            time.sleep(5)
            print(f"--- {backend}", file=sys.stderr, flush=True)
            results[backend] = run_one(args, env, extra)
    finally:
        if postgres is not None:
            postgres.stop()
        if s3 is not None:
            s3.stop()
    if len(results) > 1:
        base = results[backends[0]]
        for backend in backends[1:]:
            ratios = {}
            for phase in ("single", "batch"):
                if phase in base and phase in results[backend]:
                    ratios[f"{phase} records/s"] = round(results[backend][phase]["records_per_s"] / base[phase]["records_per_s"], 2)
            results[f"{backend} / {backends[0]}"] = ratios
    text = json.dumps(results if len(results) > 1 else results[backends[0]], indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def run_one(args: argparse.Namespace, env: dict[str, str], extra: Sequence[str] = ()) -> dict[str, object]:
    """The whole benchmark against one fresh log, its server started with ``env`` and ``extra`` arguments. With
    ``--objects`` among them, also how long the sealed blobs then take to leave the database (blobs_moved_per_s)."""
    global SERVER_ENV
    SERVER_ENV = env
    data = args.work / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    pacspace("init", "--data", str(data), "--origin", "bench.example/records")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, *(["-m", "cProfile", "-o", str(args.profile)] if args.profile else []), "-m", "pacspace", "serve", "--data", str(data), "--port", str(port), *args.serve_args.split(), *extra],
        stdout=subprocess.DEVNULL, stderr=(args.work / "server.log").open("w"), env=SERVER_ENV,
    )
    url = f"http://127.0.0.1:{port}"
    results: dict[str, object] = {}
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        token, provider, rels = asyncio.run(setup(url, data, args.relationships))
        results["sealing_per_s"] = sealing_rate(provider, rels)
        print(f"sealing: {results['sealing_per_s']:,.0f}/s", file=sys.stderr)
        if "single" in args.phases:
            cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
            if args.client == "wrk":
                single = wrk_phase(url, token, provider, rels, args.per_relationship, args.concurrency,
                                   args.seconds, args.work, server.pid)
            else:
                single = asyncio.run(single_phase(url, token, provider, rels, args.per_relationship, args.concurrency))
                single["server_cores"] = cpu_used(cpu0, cpu_seconds(server.pid), time.perf_counter() - t0)
            results["single"] = single
            print(f"single: {single}", file=sys.stderr)
        if "batch" in args.phases:
            results["batch"] = asyncio.run(batch_phase(url, token, provider, rels, args.batch_rounds, args.batch_size,
                                                       args.batch_in_flight, server.pid, args.encoding))
            print(f"batch: {results['batch']}", file=sys.stderr)
        if "--objects" in extra:
            results["blobs"] = blob_drain(env["PACSPACE_DATABASE"])
            print(f"blobs: {results['blobs']}", file=sys.stderr)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    return results


def blob_drain(database: str) -> dict[str, float]:
    """From the end of the timed phases: how long until the blob mirror has moved every settled blob to the store."""
    import psycopg

    with psycopg.connect(database, autocommit=True) as conn:
        def inline() -> int:
            return int(conn.execute("SELECT count(*) FROM records WHERE blob IS NOT NULL").fetchone()[0])  # type: ignore[index]

        t0, waiting = time.perf_counter(), inline()
        total = int(conn.execute("SELECT count(*) FROM records").fetchone()[0])  # type: ignore[index]
        while inline() and time.perf_counter() - t0 < 1800:
            time.sleep(0.5)
        seconds = time.perf_counter() - t0
    return {"records": total, "inline_after_phases": waiting, "drain_s": round(seconds, 1),
            "blobs_moved_per_s": round(waiting / seconds, 0) if waiting else 0.0}


if __name__ == "__main__":
    main()
