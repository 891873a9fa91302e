"""A browser can follow the log: CORS on the public read routes only, and gzip-compressed entry bundles."""

from __future__ import annotations

import gzip

import pytest
from helpers import add_two_parties, entry, new_log

from pacspace.config import ServerConfig
from pacspace.sequencer import SequencerConfig
from pacspace.server.app import create_app
from pacspace.server.context import SERVICE

ORIGIN_HEADER = {"Origin": "https://monitor.example"}
PUBLIC = ["/checkpoint", "/tile/0/000.p/3", "/tile/entries/000.p/3", "/v1/log",
          "/v1/proof/inclusion?index=1&size=3", "/v1/proof/consistency?old=1&size=3"]
PRIVATE = ["/v1/me", "/v1/parties/bob/keys", "/v1/relationships", "/v1/relationships/x/records", "/metrics", "/health",
           "/openapi.json"]


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    new_log(tmp_path)
    add_two_parties(tmp_path)
    app = create_app(ServerConfig(data_dir=tmp_path, sequencer=SequencerConfig(pool_interval=0.01)))
    client = await aiohttp_client(app)
    await app[SERVICE].sequencer.submit_many([entry(i) for i in range(3)])
    return client


async def test_public_read_routes_allow_any_origin(client):
    for path in PUBLIC:
        resp = await client.get(path, headers=ORIGIN_HEADER)
        assert resp.status == 200, path
        assert resp.headers.get("Access-Control-Allow-Origin") == "*", path
        assert "Access-Control-Allow-Credentials" not in resp.headers
    # Errors on a public route are readable too: a browser learns the tile is not there yet.
    missing = await client.get("/tile/entries/000.p/4", headers=ORIGIN_HEADER)
    assert missing.status == 404 and missing.headers.get("Access-Control-Allow-Origin") == "*"


async def test_private_and_operator_routes_never_carry_cors(client):
    for path in PRIVATE:
        for headers in (ORIGIN_HEADER, {**ORIGIN_HEADER, "Authorization": "Bearer tok-bob"}):
            resp = await client.get(path, headers=headers)
            assert "Access-Control-Allow-Origin" not in resp.headers, (path, resp.status)
    posted = await client.post("/v1/records", json={"records": []}, headers={**ORIGIN_HEADER, "Authorization": "Bearer tok-acme"})
    assert "Access-Control-Allow-Origin" not in posted.headers


async def test_preflight_on_public_routes_only(client):
    ask = {**ORIGIN_HEADER, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "cache-control"}
    for path in ["/checkpoint", "/tile/0/000.p/3", "/tile/entries/000", "/v1/log", "/v1/proof/by-hash"]:
        resp = await client.options(path, headers=ask)
        assert resp.status == 204, path
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert set(resp.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")) == {"GET", "HEAD", "OPTIONS"}
        assert "cache-control" in resp.headers["Access-Control-Allow-Headers"].lower()
        assert int(resp.headers["Access-Control-Max-Age"]) > 0
        assert await resp.read() == b""
    # A preflight for a write is refused; private routes answer no preflight at all.
    post = await client.options("/checkpoint", headers={**ask, "Access-Control-Request-Method": "POST"})
    assert post.status == 403 and "Access-Control-Allow-Origin" not in post.headers
    for path in ["/v1/me", "/v1/records", "/metrics"]:
        resp = await client.options(path, headers=ask)
        assert resp.status in (401, 405) and "Access-Control-Allow-Origin" not in resp.headers, path


@pytest.mark.parametrize("accept", ["gzip", "gzip, deflate, br, zstd", "deflate, gzip;q=0.5", "GZIP"])
async def test_entry_bundles_are_gzip_with_vary_when_the_client_takes_gzip(client, accept):
    plain = await client.get("/tile/entries/000.p/3", headers={"Accept-Encoding": "identity"}, auto_decompress=False)
    assert plain.headers.get("Content-Encoding") is None and plain.headers["Vary"] == "Accept-Encoding"
    identity = await plain.read()
    assert len(identity) == 3 * 67
    resp = await client.get("/tile/entries/000.p/3", headers={"Accept-Encoding": accept}, auto_decompress=False)
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip" and resp.headers["Vary"] == "Accept-Encoding"
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    body = await resp.read()
    assert int(resp.headers["Content-Length"]) == len(body) and gzip.decompress(body) == identity


@pytest.mark.parametrize("accept", [None, "identity", "deflate", "br", "gzip;q=0", "x-gzip-nope"])
async def test_entry_bundles_are_plain_when_the_client_does_not_take_gzip(client, accept):
    headers = {} if accept is None else {"Accept-Encoding": accept}
    resp = await client.get("/tile/entries/000.p/3", headers=headers, auto_decompress=False, skip_auto_headers=["Accept-Encoding"])
    assert resp.status == 200 and resp.headers.get("Content-Encoding") is None, accept
    assert resp.headers["Vary"] == "Accept-Encoding" and len(await resp.read()) == 3 * 67


async def test_hash_tiles_are_not_compressed(client):
    resp = await client.get("/tile/0/000.p/3", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert resp.headers.get("Content-Encoding") is None and len(await resp.read()) == 3 * 32
