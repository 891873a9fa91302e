#!/usr/bin/env python3
"""Benchmark of the customer's monitor (issues 4 and 20). Run by hand; results go in docs/performance.md.

    python3 tools/bench_monitor.py --work /var/tmp/pacspace-bench-monitor

A log of about ``--log-size`` entries in which ``--relationships`` relationships of one customer each hold
``--records`` hourly deltas (a month: 744) and a close, spread through the log: each hour, another
customer's records (noise, not sealed) go in before the hour's deltas, so the monitor's proofs touch
tiles all over the tree. `pacspace serve` runs in its own process; the latency proxy (50 ms added to every
request, tools/latency_proxy.py) in another.

Measured: the monitor catching up from empty (every record fully verified and stored), once directly and
once through the proxy; then `bill verify` of one relationship's month. Each from a fresh monitor copy.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import accept_as, free_port, register_two_homes, wait_for_health  # noqa: E402

from pacspace.client.bill import verify_bill  # noqa: E402
from pacspace.client.home import Home  # noqa: E402
from pacspace.client.http import PacspaceClient  # noqa: E402
from pacspace.client.monitor import poll  # noqa: E402
from pacspace.client.monitor_state import MonitorState  # noqa: E402
from pacspace.client.records import append_body, close_maker, create_relationship, load_relationship  # noqa: E402
from pacspace.datadir import init_log  # noqa: E402
from pacspace.records.body import Common, Delta, Line, body_hash  # noqa: E402
from pacspace.records.seal import BLOB_OVERHEAD, seal  # noqa: E402
from pacspace.storage.records import RecordStore  # noqa: E402


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def build(url: str, acme: Home, bob: Home, relationships: int, records: int, log_size: int) -> list[str]:
    """The relationships, their months of deltas spread through the log, and their closes; returns their ids."""
    async with PacspaceClient(url, "tok-acme") as c:
        rids = [(await create_relationship(c, acme.keys(), "acme", "bob", "hourly"))["relationship"]
                for _ in range(relationships)]
        noise = (await create_relationship(c, acme.keys(), "acme", "noise", "hourly"))["relationship"]
        views = [await load_relationship(c, acme, rid, acme.log_key()) for rid in rids]
        heads = {v.rid: (v.head.next_seq, v.head.head, v) for v in views}  # type: ignore[union-attr]
        noise_seq = 1
        per_hour = max(0, (log_size - relationships * (records + 2)) // records)
        signer = acme.keys().ed25519
        started = time.perf_counter()
        for hour in range(records):
            day, h = divmod(hour, 24)
            start, end = f"2026-10-{day + 1:02d}T{h:02d}:00:00Z", f"2026-10-{day + 1:02d}T{h:02d}:59:59Z"
            items = []
            for _ in range(per_hour):
                items.append({"relationship": noise, "seq": noise_seq, "tag": b64(os.urandom(32)),
                              "ciphertext": b64(os.urandom(BLOB_OVERHEAD + 4))})
                noise_seq += 1
            for rid in rids:
                seq, prev, view = heads[rid]
                body = Delta(Common(rid, seq, prev, f"r{seq}", end), "2026-10", start, end, (
                    Line("llm.input.uncached_tokens", "token", str(1000 + hour), {"model": "m-1"}),
                    Line("llm.output.visible_tokens", "token", str(200 + hour % 50), {"model": "m-1"}),
                ))
                sealed = seal(body, view.keys, signer)
                items.append({"relationship": rid, "seq": seq, "tag": b64(sealed.tag), "ciphertext": b64(sealed.blob)})
                heads[rid] = (seq + 1, body_hash(sealed.body), view)
            for at in range(0, len(items), 10_000):
                result = await c.append_batch(items[at : at + 10_000])
                if result["rejected"]:
                    raise SystemExit(f"rejected: {result['results'][:1]}")
            if hour % 24 == 23:
                print(f"  day {day + 1}: {(hour + 1) * (per_hour + relationships):,} records in "
                      f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
        for rid in rids:
            view = await load_relationship(c, acme, rid, acme.log_key())
            await append_body(c, acme, view, close_maker(view, "2026-10"))
    for rid in rids:
        await accept_as(url, bob, "tok-bob", rid)
    return rids


async def catch_up(url: str, home: Home) -> dict[str, float]:
    state = MonitorState(home.path)
    try:
        async with PacspaceClient(url, "tok-bob") as c:
            cpu0, t0 = time.process_time(), time.perf_counter()
            report = await poll(c, home, state, home.log_key())
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        state.close()
    if report.exit_code != 0:
        raise SystemExit(f"the poll did not verify cleanly: exit {report.exit_code}")
    return {"records": report.new_records, "relationships": report.relationships, "wall_s": round(wall, 2),
            "monitor_cpu_s": round(cpu, 2)}


def fresh_copy(bob: Home, name: str) -> Home:
    """bob's home without its monitor copy: a monitor catching up from empty."""
    home = Home(bob.path.parent / name)
    if home.path.exists():
        shutil.rmtree(home.path)
    shutil.copytree(bob.path, home.path, ignore=shutil.ignore_patterns("monitor.db*", "evidence"))
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-data/monitor"))
    parser.add_argument("--relationships", type=int, default=100)
    parser.add_argument("--records", type=int, default=744, help="hourly deltas per relationship (default 744)")
    parser.add_argument("--log-size", type=int, default=1_000_000)
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added by the proxy to every request")
    parser.add_argument("--reuse", action="store_true", help="reuse a log built before in --work")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = args.work / "data"
    if not args.reuse:
        if args.work.exists():
            shutil.rmtree(args.work)
        init_log(data, "bench.example/monitor", int(time.time()))
        store = RecordStore(data)
        store.add_party("acme", "provider", "tok-acme", 1)
        store.add_party("bob", "customer", "tok-bob", 1)
        store.add_party("noise", "customer", "tok-noise", 1)
        store.close()
    port, proxy_port = free_port(), free_port()
    url, proxied = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{proxy_port}"
    server = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = subprocess.Popen([sys.executable, str(Path(__file__).with_name("latency_proxy.py")), "--upstream", url,
                              "--port", str(proxy_port), "--latency-ms", str(args.latency_ms)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_health(url)
        wait_for_health(proxied)
        if args.reuse:
            acme, bob = Home(args.work / "acme"), Home(args.work / "bob")
            rids = json.loads((args.work / "rids.json").read_text())
        else:
            acme, bob = asyncio.run(register_two_homes(url, args.work))
            asyncio.run(_register_noise(url, args.work))
            t0 = time.perf_counter()
            rids = asyncio.run(build(url, acme, bob, args.relationships, args.records, args.log_size))
            print(f"built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            (args.work / "rids.json").write_text(json.dumps(rids))
        size = asyncio.run(_size(url))
        direct = asyncio.run(catch_up(url, fresh_copy(bob, "bob-direct")))
        through = asyncio.run(catch_up(proxied, fresh_copy(bob, "bob-proxied")))
        state = MonitorState(bob.path.parent / "bob-direct")
        try:
            t0, cpu0 = time.perf_counter(), time.process_time()
            bill = verify_bill(state, bob.log_key(), rids[0], "2026-10")
            bill_wall, bill_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        finally:
            state.close()
    finally:
        for proc in (proxy, server):
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    results = {
        "log_size": size,
        "relationships": args.relationships,
        "records_per_relationship": args.records,
        "catch_up_direct": direct,
        f"catch_up_through_{args.latency_ms:g}ms_proxy": through,
        "bill_verify_wall_s": round(bill_wall, 3),
        "bill_verify_cpu_s": round(bill_cpu, 3),
        "bill_lines": [(x.meter, x.committed) for x in bill.lines],
    }
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


async def _register_noise(url: str, work: Path) -> None:
    home = Home(work / "noise")
    async with PacspaceClient(url, "tok-noise") as c:
        keys = home.create_keys()
        await c.register_keys(keys.public.x25519, keys.public.ed25519)


async def _size(url: str) -> int:
    async with PacspaceClient(url) as c:
        return int((await c.checkpoint()).split(b"\n")[1])


if __name__ == "__main__":
    main()
