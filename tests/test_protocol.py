"""HTTP connections as an adversary sees them: slow heads, too many connections, malformed framing, a log flood."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import subprocess
import sys

import pytest
from helpers import closed_by_peer, free_port, new_log, read_answer, wait_for_health

from pacspace.config import ServerConfig
from pacspace.server.app import create_app
from pacspace.server.protocol import FD_HEADROOM, MAX_CONNECTIONS, MAX_OPEN_FILES, connection_cap


async def serve(aiohttp_client, tmp_path, **limits):  # type: ignore[no-untyped-def]
    new_log(tmp_path)
    client = await aiohttp_client(create_app(ServerConfig(data_dir=tmp_path, **limits)))
    return client.server.port


async def test_a_connection_that_never_finishes_its_request_head_is_closed(aiohttp_client, tmp_path):
    port = await serve(aiohttp_client, tmp_path, header_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    assert await closed_by_peer(reader, timeout=10)
    writer.close()
    # A connection that does finish its head is answered as usual.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await read_answer(reader)
    assert status == 200 and json.loads(body)["status"] == "ok"
    writer.close()


async def test_past_the_connection_cap_the_longest_idle_connections_go_and_a_new_client_is_served(aiohttp_client, tmp_path):
    port = await serve(aiohttp_client, tmp_path, max_connections=8)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = await read_answer(reader)
    assert status == 200
    closed = await asyncio.gather(*(closed_by_peer(r, timeout=2) for r, _ in idle))
    # The server held at most 8 at a time: the 12 oldest idle connections were closed to make room.
    assert closed[:12] == [True] * 12 and closed.count(True) >= 12
    for _, w in [*idle, (reader, writer)]:
        w.close()


def test_the_default_connection_cap_leaves_room_for_the_servers_own_files():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert ServerConfig().max_connections is None
    assert connection_cap(None) == connection_cap(soft) == min(max(soft - FD_HEADROOM, 16), MAX_CONNECTIONS)
    assert connection_cap(524_288) == MAX_CONNECTIONS == 16384  # systemd's common hard limit: memory bounds it
    assert connection_cap(1024) == 1024 - FD_HEADROOM
    assert connection_cap(50) == 16  # a tiny limit still serves a few


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
        b"POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",
    ],
    ids=["nul-in-header", "length-and-chunked", "negative-length", "tls-hello"],
)
async def test_malformed_framing_gets_a_json_400_and_no_traceback_in_the_log(aiohttp_client, tmp_path, caplog, request_bytes):
    port = await serve(aiohttp_client, tmp_path)
    with caplog.at_level(logging.DEBUG):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes)
        status, headers, body = await read_answer(reader)
        writer.close()
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    answer = json.loads(body)
    assert answer["error"] == "bad_request" and answer["message"]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


async def test_a_flood_of_bad_requests_writes_at_most_the_log_budget(aiohttp_client, tmp_path, caplog):
    port = await serve(aiohttp_client, tmp_path, log_rate=256)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.DEBUG):
        for _ in range(60):
            conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
            for _, w in conns:
                w.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n")
            for r, w in conns:
                await read_answer(r)
                w.close()
        elapsed = loop.time() - started
        logged = sum(len(r.getMessage()) + len(r.exc_text or "") + 100 for r in caplog.records)
    # 600 framing errors; aiohttp alone logged a 560-byte traceback for each.
    assert logged <= 256 * (16 + elapsed) + 1024, (logged, elapsed, len(caplog.records))


async def test_a_malformed_header_holding_a_token_never_reaches_the_log(aiohttp_client, tmp_path, caplog):
    port = await serve(aiohttp_client, tmp_path)
    with caplog.at_level(logging.DEBUG):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-secret-123\x00\r\n\r\n")
        status, _, body = await read_answer(reader)
        writer.close()
    assert status == 400 and "tok-secret-123" not in body.decode()
    assert "malformed HTTP request" in caplog.text and "tok-secret-123" not in caplog.text


def _soft_nofile(pid: int) -> tuple[int, int]:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc")


def test_serve_raises_its_open_file_limit_so_a_thousand_slow_connections_stay_below_the_cap(tmp_path):
    """Issue 17's flood: 1,100 slow connections against a server started at the common soft limit of 1,024.

    Served at that limit, the cap (about 900) churns: every newcomer evicts a slow connection, which reconnects
    at once, and the churn overflows the kernel's listen queue, so honest connections wait for their SYN retry.
    `pacspace serve` raises its soft limit to the hard one first, and holds them all.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = min(hard, MAX_OPEN_FILES) if hard != resource.RLIM_INFINITY else MAX_OPEN_FILES
    port = free_port()

    def at_1024() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))

    proc = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--port", str(port), "--workers", "0"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=at_1024)
    try:
        wait_for_health(f"http://127.0.0.1:{port}")
        assert _soft_nofile(proc.pid) == (expected, hard)
        if expected < 1400:
            pytest.skip(f"the hard open-file limit here ({hard}) is below what 1,100 connections need")
        resource.setrlimit(resource.RLIMIT_NOFILE, (expected, hard))  # this test's own 1,100 sockets

        async def flood() -> None:
            slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(1100)]
            for _, w in slow:
                w.write(b"POST /v1/records HTTP/1.1\r\nHost: x\r\nX-Slow: a")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = await read_answer(reader)
            assert status == 200
            closed = await asyncio.gather(*(closed_by_peer(r, timeout=1) for r, _ in slow))
            assert closed.count(True) == 0  # none evicted: the cap is far above them
            for _, w in [*slow, (reader, writer)]:
                w.close()

        asyncio.run(flood())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
