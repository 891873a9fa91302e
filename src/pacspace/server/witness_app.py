"""The witness server: C2SP tlog-witness ``POST /add-checkpoint``, and the latest cosigned checkpoint per log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..errors import NotFound, PacspaceError
from ..note import Ed25519Verifier, NoteSigner, parse_note
from ..storage.witness import WitnessStore
from ..witness import MAX_REQUEST, Latest, WitnessRefusal, cosignature, decide, parse_add_checkpoint


@dataclass
class Witness:
    signer: NoteSigner
    logs: dict[str, Ed25519Verifier]
    store: WitnessStore


WITNESS = web.AppKey("witness", Witness)


def create_witness_app(data_dir: Path, signer: NoteSigner, logs: dict[str, Ed25519Verifier]) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = WitnessStore(data_dir)
        app[WITNESS] = Witness(signer, logs, store)
        yield
        store.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/add-checkpoint", add_checkpoint)
    app.router.add_get("/checkpoint", get_checkpoint)
    return app


async def add_checkpoint(request: web.Request) -> web.Response:
    witness = request.app[WITNESS]
    try:
        req = parse_add_checkpoint(await request.read())
    except PacspaceError as exc:
        return web.Response(status=400, text=f"{exc}\n")
    note = req.note.format()

    def check(current: Latest | None) -> Latest:
        decide(req, witness.logs, current)
        return Latest(req.checkpoint.size, req.checkpoint.root_hash, note)

    try:
        # The compare-and-set and its fsync run off the event loop; the reply comes only after.
        await asyncio.to_thread(witness.store.advance, req.checkpoint.origin, check)
    except WitnessRefusal as exc:
        if exc.http_status == 409 and exc.size is not None:
            return web.Response(status=409, body=f"{exc.size}\n".encode(), headers={"Content-Type": "text/x.tlog.size"})
        return web.Response(status=exc.http_status, text=f"{exc}\n")
    line = cosignature(witness.signer, req, int(time.time())).line()
    return web.Response(body=line.encode("utf-8"), content_type="text/plain", charset="utf-8")


async def get_checkpoint(request: web.Request) -> web.Response:
    """The latest checkpoint this witness cosigned for ``?origin=``, with a fresh cosignature, for monitors."""
    witness = request.app[WITNESS]
    origin = request.query.get("origin", "")
    latest = witness.store.latest(origin) if origin else None
    if latest is None:
        raise web.HTTPNotFound(text=f"{NotFound('no checkpoint cosigned for that origin')}\n")
    note = parse_note(latest.note)
    line = witness.signer.cosign(note.text, int(time.time()))
    return web.Response(body=latest.note + line.line().encode(), content_type="text/plain", charset="utf-8")
