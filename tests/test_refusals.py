"""A party whose requests keep being refused is slowed down (429), and no other party is."""

from __future__ import annotations

import asyncio
import base64
import time

from helpers import new_log

from pacspace.config import ServerConfig
from pacspace.server.app import create_app
from pacspace.server.refusals import BURST_SECONDS, Refusals
from pacspace.storage.records import RecordStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_empties_with_refusals_and_refills_with_time():
    clock = Clock()
    refusals = Refusals(rate=2.0, clock=clock)
    for _ in range(2 * BURST_SECONDS):
        assert refusals.deficit("evil") == 0
        refusals.charge("evil")
    refusals.charge("evil", 3)
    assert refusals.deficit("evil") == 1.5 and refusals.deficit("acme") == 0
    clock.now = 1.5
    assert refusals.deficit("evil") == 0


async def test_a_flood_of_refused_requests_gets_429_and_the_other_partys_requests_go_through(aiohttp_client, tmp_path):
    new_log(tmp_path)
    store = RecordStore(tmp_path)
    for name in ("acme", "evil"):
        store.add_party(name, "provider", f"tok-{name}", int(time.time()))
    store.close()
    client = await aiohttp_client(create_app(ServerConfig(data_dir=tmp_path, refusal_rate=2.0)))
    bad = {"relationship": "evil:none", "seq": 1, "tag": base64.b64encode(bytes(32)).decode(), "ciphertext": "AA=="}

    async def flood() -> list[int]:
        statuses = []
        for _ in range(4):
            answers = await asyncio.gather(*(client.post("/v1/records", json={"records": [bad]},
                                                         headers={"Authorization": "Bearer tok-evil"})
                                             for _ in range(10)))
            statuses += [r.status for r in answers]
        return statuses

    async def honest() -> list[int]:
        statuses = []
        for _ in range(20):
            resp = await client.get("/v1/me", headers={"Authorization": "Bearer tok-acme"})
            statuses.append(resp.status)
            await asyncio.sleep(0.01)
        return statuses

    flooded, served = await asyncio.gather(flood(), honest())
    assert served == [200] * 20
    assert flooded[:20] == [200] * 20  # a burst of 20 batches with a refused record each is allowed
    assert flooded[-10:] == [429] * 10
    resp = await client.post("/v1/records", json={"records": [bad]}, headers={"Authorization": "Bearer tok-evil"})
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["error"] == "slow_down"
