"""The public read API: C2SP tlog-tiles byte for byte, and JSON proof conveniences from the same hashes.

No credentials: everything here is derived from the public 65-byte entries and
the tree over them. Nothing is served that no published checkpoint implies.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import re
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from ..errors import InvalidRange, MalformedInput, NotFound, UntrustedState
from ..merkle import HASH_SIZE, consistency_proof, inclusion_proof
from ..storage.logtables import LogTables
from ..tiles import TileRef, bundle_prefix, implied_by, parse_tile_path
from .context import FATAL, READS, LogReads

T = TypeVar("T")

# C2SP tlog-tiles: the checkpoint is mutable ("SHOULD prevent caching beyond a few
# seconds"); tiles and bundles, partial ones included, never change once served.
CHECKPOINT_CACHE = "no-cache"
IMMUTABLE_CACHE = "public, max-age=31536000, immutable"
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
# CORS: what a browser may do on the public read routes. No credentials are ever involved.
CORS_METHODS = "GET, HEAD, OPTIONS"
CORS_HEADERS = "Accept, Cache-Control, If-Modified-Since, If-None-Match, Pragma, Range"
CORS_MAX_AGE = "86400"
# Entry bundles larger than this are compressed off the event loop.
_COMPRESS_INLINE = 64 * 1024
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")

_PUBLIC = web.AppKey("public_read_resources", set)


def add_routes(app: web.Application) -> None:
    public = {
        "/checkpoint": get_checkpoint,
        "/tile/{path:.+}": get_tile,
        "/v1/log": get_log,
        "/v1/proof/inclusion": get_inclusion,
        "/v1/proof/by-hash": get_by_hash,
        "/v1/proof/consistency": get_consistency,
    }
    resources = set()
    for path, handler in public.items():
        route = app.router.add_get(path, handler)
        app.router.add_route("OPTIONS", path, preflight)
        resources.add(route.resource)
    app[_PUBLIC] = resources
    app.on_response_prepare.append(_allow_any_origin)
    app.router.add_get("/health", get_health)
    app.router.add_get("/metrics", get_metrics)


async def _allow_any_origin(request: web.Request, response: web.StreamResponse) -> None:
    """Public read routes, errors included, are readable from any web page; no other route is."""
    if request.method != "OPTIONS" and request.match_info.route.resource in request.app[_PUBLIC]:
        response.headers["Access-Control-Allow-Origin"] = "*"


async def preflight(request: web.Request) -> web.Response:
    """A CORS preflight on a public read route: reads only."""
    method = request.headers.get("Access-Control-Request-Method")
    if method is not None and method.upper() not in ("GET", "HEAD"):
        return web.Response(status=403, text="only GET and HEAD are allowed from another origin\n")
    headers = {"Allow": CORS_METHODS}
    if method is not None:
        headers.update({
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Methods": CORS_METHODS,
            "Access-Control-Allow-Headers": CORS_HEADERS,
            "Access-Control-Max-Age": CORS_MAX_AGE,
        })
    return web.Response(status=204, headers=headers)


def _service(request: web.Request) -> LogReads:
    return request.app[READS]


async def get_checkpoint(request: web.Request) -> web.Response:
    latest = _service(request).latest
    return web.Response(
        body=latest.format(),
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": CHECKPOINT_CACHE},
    )


async def get_tile(request: web.Request) -> web.Response:
    ref = parse_tile_path("tile/" + request.match_info["path"])
    service = _service(request)
    size = (await service.newest(ref.min_tree_size())).size
    data = await _reading(service.store, _tile_bytes, service.store, ref, size)
    headers = {"Cache-Control": IMMUTABLE_CACHE}
    if ref.level is None:
        # C2SP tlog-tiles: entry bundles SHOULD be compressed at the HTTP layer; gzip for any client that takes it.
        headers["Vary"] = "Accept-Encoding"
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            if len(data) > _COMPRESS_INLINE:
                data = await asyncio.to_thread(_gzip, data)
            else:
                data = _gzip(data)
            headers["Content-Encoding"] = "gzip"
    return web.Response(body=data, content_type="application/octet-stream", headers=headers)


async def _reading(store: LogTables, read: Callable[..., T], *args: Any) -> T:
    """A storage read: in a thread where it may wait on a network (a database server, an object store), so a
    slow one stalls only the requests that need it; inline on local files, where a thread costs more."""
    if store.network_reads:
        return await asyncio.to_thread(read, *args)
    return read(*args)


def _tile_bytes(store: LogTables, ref: TileRef, size: int) -> bytes:
    if not _published(store, ref, size):
        raise NotFound(f"{ref.path()} is not implied by any published checkpoint")
    if ref.level is None:
        return _bundle_bytes(store, ref)
    stored = store.read_tile(ref.level, ref.n)
    if stored is None or len(stored) < ref.width * HASH_SIZE:
        raise UntrustedState(f"published tile {ref.path()} is missing from storage")
    return stored[: ref.width * HASH_SIZE]


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header (RFC 9110 §12.5.3) takes gzip: listed with q > 0, or ``*`` is and gzip is not."""
    weights: dict[str, bool] = {}
    for item in header.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if not coding:
            continue
        accepted = True
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                accepted = bool(_QVALUE.fullmatch(value)) and float(value) > 0
        weights[coding.lower()] = accepted
    for coding in ("gzip", "x-gzip"):
        if coding in weights:
            return weights[coding]
    return weights.get("*", False)


def _published(store: LogTables, ref: TileRef, size: int) -> bool:
    """Full tiles: within the latest checkpoint. Partial tiles: exactly some committed checkpoint's edge."""
    if not ref.is_partial:
        return implied_by(ref, size)
    lo, hi = ref.sizes_that_imply()
    return lo <= size and store.checkpoint_in(lo, min(hi, size + 1))


def _bundle_bytes(store: LogTables, ref: TileRef) -> bytes:
    stored = store.read_bundle(ref.n)
    try:
        if stored is None:
            raise InvalidRange("absent")
        return bundle_prefix(stored, ref.width)
    except InvalidRange:
        raise UntrustedState(f"published entry bundle {ref.path()} is missing from storage") from None


async def get_log(request: web.Request) -> web.Response:
    service = _service(request)
    latest = service.latest
    return web.json_response(
        {
            "origin": latest.checkpoint.origin,
            "vkey": service.vkey,
            "size": latest.size,
            "timestamp_vkey": service.timestamp_vkey,
        }
    )


def _int_param(request: web.Request, name: str, default: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise MalformedInput(f"missing query parameter {name!r}")
        return default
    if not _DECIMAL.fullmatch(raw):
        raise MalformedInput(f"query parameter {name!r} must be a non-negative decimal integer without leading zeros")
    return int(raw)


async def _size_param(request: web.Request) -> int:
    """The tree size to prove against: at most the latest published checkpoint (404 beyond it)."""
    service = _service(request)
    latest = service.latest.size
    size = _int_param(request, "size", default=latest)
    if size > latest:
        latest = (await service.newest(size)).size
    if size > latest:
        raise NotFound(f"size {size} is beyond the latest checkpoint ({latest})")
    return size


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _inclusion_body(store: LogTables, index: int, size: int) -> dict[str, object]:
    hashes = inclusion_proof(index, size, store)
    leaf = store.read_hashes([(0, index)])[0]
    return {"index": index, "size": size, "leaf_hash": _b64(leaf), "hashes": [_b64(h) for h in hashes]}


async def get_inclusion(request: web.Request) -> web.Response:
    size = await _size_param(request)
    index = _int_param(request, "index")
    if index >= size:
        raise InvalidRange(f"index {index} is not in a tree of size {size}")
    store = _service(request).store
    return web.json_response(await _reading(store, _inclusion_body, store, index, size))


def _hash_param(request: web.Request) -> bytes:
    raw = request.query.get("hash")
    if raw is None:
        raise MalformedInput("missing query parameter 'hash'")
    # A '+' sent unencoded in a query string arrives as a space; base64url is accepted too.
    text = raw.replace(" ", "+").replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedInput("query parameter 'hash' is not base64") from None
    if len(value) != HASH_SIZE:
        raise MalformedInput("query parameter 'hash' must be a 32-byte leaf hash")
    return value


async def get_by_hash(request: web.Request) -> web.Response:
    leaf = _hash_param(request)
    size = await _size_param(request)
    service = _service(request)
    store = service.store
    (index,) = await service.find_leaves([leaf], size)
    if index is None:
        raise NotFound(f"no leaf with this hash in the tree of size {size}")
    return web.json_response(await _reading(store, _inclusion_body, store, index, size))


async def get_consistency(request: web.Request) -> web.Response:
    size = await _size_param(request)
    old = _int_param(request, "old")
    if old > size:
        raise InvalidRange(f"old size {old} is larger than size {size}")
    store = _service(request).store
    hashes = await _reading(store, consistency_proof, old, size, store)
    return web.json_response({"old": old, "size": size, "hashes": [_b64(h) for h in hashes]})


async def get_health(request: web.Request) -> web.Response:
    service = _service(request)
    # "role": the sequencer's processes, or a read-only frontend (frontend.py); "storage": where the log's tables are.
    body: dict[str, object] = {"size": service.latest.size, "role": service.role, "storage": service.store.engine}
    problem = service.problem()
    if request.app[FATAL] or problem:
        return web.json_response({"status": "failing", **body, **({"problem": problem} if problem else {})},
                                 status=503)
    return web.json_response({"status": "ok", **body})


async def get_metrics(request: web.Request) -> web.Response:
    body = await _service(request).metrics_text()
    return web.Response(text=body, content_type="text/plain", charset="utf-8", headers={"X-Content-Version": "0.0.4"})
