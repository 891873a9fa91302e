"""The read API over HTTP, checked from outside as a stranger's tlog client would, with only the vkey."""

from __future__ import annotations

import asyncio
import base64
import gzip
import struct

import pytest

from pacspace.checkpoint import open_checkpoint
from pacspace.config import ServerConfig
from pacspace.merkle import ListHashReader, leaf_hash, tree_hash, verify_consistency, verify_inclusion
from pacspace.note import parse_vkey
from pacspace.sequencer import SequencerConfig
from pacspace.server.app import create_app
from pacspace.server.context import SERVICE
from pacspace.tiles import TileRef, tiles_for_size

from helpers import entry, new_log, reference_tile

SIZES = [1, 255, 256, 257, 65536, 70000]


@pytest.fixture
async def server(aiohttp_client, tmp_path, log_database):
    """The app on each backend (log_database: SQLite, then PostgreSQL)."""
    vkey = new_log(tmp_path, database=log_database)
    app = create_app(ServerConfig(data_dir=tmp_path, sequencer=SequencerConfig(pool_interval=0.01), database=log_database))
    client = await aiohttp_client(app)
    client.vkey = vkey
    client.storage = "sqlite" if log_database is None else "postgresql"
    client.sequencer = app[SERVICE].sequencer
    return client


async def grow(client, entries: list[bytes], to: int) -> None:
    size = client.sequencer.latest.size
    new = [entry(i) for i in range(size, to)]
    await client.sequencer.submit_many(new)
    entries.extend(new)


async def fetch_checkpoint(client):
    resp = await client.get("/checkpoint")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "no-cache" in resp.headers["Cache-Control"]
    return open_checkpoint(await resp.read(), parse_vkey(client.vkey))


async def test_checkpoint_verifies_with_only_the_vkey(server):
    checkpoint = await fetch_checkpoint(server)
    assert checkpoint.size == 0
    assert checkpoint.timestamp > 0
    resp = await server.get("/v1/log")
    body = await resp.json()
    assert body["vkey"] == server.vkey and body["size"] == 0 and body["origin"] == "example.com/test-log"


async def test_tiles_and_bundles_at_edge_sizes(server):
    """Every tile and bundle each checkpoint implies, byte-exact to the C2SP definition."""
    entries: list[bytes] = []
    previous = None
    for size in SIZES:
        await grow(server, entries, size)
        checkpoint = await fetch_checkpoint(server)
        assert checkpoint.size == size
        hashes = [leaf_hash(e) for e in entries]
        assert checkpoint.root_hash == tree_hash(size, ListHashReader(hashes))
        if previous is not None:
            resp = await server.get(f"/v1/proof/consistency?old={previous.size}&size={size}")
            body = await resp.json()
            proof = [base64.b64decode(h) for h in body["hashes"]]
            verify_consistency(previous.size, size, previous.root_hash, checkpoint.root_hash, proof)
        previous = checkpoint
        for ref in tiles_for_size(size):
            resp = await server.get("/" + ref.path())
            assert resp.status == 200, ref.path()
            assert resp.headers["Content-Type"] == "application/octet-stream"
            assert "immutable" in resp.headers["Cache-Control"]
            assert await resp.read() == reference_tile(hashes, ref.level, ref.n, ref.width)
            if ref.level == 0:
                resp = await server.get("/" + TileRef(None, ref.n, ref.width).path())
                start = ref.n * 256
                expected = b"".join(struct.pack(">H", 65) + e for e in entries[start : start + ref.width])
                assert await resp.read() == expected
    # Full tiles: spot check the first and last at level 0, and the full level-1 tile.
    hashes = [leaf_hash(e) for e in entries]
    for level, n in [(0, 0), (0, 272), (1, 0)]:
        resp = await server.get("/" + TileRef(level, n).path())
        assert resp.status == 200
        assert await resp.read() == reference_tile(hashes, level, n, 256)
    resp = await server.get("/tile/entries/272", headers={"Accept-Encoding": "gzip"})
    assert resp.status == 200
    raw = await resp.read()
    assert raw == b"".join(struct.pack(">H", 65) + e for e in entries[272 * 256 : 273 * 256])
    # Partial tiles of earlier checkpoints stay servable after the tile grew.
    for size in SIZES:
        for ref in tiles_for_size(size):
            resp = await server.get("/" + ref.path())
            assert resp.status == 200, ref.path()


async def test_entry_bundles_are_gzip_compressed_when_asked(server):
    await grow(server, [], 300)
    resp = await server.get("/tile/entries/000", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert resp.status == 200
    assert resp.headers.get("Content-Encoding") == "gzip"
    data = gzip.decompress(await resp.read())
    assert len(data) == 256 * 67


async def test_nothing_unpublished_is_served(server):
    await grow(server, [], 300)
    # Size 300 implies partial level-0 width 44 and level-1 width 1; nothing else partial.
    for path in [
        "/tile/0/001.p/43",
        "/tile/0/001.p/45",
        "/tile/0/001",
        "/tile/0/002.p/1",
        "/tile/1/000",
        "/tile/1/000.p/2",
        "/tile/2/000.p/1",
        "/tile/entries/001",
        "/tile/entries/001.p/45",
        "/tile/entries/002.p/1",
    ]:
        resp = await server.get(path)
        assert resp.status == 404, path
        assert (await resp.json())["error"] == "not_found"
    for path in ["/tile/0/001.p/44", "/tile/1/000.p/1", "/tile/entries/001.p/44", "/tile/0/000"]:
        assert (await server.get(path)).status == 200, path


@pytest.mark.parametrize(
    "path",
    ["/tile/00/000", "/tile/0/0", "/tile/0/000.p/0", "/tile/0/000.p/256", "/tile/0/x000/001", "/tile/64/000", "/tile/a/000"],
)
async def test_malformed_tile_paths_are_400(server, path):
    resp = await server.get(path)
    assert resp.status == 400
    assert (await resp.json())["error"] == "malformed_tile_path"


async def test_proof_endpoints(server):
    entries: list[bytes] = []
    await grow(server, entries, 1000)
    checkpoint = await fetch_checkpoint(server)
    for index in (0, 1, 255, 256, 511, 998, 999):
        resp = await server.get(f"/v1/proof/inclusion?index={index}&size=1000")
        body = await resp.json()
        assert body["index"] == index and body["size"] == 1000
        assert base64.b64decode(body["leaf_hash"]) == leaf_hash(entries[index])
        proof = [base64.b64decode(h) for h in body["hashes"]]
        verify_inclusion(index, 1000, leaf_hash(entries[index]), proof, checkpoint.root_hash)
        by_hash = await server.get(
            "/v1/proof/by-hash", params={"hash": base64.b64encode(leaf_hash(entries[index])).decode(), "size": "1000"}
        )
        assert await by_hash.json() == body
    # size defaults to the latest checkpoint
    body = await (await server.get("/v1/proof/inclusion?index=5")).json()
    assert body["size"] == 1000
    # inclusion at an older size verifies against that size's root
    resp = await server.get("/v1/proof/inclusion?index=3&size=10")
    proof = [base64.b64decode(h) for h in (await resp.json())["hashes"]]
    root10 = tree_hash(10, ListHashReader([leaf_hash(e) for e in entries[:10]]))
    verify_inclusion(3, 10, leaf_hash(entries[3]), proof, root10)


@pytest.mark.parametrize(
    "query,status,code",
    [
        ("/v1/proof/inclusion?index=abc&size=10", 400, "malformed"),
        ("/v1/proof/inclusion?index=01&size=10", 400, "malformed"),
        ("/v1/proof/inclusion?index=-1&size=10", 400, "malformed"),
        ("/v1/proof/inclusion?size=10", 400, "malformed"),
        ("/v1/proof/inclusion?index=10&size=10", 400, "invalid_range"),
        ("/v1/proof/inclusion?index=1&size=11", 404, "not_found"),
        ("/v1/proof/inclusion?index=1&size=99999999999999999999999", 400, "malformed"),
        ("/v1/proof/consistency?old=5&size=4", 400, "invalid_range"),
        ("/v1/proof/consistency?old=5&size=11", 404, "not_found"),
        ("/v1/proof/consistency?size=4", 400, "malformed"),
        ("/v1/proof/by-hash?hash=!!!&size=10", 400, "malformed"),
        ("/v1/proof/by-hash?hash=AAAA&size=10", 400, "malformed"),
        ("/v1/proof/by-hash?size=10", 400, "malformed"),
        ("/v1/proof/by-hash?hash=" + "A" * 43 + "=&size=10", 404, "not_found"),
        ("/nowhere", 404, "not_found"),
    ],
)
async def test_bad_parameters_get_json_errors(server, query, status, code):
    await grow(server, [], 10)
    resp = await server.get(query)
    assert resp.status == status
    body = await resp.json()
    assert body["error"] == code
    assert body["message"]


async def test_by_hash_does_not_find_leaves_beyond_size(server):
    entries: list[bytes] = []
    await grow(server, entries, 10)
    h = base64.b64encode(leaf_hash(entries[7])).decode()
    assert (await server.get("/v1/proof/by-hash", params={"hash": h, "size": "7"})).status == 404
    assert (await server.get("/v1/proof/by-hash", params={"hash": h, "size": "8"})).status == 200


async def test_wrong_method_is_json_405(server):
    resp = await server.post("/checkpoint", data=b"x")
    assert resp.status == 405
    assert (await resp.json())["error"] == "method_not_allowed"


async def test_health_and_metrics(server):
    await grow(server, [], 42)
    resp = await server.get("/health")
    assert resp.status == 200 and (await resp.json()) == {"status": "ok", "size": 42, "role": "sequencer", "storage": server.storage}
    text = await (await server.get("/metrics")).text()
    assert "pacspace_tree_size 42" in text
    assert "pacspace_appends_total 42" in text
    assert "pacspace_pool_depth 0" in text
    assert 'pacspace_batch_entries_bucket{le="64"} 1' in text
    assert "pacspace_sequencing_seconds_count 1" in text


async def test_a_dead_sequencer_takes_the_server_down(aiohttp_client, tmp_path):
    new_log(tmp_path)
    fatal: list[BaseException] = []
    app = create_app(ServerConfig(data_dir=tmp_path, sequencer=SequencerConfig(pool_interval=0.01)), fatal.append)
    client = await aiohttp_client(app)
    sequencer = app[SERVICE].sequencer
    await sequencer.submit(entry(0))
    # Another writer commits behind the sequencer's back: its next commit must fail.
    import sqlite3

    conn = sqlite3.connect(tmp_path / "log.db")
    conn.execute("INSERT INTO checkpoints VALUES (99, x'00')")
    conn.commit()
    conn.close()
    with pytest.raises(Exception):
        await sequencer.submit(entry(1))
    for _ in range(100):
        if fatal:
            break
        await asyncio.sleep(0.01)
    assert fatal and fatal[0].__class__.__name__ == "CheckpointConflict"
    resp = await client.get("/health")
    assert resp.status == 503
    assert (await resp.json())["status"] == "failing"
