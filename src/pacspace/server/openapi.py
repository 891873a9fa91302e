"""The OpenAPI 3.1 description served at GET /openapi.json. tests/test_openapi.py checks it covers every route."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import __version__

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_B64 = {"type": "string", "contentEncoding": "base64"}


def _op(summary: str, *, auth: bool = False, body: dict[str, Any] | None = None, params: list[str] | None = None,
        ok: str = "200", content: str = "application/json") -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {ok: {"description": "success", "content": {content: {}}}, "4XX": _ERROR},
    }
    if auth:
        op["security"] = [{"bearer": []}]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = [
            {"name": p, "in": "path" if p in ("rid", "name", "path") else "query",
             "required": p in ("rid", "name", "path", "index", "old", "hash"), "schema": {"type": "string"}}
            for p in params
        ]
    return op


_RECORD = {"type": "object", "required": ["seq", "tag", "ciphertext"],
           "properties": {"seq": {"type": "integer", "minimum": 0}, "tag": _B64, "ciphertext": _B64}}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "pacspace", "version": __version__,
             "description": "A verifiable recordation log for usage-based billing. See docs/api.md."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Error": {"type": "object", "required": ["error", "message"],
                              "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "paths": {
        "/checkpoint": {"get": _op("The latest signed checkpoint (C2SP tlog-checkpoint)", content="text/plain")},
        "/tile/{path}": {"get": _op("A tile or entry bundle (C2SP tlog-tiles)", params=["path"], content="application/octet-stream")},
        "/v1/log": {"get": _op("Origin, verifier keys and size")},
        "/v1/proof/inclusion": {"get": _op("RFC 9162 inclusion proof", params=["index", "size"])},
        "/v1/proof/by-hash": {"get": _op("Inclusion proof found by leaf hash", params=["hash", "size"])},
        "/v1/proof/consistency": {"get": _op("RFC 9162 consistency proof", params=["old", "size"])},
        "/health": {"get": _op("Liveness")},
        "/metrics": {"get": _op("Prometheus metrics", content="text/plain")},
        "/openapi.json": {"get": _op("This document")},
        "/v1/me": {"get": _op("The calling party", auth=True)},
        "/v1/me/keys": {"put": _op("Register the caller's public keys", auth=True,
                                   body={"type": "object", "properties": {"x25519": _B64, "ed25519": _B64}})},
        "/v1/parties/{name}/keys": {"get": _op("A customer's registered keys (providers)", auth=True, params=["name"])},
        "/v1/relationships": {
            "get": _op("The caller's relationships (a customer's accepted ones by default)", auth=True, params=["state"]),
            "post": _op("Create a relationship with its wraps and genesis record", auth=True, ok="201",
                        body={"type": "object", "required": ["relationship", "customer", "wraps", "genesis"]}),
        },
        "/v1/relationships/{rid}": {"get": _op("One of the caller's relationships", auth=True, params=["rid"])},
        "/v1/relationships/{rid}/acceptance": {
            "post": _op("The customer accepts the relationship: its signature over the genesis entry", auth=True,
                        params=["rid"], body={"type": "object", "required": ["signature"], "properties": {"signature": _B64}}),
        },
        "/v1/relationships/{rid}/decline": {"post": _op("The customer declines the relationship", auth=True, params=["rid"])},
        "/v1/relationships/{rid}/records": {
            "get": _op("Settled records after a seq", auth=True, params=["rid", "after_seq", "limit"]),
            "post": _op("Append one sealed record", auth=True, params=["rid"], body=_RECORD, ok="201"),
        },
        "/v1/records": {"post": _op("Append many records across relationships", auth=True,
                                    body={"type": "object", "required": ["records"],
                                          "properties": {"records": {"type": "array", "items": _RECORD}}})},
    },
}


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(SPEC)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", get_openapi)
