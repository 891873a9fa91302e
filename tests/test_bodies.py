"""Request bodies: refused before they are read when the route or the caller's role cannot take them, read
within a deadline, and the batch route's parsed as it arrives, so that no one request holds a large body."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time

import pytest
from helpers import new_log, read_answer

from pacspace.config import ServerConfig
from pacspace.server.app import create_app
from pacspace.storage.records import RecordStore

MiB = 1 << 20


@pytest.fixture
async def port(aiohttp_client, tmp_path):
    new_log(tmp_path)
    store = RecordStore(tmp_path)
    store.add_party("acme", "provider", "tok-acme", int(time.time()))
    store.add_party("bob", "customer", "tok-bob", int(time.time()))
    store.close()
    client = await aiohttp_client(create_app(ServerConfig(data_dir=tmp_path, body_timeout=1.0)))
    return client.server.port


async def send(port: int, head: str, body: bytes = b""):  # type: ignore[no-untyped-def]
    """Send a request head and the start of its body, never the rest; the answer must come without it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    await writer.drain()
    try:
        status, headers, answer = await read_answer(reader, timeout=20)
    finally:
        writer.close()
    assert headers["content-type"].startswith("application/json")
    return status, json.loads(answer)


def head(path: str, token: str | None, length: int | None = None, chunked: bool = False, method: str = "POST") -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Content-Type: application/json"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return "\n".join(lines) + "\n"


async def test_a_customer_cannot_make_the_server_read_a_batch(port):
    status, body = await send(port, head("/v1/records", "tok-bob", 64 * MiB), b'{"records": [' + b"{}," * 1000)
    assert (status, body["error"]) == (403, "forbidden")


@pytest.mark.parametrize("token", [None, "tok-bob", "tok-acme"])
async def test_a_declared_body_over_the_routes_limit_is_refused_before_it_is_read(port, token):
    status, body = await send(port, head("/v1/records", token, 65 * MiB), b"{")
    assert (status, body["error"]) == (413, "too_large")
    status, body = await send(port, head("/v1/me/keys", token, 5000, method="PUT"), b"{")
    assert (status, body["error"]) == (413, "too_large")


async def test_a_chunked_body_is_cut_off_at_the_routes_limit(port):
    chunk = b"%x\r\n%s\r\n" % (100_000, b" " * 100_000)
    status, body = await send(port, head("/v1/relationships", "tok-acme", chunked=True), chunk * 3)
    assert (status, body["error"]) == (413, "too_large")


async def test_a_body_that_stops_arriving_gets_408(port):
    status, body = await send(port, head("/v1/me/keys", "tok-acme", 1000, method="PUT"), b'{"x25519": ')
    assert (status, body["error"]) == (408, "body_timeout")


async def test_a_batch_is_refused_at_its_first_item_past_the_limit_without_the_rest(port):
    status, body = await send(port, head("/v1/records", "tok-acme", 64 * MiB), b'{"records": [' + b"{}," * 10_001)
    assert (status, body["error"]) == (400, "malformed")
    assert "10000" in body["message"]


async def test_a_batch_item_over_the_record_limit_is_refused_without_the_rest(port):
    item = b'{"relationship": "acme:r", "seq": 1, "tag": "", "ciphertext": "' + b"A" * 300_000
    status, body = await send(port, head("/v1/records", "tok-acme", 64 * MiB), b'{"records": [' + item)
    assert (status, body["error"]) == (413, "too_large")


async def test_a_compressed_body_is_not_inflated(port):
    bomb = gzip.compress(b'{"x25519": "' + b"A" * MiB + b'"}')
    assert len(bomb) < 4096
    status, body = await send(port, head("/v1/me/keys", "tok-acme", len(bomb), method="PUT").replace(
        "Content-Type", "Content-Encoding: gzip\nContent-Type"), bomb)
    assert (status, body["error"]) == (400, "malformed")


async def test_a_batch_is_held_record_by_record_never_whole(port):
    """A 30 MB batch of bad records: the server holds the records it has checked, never the body or its parse."""
    import tracemalloc

    items = b",".join(b'{"relationship": "acme:r", "seq": 1, "pad": "' + b"A" * 3000 + b'"}' for _ in range(10_000))
    body = b'{"records": [' + items + b"]}"
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    tracemalloc.start()
    try:
        await loop.sock_sendall(sock, head("/v1/records", "tok-acme", len(body)).replace("\n", "\r\n").encode() + b"\r\n")
        await loop.sock_sendall(sock, memoryview(body))
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"]}"):
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 60)
            assert chunk, answer[:200]
            answer += chunk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        sock.close()
    result = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert result["accepted"] == 0 and result["rejected"] == 10_000
    assert peak < len(body) // 2, (peak, len(body))
