#!/usr/bin/env python3
"""A proxy that adds a fixed latency to every request, for benchmarks of clients over a slow network.

    python3 tools/latency_proxy.py --upstream http://127.0.0.1:8080 --port 8099 --latency-ms 50

Each request waits ``--latency-ms`` before it is forwarded (one network round trip's worth); requests
overlap, as they would over a real link with keep-alive connections.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    delay = args.latency_ms / 1000

    async def forward(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        await asyncio.sleep(delay)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with session.request(request.method, args.upstream + request.path_qs, headers=headers,
                                   data=await request.read()) as upstream:
            body = await upstream.read()
            return web.Response(body=body, status=upstream.status,
                                headers={"Content-Type": upstream.headers.get("Content-Type", "application/octet-stream")})

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    app = web.Application(client_max_size=1 << 30)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
