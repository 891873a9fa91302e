"""/openapi.json describes every route the server has, and nothing it does not."""

from __future__ import annotations

import re

from pacspace.config import ServerConfig
from pacspace.server.app import create_app


async def test_openapi_covers_every_route(aiohttp_client, tmp_path):
    from helpers import new_log

    new_log(tmp_path)
    app = create_app(ServerConfig(data_dir=tmp_path))
    client = await aiohttp_client(app)
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    served = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):  # OPTIONS: the CORS preflight of the public read routes
            continue
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", route.resource.canonical)
        served.add((path, route.method))
    assert served == documented
