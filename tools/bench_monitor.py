#!/usr/bin/env python3
"""Benchmark of the customer's side (issue 4). Run by hand; results go in docs/performance.md.

    python3 tools/bench_monitor.py --work /var/tmp/pacspace-bench-monitor

A log holding 100,000 other entries, then one relationship with a month of
hourly deltas (744) and its close. Measures a monitor catching up from empty
(every record fully verified and stored) and `bill verify` on the result:
wall time, and the monitor's own CPU time (the server runs in its own process).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import add_two_parties, fill_log, register_two_homes, wait_for_health  # noqa: E402

from pacspace.client.bill import verify_bill
from pacspace.client.home import Home
from pacspace.client.http import PacspaceClient
from pacspace.client.monitor import poll
from pacspace.client.monitor_state import MonitorState
from pacspace.client.records import append_body, close_maker, create_relationship, load_relationship
from pacspace.datadir import init_log
from pacspace.records.body import Common, Delta, Line, body_hash
from pacspace.records.seal import seal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def record_month(url: str, acme: Home) -> str:
    async with PacspaceClient(url, "tok-acme") as c:
        rid = (await create_relationship(c, acme.keys(), "acme", "bob", "hourly"))["relationship"]
        view = await load_relationship(c, acme, rid, acme.log_key())
        head = view.head
        prev, seq = head.head, head.next_seq
        items = []
        for hour in range(744):
            day, h = divmod(hour, 24)
            start = f"2026-10-{day + 1:02d}T{h:02d}:00:00Z"
            end = f"2026-10-{day + 1:02d}T{h:02d}:59:59Z"
            body = Delta(Common(rid, seq, prev, f"r{seq}", end), "2026-10", start, end, (
                Line("llm.input.uncached_tokens", "token", str(1000 + hour), {"model": "m-1"}),
                Line("llm.output.visible_tokens", "token", str(200 + hour % 50), {"model": "m-1"}),
            ))
            sealed = seal(body, view.keys, acme.keys().ed25519)
            items.append({"relationship": rid, "seq": seq, "tag": base64.b64encode(sealed.tag).decode(),
                          "ciphertext": base64.b64encode(sealed.blob).decode()})
            prev, seq = body_hash(sealed.body), seq + 1
        result = await c.append_batch(items)
        if result["rejected"]:
            raise SystemExit(f"rejected: {result['results'][:1]}")
        view = await load_relationship(c, acme, rid, acme.log_key())
        await append_body(c, acme, view, close_maker(view, "2026-10"))
        return rid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-data/monitor"))
    parser.add_argument("--other-entries", type=int, default=100_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    data = args.work / "data"
    init_log(data, "bench.example/monitor", int(time.time()))
    asyncio.run(fill_log(data, args.other_entries))
    add_two_parties(data)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_health(url)
        acme, bob = asyncio.run(register_two_homes(url, args.work))
        rid = asyncio.run(record_month(url, acme))

        async def catch_up() -> tuple[float, float, int]:
            state = MonitorState(bob.path)
            async with PacspaceClient(url, "tok-bob") as c:
                cpu0, t0 = time.process_time(), time.perf_counter()
                report = await poll(c, bob, state, bob.log_key())
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            state.close()
            return wall, cpu, report.new_records

        wall, cpu, records = asyncio.run(catch_up())
        state = MonitorState(bob.path)
        cpu0, t0 = time.process_time(), time.perf_counter()
        bill = verify_bill(state, bob.log_key(), rid, "2026-10")
        bill_wall, bill_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        state.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    results = {
        "other_entries": args.other_entries,
        "records_caught_up": records,
        "catch_up_wall_s": wall,
        "catch_up_monitor_cpu_s": cpu,
        "bill_verify_wall_s": bill_wall,
        "bill_verify_cpu_s": bill_cpu,
        "bill_lines": [(x.meter, x.committed) for x in bill.lines],
    }
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
