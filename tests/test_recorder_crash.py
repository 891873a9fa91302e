"""A real `pacspace recorder flush` process killed with SIGKILL mid-flush, again and again: each window is
committed exactly once, no accepted event is lost, and the customer verifies every chain."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal

from helpers import register_two_homes
from test_cli_records import run, server  # noqa: F401  (the real-server fixture)

from pacspace.client.http import PacspaceClient
from pacspace.client.records import create_relationship, load_relationship
from pacspace.datadir import open_records
from pacspace.recorder.config import load_config
from pacspace.recorder.events import cloudevent
from pacspace.recorder.spool import Spool
from pacspace.records.body import Delta

RELATIONSHIPS = 120
HOURS = (10, 11, 12, 13)


async def _create(url, acme):  # type: ignore[no-untyped-def]
    rids: list[str] = []
    async with PacspaceClient(url, "tok-acme") as c:
        queue = list(range(RELATIONSHIPS))

        async def worker():  # type: ignore[no-untyped-def]
            while queue:
                queue.pop()
                rids.append((await create_relationship(c, acme.keys(), "acme", "bob", "hourly", home=acme))["relationship"])

        await asyncio.gather(*(worker() for _ in range(16)))
    return sorted(rids)


async def _verify(url, bob, rids):  # type: ignore[no-untyped-def]
    async with PacspaceClient(url, "tok-bob") as c:
        return {rid: (await load_relationship(c, bob, rid, bob.log_key())).records for rid in rids}


def test_a_flush_killed_at_any_moment_commits_each_window_exactly_once(tmp_path, server):  # noqa: F811
    from datetime import datetime, timezone

    store = open_records(tmp_path / "pacspace-data", os.environ.get("PACSPACE_DATABASE"))  # the server's backend
    store.add_party("acme", "provider", "tok-acme", 1)
    store.add_party("bob", "customer", "tok-bob", 1)
    store.close()
    acme, bob = asyncio.run(register_two_homes(server, tmp_path))
    rids = asyncio.run(_create(server, acme))
    customers = "".join(f'[[customers]]\nref = "c{i}"\nrelationship = "{rid}"\ncadence = "hourly"\n' for i, rid in enumerate(rids))
    (tmp_path / "recorder.toml").write_text('[recorder]\ndata = "spool"\ngrace_minutes = 0\ndedup_days = 3660\n'
                                            + customers + '[meters.use]\nmeter = "m"\nunit = "u"\nvalue = "v"\n')
    config = load_config(tmp_path / "recorder.toml")
    env = {**os.environ, "PACSPACE_URL": server, "PACSPACE_TOKEN": "tok-acme", "PACSPACE_HOME": str(acme.path)}
    expected: dict[str, Decimal] = {rid: Decimal(0) for rid in rids}
    kills = 0
    for round_, hour in enumerate(HOURS):
        spool = Spool(config.data)
        route = config.router(datetime(2026, 11, 3, tzinfo=timezone.utc))
        batch = []
        for i, rid in enumerate(rids):
            for k in range(2):
                value = Decimal(i + k) / 4
                batch.append(route(cloudevent({"specversion": "1.0", "type": "use", "id": f"{hour}-{i}-{k}", "source": "s",
                                               "subject": f"c{i}", "time": f"2026-11-02T{hour:02d}:{20 * k:02d}:00Z",
                                               "data": {"v": str(value)}}, config.meters)))
                expected[rid] += value
        spool.accept(batch, "2026-11-02T09:00:00Z")
        spool.close()
        proc = subprocess.Popen([sys.executable, "-m", "pacspace", "recorder", "flush", "--config", str(tmp_path / "recorder.toml"),
                                 "--until", f"2026-11-02T{hour + 1:02d}:00:00Z"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Round 0 dies while learning the chains, round 1 as soon as its records are sealed and stored,
        # rounds 2 and 3 while sending them.
        marker, delay = (("learning", 0.0), ("sending", 0.0), ("sending", 0.02), ("sending", 0.06))[round_]
        for line in proc.stderr:
            if marker in line:
                time.sleep(delay)
                break
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 3  # the rounds really were cut short
    final = run("recorder", "flush", "--config", str(tmp_path / "recorder.toml"), "--until", "2026-11-02T15:00:00Z", env=env)
    assert final.returncode == 0
    status = Spool(config.data)
    try:
        state = status.status()
    finally:
        status.close()
    assert state["records_unsent"] == 0 and state["events_pending"] == 0
    chains = asyncio.run(_verify(server, bob, rids))  # every record fully verified by the customer
    for rid, records in chains.items():
        deltas = [r.body for r in records if isinstance(r.body, Delta)]
        assert [d.window_start for d in deltas] == [f"2026-11-02T{h:02d}:00:00Z" for h in HOURS], rid
        assert sum(Decimal(line.quantity) for d in deltas for line in d.lines) == expected[rid]
