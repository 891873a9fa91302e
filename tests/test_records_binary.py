"""POST /v1/records in the binary encoding (records/batchwire.py) against a real app: the same per-record results
as JSON, a binary answer when Accept asks for it, a malformed body refused whole, other content types refused
before the body is read; and the client's fallback to JSON against a server from before the encoding."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import pytest
from aiohttp import web
from helpers import read_answer
from test_records_api import World, error

from pacspace.checkpoint import open_checkpoint
from pacspace.client.http import PacspaceClient, ServerError
from pacspace.config import ServerConfig
from pacspace.errors import MalformedInput
from pacspace.records.batchwire import (
    CONTENT_TYPE,
    MAX_CIPHERTEXT,
    RESULTS_TYPE,
    BatchRecord,
    decode_results,
    encode_records,
)
from pacspace.records.body import body_hash
from pacspace.sequencer import SequencerConfig
from pacspace.server.app import create_app
from pacspace.server.batch_body import BatchDecoder

MiB = 1 << 20


@pytest.fixture
async def world(aiohttp_client, tmp_path, log_database):
    from helpers import new_log

    vkey = new_log(tmp_path, database=log_database)
    app = create_app(ServerConfig(data_dir=tmp_path, sequencer=SequencerConfig(pool_interval=0.01), body_timeout=2.0,
                                  database=log_database))
    w = World(await aiohttp_client(app), vkey, tmp_path, log_database)
    w.app = app
    for who in w.tokens:
        await w.register(who)
    return w


def wire(sealed, rid: str) -> BatchRecord:  # type: ignore[no-untyped-def]
    return BatchRecord(rid, sealed.seq, sealed.tag, sealed.blob)


async def post(world, body: bytes, who: str = "acme", **headers: str):  # type: ignore[no-untyped-def]
    headers = {"Content-Type": CONTENT_TYPE, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return await world.http.post("/v1/records", data=body, headers={**world.auth(who), **headers})


async def seqs(world, rid: str, who: str = "acme") -> list[int]:
    resp = await world.http.get(f"/v1/relationships/{rid}/records", headers=world.auth(who))
    return [r["seq"] for r in (await resp.json())["records"]]


async def test_a_binary_batch_commits_its_records_and_refuses_only_an_item_of_another_tenant(world):
    _, g1 = await world.create("acme:rel-1")  # each relationship's records sealed with its keys: tags differ
    d1 = world.delta(1, body_hash(g1.body), rid="acme:rel-1")
    d2 = world.delta(2, body_hash(d1.body), rid="acme:rel-1")
    _, g2 = await world.create("acme:rel-2", customer="carol")
    e1 = world.delta(1, body_hash(g2.body), rid="acme:rel-2")
    _, ge = await world.create("evil:rel-1", provider="evil", customer="carol")
    stranger = world.delta(1, body_hash(ge.body), rid="evil:rel-1", provider="evil")
    records = [wire(d1, "acme:rel-1"), wire(stranger, "evil:rel-1"), wire(e1, "acme:rel-2"), wire(d2, "acme:rel-1")]
    resp = await post(world, encode_records(records))
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert (body["accepted"], body["rejected"]) == (3, 1), json.dumps(body["results"])
    refused = body["results"][1]
    assert (refused["relationship"], refused["seq"], refused["status"], refused["error"]) == ("evil:rel-1", 1, "error", "not_found")
    checkpoint = open_checkpoint(body["checkpoint"].encode(), world.vkey)
    for result, sealed, rid in zip([body["results"][i] for i in (0, 2, 3)], (d1, e1, d2), ("acme:rel-1", "acme:rel-2", "acme:rel-1")):
        assert (result["relationship"], result["seq"], result["status"]) == (rid, sealed.seq, "ok")
        assert base64.b64decode(result["leaf_hash"]) == hashlib.sha256(b"\x00" + sealed.entry).digest()
        assert result["index"] < checkpoint.size
    assert await seqs(world, "acme:rel-1") == [0, 1, 2]
    assert await seqs(world, "acme:rel-2") == [0, 1]
    assert await seqs(world, "evil:rel-1", "evil") == [0]  # nothing of acme's reached evil's relationship
    rows = (await (await world.http.get("/v1/relationships/acme:rel-1/records", headers=world.auth("bob"))).json())["records"]
    assert [base64.b64decode(r["ciphertext"]) for r in rows[1:]] == [d1.blob, d2.blob]
    # A retry of the same records answers the same indexes and appends nothing.
    again = await (await post(world, encode_records([wire(d1, "acme:rel-1"), wire(d2, "acme:rel-1")]))).json()
    assert [r["index"] for r in again["results"]] == [body["results"][0]["index"], body["results"][3]["index"]]


async def test_accept_gets_the_binary_results(world):
    _, g1 = await world.create("acme:rel-1")
    d1 = world.delta(1, body_hash(g1.body), rid="acme:rel-1")
    _, g2 = await world.create("acme:rel-2", customer="carol")
    late = world.delta(5, body_hash(g2.body), rid="acme:rel-2")
    resp = await post(world, encode_records([wire(d1, "acme:rel-1"), wire(late, "acme:rel-2")]),
                      Accept=f"{RESULTS_TYPE}, application/json;q=0.5")
    assert (resp.status, resp.content_type) == (200, RESULTS_TYPE)
    answer = decode_results(await resp.read())
    assert (answer.accepted, answer.rejected) == (1, 1)
    index, refused = answer.results
    assert isinstance(index, int) and index < open_checkpoint(answer.checkpoint, world.vkey).size
    assert (refused["error"], refused["expected_seq"]) == ("seq_conflict", 1)
    # JSON ranked higher than the binary results: JSON.
    d2 = world.delta(2, body_hash(d1.body), rid="acme:rel-1")
    resp = await post(world, encode_records([wire(d2, "acme:rel-1")]), Accept=f"{RESULTS_TYPE};q=0.2, application/json")
    assert resp.content_type == "application/json" and (await resp.json())["accepted"] == 1


async def test_a_json_batch_may_ask_for_binary_results_too(world):
    _, g1 = await world.create("acme:rel-1")
    d1 = world.delta(1, body_hash(g1.body), rid="acme:rel-1")
    resp = await world.http.post("/v1/records", json={"records": [wire(d1, "acme:rel-1").to_json(), {"seq": 1}]},
                                 headers={**world.auth("acme"), "Accept": RESULTS_TYPE})
    answer = decode_results(await resp.read())
    assert (answer.accepted, answer.rejected, answer.results[1]["error"]) == (1, 1, "malformed")


async def test_a_malformed_binary_body_is_refused_whole_and_nothing_is_appended(world):
    _, g1 = await world.create("acme:rel-1")
    d1 = world.delta(1, body_hash(g1.body), rid="acme:rel-1")
    good = encode_records([wire(d1, "acme:rel-1")])
    two = good[:11] + b"\x02" + good[12:]  # announces two records, carries one
    body = await error(await post(world, two), 400, "malformed")
    assert "ends inside record 2" in body["message"]
    body = await error(await post(world, good + b"\x00"), 400, "malformed")
    assert "bytes after the last" in body["message"]
    bad_id = two + bytes([5]) + b"acme " + bytes(44)
    await error(await post(world, bad_id), 400, "malformed")
    huge = two + bytes([10]) + b"acme:rel-1" + bytes(40) + (MAX_CIPHERTEXT + 1).to_bytes(4, "big")
    await error(await post(world, huge), 413, "too_large")
    await error(await post(world, b'{"records": []}'), 400, "malformed")
    assert await seqs(world, "acme:rel-1") == [0]


async def test_a_customer_sending_a_binary_batch_is_refused(world):
    await world.create("acme:rel-1")
    await error(await post(world, encode_records([BatchRecord("acme:rel-1", 1, bytes(32), bytes(100))]), who="bob"),
                403, "forbidden")


def raw_head(token: str, length: int, content_type: str | None) -> bytes:
    lines = ["POST /v1/records HTTP/1.1", "Host: x", f"Authorization: Bearer {token}", f"Content-Length: {length}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def exchange(world, head: bytes, body: bytes = b""):  # type: ignore[no-untyped-def]
    reader, writer = await asyncio.open_connection("127.0.0.1", world.http.server.port)
    writer.write(head + body)
    await writer.drain()
    try:
        status, _, answer = await read_answer(reader, timeout=20)
    finally:
        writer.close()
    return status, json.loads(answer)


@pytest.mark.parametrize("content_type", ["application/octet-stream", "text/plain", "application/x-www-form-urlencoded",
                                          "application/vnd.pacspace.records.v2", "multipart/form-data; boundary=x"])
async def test_another_content_type_is_415_before_the_body_is_read(world, content_type):
    """Nothing of the 64 MiB body is sent: the answer comes without it."""
    status, body = await exchange(world, raw_head("tok-acme", 64 * MiB, content_type))
    assert (status, body["error"]) == (415, "unsupported_media_type")
    assert CONTENT_TYPE in body["message"]


async def test_a_binary_batch_is_refused_from_its_header_before_the_rest_arrives(world):
    status, body = await exchange(world, raw_head("tok-acme", 64 * MiB, CONTENT_TYPE), b"pacsrec\x01" + (10_001).to_bytes(4, "big"))
    assert (status, body["error"]) == (400, "malformed")
    assert "10000" in body["message"]


async def test_a_body_without_a_content_type_is_json(world):
    _, g1 = await world.create("acme:rel-1")
    d1 = world.delta(1, body_hash(g1.body), rid="acme:rel-1")
    body = json.dumps({"records": [wire(d1, "acme:rel-1").to_json()]}).encode()
    status, answer = await exchange(world, raw_head("tok-acme", len(body), None), body)
    assert (status, answer["accepted"]) == (200, 1)


async def test_the_client_sends_binary_batches_and_reads_binary_results(world):
    _, g1 = await world.create("acme:rel-1")
    d1 = world.delta(1, body_hash(g1.body), rid="acme:rel-1")
    d3 = world.delta(3, body_hash(d1.body), rid="acme:rel-1")
    async with PacspaceClient(str(world.http.make_url("")), "tok-acme") as client:
        answer = await client.append_batch([wire(d1, "acme:rel-1")])
        assert not client.batch_as_json
        (ok,) = answer["results"]
        assert (answer["accepted"], ok["relationship"], ok["seq"], ok["status"]) == (1, "acme:rel-1", 1, "ok")
        assert open_checkpoint(answer["checkpoint"].encode(), world.vkey).size > ok["index"]
        answer = await client.append_batch([wire(d3, "acme:rel-1")])
        (refused,) = answer["results"]
        assert (refused["status"], refused["error"], refused["expected_seq"]) == ("error", "seq_conflict", 2)
        with pytest.raises(MalformedInput):
            await client.append_batch([BatchRecord("acme:rel-1", 2, bytes(31), bytes(100))])


class OldServer:
    """POST /v1/records as a server from before the binary encoding: JSON only. ``refusal`` is how it refuses
    another body: 415, or the 400 of its JSON decoder."""

    def __init__(self, refusal: int) -> None:
        self.refusal = refusal
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request.content_type)
        data = await request.read()
        if request.content_type != "application/json":
            if self.refusal == 415:
                return web.json_response({"error": "unsupported_media_type", "message": "JSON only"}, status=415)
            try:
                BatchDecoder(1 << 17).feed(data)
            except MalformedInput as exc:
                return web.json_response({"error": exc.code, "message": str(exc)}, status=400)
            raise AssertionError("a binary body decoded as JSON")
        items = json.loads(data)["records"]
        if self.refusal == 400 and len(items) > 2:
            return web.json_response({"error": "malformed", "message": "records is a list of 1 to 2 records"}, status=400)
        results = [{"relationship": i["relationship"], "seq": i["seq"], "status": "ok", "index": n, "leaf_hash": "x"}
                   for n, i in enumerate(items)]
        return web.json_response({"accepted": len(items), "rejected": 0, "checkpoint": None, "results": results})


@pytest.mark.parametrize("refusal", [415, 400])
async def test_the_client_falls_back_to_json_once_for_a_server_from_before(aiohttp_server, refusal):
    old = OldServer(refusal)
    app = web.Application()
    app.router.add_post("/v1/records", old.handle)
    server = await aiohttp_server(app)
    records = [BatchRecord("acme:r1", 1, bytes(32), bytes(100)), BatchRecord("acme:r2", 4, bytes(32), bytes(100))]
    async with PacspaceClient(str(server.make_url("")), "tok-acme") as client:
        answer = await client.append_batch(records)
        assert [(r["relationship"], r["seq"], r["status"]) for r in answer["results"]] == [("acme:r1", 1, "ok"), ("acme:r2", 4, "ok")]
        assert old.seen == [CONTENT_TYPE, "application/json"] and client.batch_as_json
        await client.append_batch(records[:1])  # remembered: straight to JSON
        assert old.seen == [CONTENT_TYPE, "application/json", "application/json"]
    async with PacspaceClient(str(server.make_url("")), "tok-acme") as client:
        assert (await client.append_batch(records[:1]))["accepted"] == 1  # a new session asks again
        assert old.seen[3:] == [CONTENT_TYPE, "application/json"]


async def test_the_client_does_not_fall_back_for_any_other_refusal(aiohttp_server):
    old = OldServer(400)
    app = web.Application()
    app.router.add_post("/v1/records", old.handle)
    server = await aiohttp_server(app)
    async with PacspaceClient(str(server.make_url("")), "tok-acme") as client:
        client.batch_as_json = True
        with pytest.raises(ServerError) as refused:
            await client.append_batch([BatchRecord("acme:r1", n, bytes(32), bytes(100)) for n in range(3)])
        assert refused.value.http_status == 400 and old.seen == ["application/json"]

    async def no_binary(request: web.Request) -> web.Response:
        return web.json_response({"error": "malformed", "message": "records is a list of 1 to 10000 records"}, status=400)

    app = web.Application()
    app.router.add_post("/v1/records", no_binary)
    server = await aiohttp_server(app)
    async with PacspaceClient(str(server.make_url("")), "tok-acme") as client:
        with pytest.raises(ServerError):
            await client.append_batch([BatchRecord("acme:r1", 1, bytes(32), bytes(100))])
        assert not client.batch_as_json
