"""The witness server: C2SP tlog-witness ``POST /add-checkpoint``, and the monitoring endpoint
``GET /<hex SHA-256 of the origin>/checkpoint`` (C2SP/C2SP@95978ca), both under the root prefix."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..errors import NotFound, PacspaceError
from ..note import Ed25519Verifier, NoteSignature, NoteSigner, parse_note
from ..storage.witness import WitnessState, WitnessStore
from ..witness import (
    MAX_REQUEST,
    Latest,
    WitnessRefusal,
    carries_cosignature,
    cosignature,
    decide,
    monitoring_note,
    parse_add_checkpoint,
)

log = logging.getLogger("pacspace.witness")


@dataclass
class Witness:
    signer: NoteSigner
    logs: dict[str, Ed25519Verifier]
    store: WitnessState
    clock: Callable[[], float]
    by_hash: dict[str, str]  # hex SHA-256 of an origin -> the origin


WITNESS = web.AppKey("witness", Witness)


def origin_hash(origin: str) -> str:
    """C2SP tlog-witness: the SHA-256 hash of the log's origin, hex encoded, in lowercase."""
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()


def create_witness_app(
    data_dir: Path, signer: NoteSigner, logs: dict[str, Ed25519Verifier], clock: Callable[[], float] = time.time,
    database: str | None = None,
) -> web.Application:
    """``database``: a PostgreSQL URL to keep the witness's state in, instead of ``data_dir``/witness.db."""
    app = web.Application(client_max_size=MAX_REQUEST)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store: WitnessState
        if database is None:
            store = WitnessStore(data_dir)
        else:
            from ..storage.pg_witness import PostgresWitnessStore

            store = PostgresWitnessStore(database)
        witness = Witness(signer, logs, store, clock, {origin_hash(o): o for o in logs})
        _cosign_what_older_versions_stored(witness)
        app[WITNESS] = witness
        yield
        store.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/add-checkpoint", add_checkpoint)
    app.router.add_get("/{origin_hash:[0-9a-f]{64}}/checkpoint", get_monitoring_checkpoint)
    app.router.add_get("/checkpoint", get_checkpoint_by_query)
    return app


def _cosign_what_older_versions_stored(witness: Witness) -> None:
    """Stores written before the monitoring endpoint hold the submitted note, without the cosignature the witness
    returned: cosign each once, now, so that from here on every GET serves the same stored cosignature."""

    def update(origin: str, latest: Latest) -> bytes | None:
        key = witness.logs.get(origin)
        if key is None or carries_cosignature(latest.note, witness.signer):
            return None
        note = parse_note(latest.note)
        return monitoring_note(note, key, witness.signer.cosign(note.text, int(witness.clock())))

    changed = witness.store.rewrite(update)
    if changed:
        log.info("cosigned the latest checkpoint of %d log(s) stored without the witness's cosignature", changed)


async def add_checkpoint(request: web.Request) -> web.Response:
    witness = request.app[WITNESS]
    try:
        req = parse_add_checkpoint(await request.read())
    except PacspaceError as exc:
        return web.Response(status=400, text=f"{exc}\n")
    given: list[NoteSignature] = []

    def check(current: Latest | None) -> Latest:
        decide(req, witness.logs, current)
        line = cosignature(witness.signer, req, int(witness.clock()))
        given.append(line)
        # Stored with the checkpoint it answers: the monitoring endpoint serves this very line.
        note = monitoring_note(req.note, witness.logs[req.checkpoint.origin], line)
        return Latest(req.checkpoint.size, req.checkpoint.root_hash, note)

    try:
        # The compare-and-set and its fsync run off the event loop; the reply comes only after.
        await asyncio.to_thread(witness.store.advance, req.checkpoint.origin, check)
    except WitnessRefusal as exc:
        if exc.http_status == 409 and exc.size is not None:
            return web.Response(status=409, body=f"{exc.size}\n".encode(), headers={"Content-Type": "text/x.tlog.size"})
        return web.Response(status=exc.http_status, text=f"{exc}\n")
    except PacspaceError as exc:  # its database did not answer (503)
        return web.Response(status=exc.http_status, text=f"{exc}\n")
    return web.Response(body=given[-1].line().encode("utf-8"), content_type="text/plain", charset="utf-8")


async def _latest_response(witness: Witness, origin: str | None) -> web.Response:
    try:
        latest = await asyncio.to_thread(witness.store.latest, origin) if origin in witness.logs else None
    except PacspaceError as exc:
        return web.Response(status=exc.http_status, text=f"{exc}\n")
    if latest is None:
        raise web.HTTPNotFound(text=f"{NotFound('no checkpoint cosigned for that log')}\n")
    return web.Response(body=latest.note, content_type="text/plain", charset="utf-8")


async def get_monitoring_checkpoint(request: web.Request) -> web.Response:
    """The latest checkpoint cosigned for a log, with the cosignature add-checkpoint returned for it."""
    witness = request.app[WITNESS]
    return await _latest_response(witness, witness.by_hash.get(request.match_info["origin_hash"]))


async def get_checkpoint_by_query(request: web.Request) -> web.Response:
    """``GET /checkpoint?origin=``, the form earlier pacspace witnesses served: the same bytes."""
    return await _latest_response(request.app[WITNESS], request.query.get("origin", ""))
