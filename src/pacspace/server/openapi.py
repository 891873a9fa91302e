"""The OpenAPI 3.1 description served at GET /openapi.json.

tests/test_openapi.py checks it covers every route; tests/test_fuzz.py fuzzes the server from it
(schemathesis) and checks every answer against it. So it says exactly what the server takes (types,
formats, bounds) and what it answers, status by status.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import __version__
from ..records import batchwire
from ..records.acceptance import SIGNATURE_SIZE
from ..records.seal import BLOB_OVERHEAD, MAX_BUCKET
from .records_api import MAX_BATCH, MAX_PAGE

Schema = dict[str, Any]
JSON = "application/json"


_SYMBOL = "[A-Za-z0-9+/]"
_TAILS = {0: "", 1: f"{_SYMBOL}{{2}}==", 2: f"{_SYMBOL}{{3}}="}


def _b64(size: int | None = None, *, least: int = 0, most: int | None = None) -> Schema:
    """Standard base64 of ``size`` bytes, or of ``least`` to ``most`` bytes, spelled as a pattern (which a
    fuzzer draws from directly) rather than as contentEncoding and lengths (which it can only filter for)."""

    def chars(n: int) -> int:
        return (n + 2) // 3 * 4

    if size is not None:
        pattern = f"^({_SYMBOL}{{4}}){{{size // 3}}}{_TAILS[size % 3]}$"
        return {"type": "string", "pattern": pattern, "minLength": chars(size), "maxLength": chars(size),
                "description": f"standard base64 of {size} bytes"}
    groups = f"{{{least // 3},{'' if most is None else most // 3}}}"
    schema: Schema = {"type": "string", "pattern": f"^({_SYMBOL}{{4}}){groups}({_TAILS[1]}|{_TAILS[2]})?$",
                      "minLength": chars(least), "description": "standard base64"}
    if most is not None:
        schema["maxLength"] = chars(most)
    return schema


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Schema], *, optional: tuple[str, ...] = (), closed: bool = False) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, "required": [p for p in properties if p not in optional]}
    if closed:
        schema["additionalProperties"] = False
    return schema


HASH = _b64(32)
INDEX = {"type": "integer", "minimum": 0}
TEXT = {"type": "string"}
RID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"}
NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"}
# A new relationship's id: the creating provider's name, a colon, then its own part (403 under another name).
OWN_RID = {"type": "string", "maxLength": 128, "pattern": "^[a-z0-9][a-z0-9._-]{0,63}:[A-Za-z0-9._:-]*$"}
ROLE = {"type": "string", "enum": ["provider", "customer"]}
STATE = {"type": "string", "enum": ["pending", "accepted", "declined"]}
CADENCE = {"type": "string", "pattern": "^(daily|hourly|[1-9][0-9]{0,3}m)$"}
SEQ = {"type": "integer", "minimum": 0, "maximum": (1 << 62) - 1}
KEYS = _object({"x25519": _b64(32), "ed25519": _b64(32), "fingerprint": TEXT})
RECORD = _object({"seq": SEQ, "tag": HASH, "ciphertext": _b64(least=BLOB_OVERHEAD, most=MAX_BUCKET + BLOB_OVERHEAD)})
BATCH_ITEM = _object({"relationship": RID, **RECORD["properties"]})
ERROR_FIELDS: dict[str, Schema] = {"error": TEXT, "message": TEXT, "expected_seq": INDEX}
ERROR: Schema = {"type": "object", "required": ["error", "message"], "properties": ERROR_FIELDS}
RECEIPT = _object({"index": INDEX, "seq": SEQ, "leaf_hash": HASH, "checkpoint": TEXT, "proof": TEXT})
RELATIONSHIP = _object({"relationship": RID, "provider": NAME, "customer": NAME, "cadence": CADENCE,
                        "billing_cycle": {"type": "string", "enum": ["monthly"]}, "created_at": INDEX})
LISTED = _object({**RELATIONSHIP["properties"], "state": STATE})
DETAILED = _object({
    **LISTED["properties"], "acceptance": _nullable(_b64(SIGNATURE_SIZE)), "decided_at": _nullable(INDEX),
    "wrap": _nullable(_b64()), "provider_keys": _nullable(KEYS), "customer_keys": _nullable(KEYS),
})
BATCH_RESULT = {"anyOf": [
    _object({"relationship": RID, "seq": SEQ, "status": {"const": "ok"}, "index": INDEX, "leaf_hash": HASH}),
    {"type": "object", "required": ["relationship", "seq", "status", "error", "message"],
     "properties": {**ERROR_FIELDS, "relationship": _nullable(RID), "seq": _nullable(SEQ), "status": {"const": "error"}}},
]}
INCLUSION = _object({"index": INDEX, "size": INDEX, "leaf_hash": HASH, "hashes": {"type": "array", "items": HASH}})


def _answer(schema: Schema | None, content: str = JSON) -> Schema:
    return {"description": "answer", "content": {content: {"schema": schema} if schema is not None else {}}}


ERRORS = {"4XX": {"description": "refused", "content": {JSON: {"schema": ERROR}}},
          "503": {"description": "busy or failing: retry", "content": {JSON: {"schema": ERROR}}}}


def _param(name: str, where: str, schema: Schema, required: bool) -> Schema:
    return {"name": name, "in": where, "required": required, "schema": schema}


# C2SP tlog-tiles paths in their one canonical form (tiles.parse_tile_path): level 0-63 or "entries", the index in
# groups of three digits with no leading x000, and a partial tile's width 1-255.
TILE_PATH = (r"^(entries|[0-9]|[1-5][0-9]|6[0-3])/(x([1-9][0-9]{2}|0[1-9][0-9]|00[1-9])/(x[0-9]{3}/){0,6})?[0-9]{3}"
             r"(\.p/([1-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5]))?$")
PARAMS = {
    "rid": _param("rid", "path", RID, True),
    "name": _param("name", "path", NAME, True),
    "path": _param("path", "path", {"type": "string", "pattern": TILE_PATH}, True),
    "index": _param("index", "query", INDEX, True),
    "old": _param("old", "query", INDEX, True),
    "size": _param("size", "query", INDEX, False),
    "hash": _param("hash", "query", {"type": "string", "pattern": "^[A-Za-z0-9+/_ -]{43}=?$"}, True),
    "state": _param("state", "query", {"type": "string", "enum": ["pending", "accepted", "declined", "all"]}, False),
    "after_seq": _param("after_seq", "query", {"type": "integer", "minimum": -1, "maximum": (1 << 62) - 1}, False),
    "limit": _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, False),
}


def _op(summary: str, ok: dict[str, Schema], *, auth: bool = False, body: Schema | None = None,
        body_required: bool = True, params: tuple[str, ...] = ()) -> Schema:
    op: Schema = {"summary": summary, "responses": {**ok, **ERRORS}}
    if auth:
        op["security"] = [{"bearer": []}]
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": {JSON: {"schema": body}}}
    if params:
        op["parameters"] = [PARAMS[p] for p in params]
    return op


def _binary_batch(op: Schema) -> Schema:
    """The batch route also takes the binary encoding (records/batchwire.py, docs/api.md), and answers in its
    binary results when the request's Accept prefers them."""
    op["requestBody"]["content"][batchwire.CONTENT_TYPE] = {"schema": {
        "type": "string", "format": "binary", "description": "length-prefixed records: docs/api.md, Binary batches"}}
    op["responses"]["200"]["content"][batchwire.RESULTS_TYPE] = {"schema": {"type": "string", "format": "binary"}}
    return op


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "pacspace", "version": __version__,
             "description": "A verifiable recordation log for usage-based billing. See docs/api.md."},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": {"Error": ERROR}},
    "paths": {
        "/checkpoint": {"get": _op("The latest signed checkpoint (C2SP tlog-checkpoint)",
                                   {"200": _answer(TEXT, "text/plain")})},
        "/tile/{path}": {"get": _op("A tile or entry bundle (C2SP tlog-tiles)",
                                    {"200": _answer(None, "application/octet-stream")}, params=("path",))},
        "/v1/log": {"get": _op("Origin, verifier keys and size", {"200": _answer(
            _object({"origin": TEXT, "vkey": TEXT, "size": INDEX, "timestamp_vkey": TEXT}))})},
        "/v1/proof/inclusion": {"get": _op("RFC 9162 inclusion proof", {"200": _answer(INCLUSION)}, params=("index", "size"))},
        "/v1/proof/by-hash": {"get": _op("Inclusion proof found by leaf hash", {"200": _answer(INCLUSION)},
                                         params=("hash", "size"))},
        "/v1/proof/consistency": {"get": _op("RFC 9162 consistency proof", {"200": _answer(
            _object({"old": INDEX, "size": INDEX, "hashes": {"type": "array", "items": HASH}}))}, params=("old", "size"))},
        "/health": {"get": {"summary": "Liveness", "responses": {
            "4XX": ERRORS["4XX"],
            **{code: _answer(_object({"status": {"type": "string", "enum": ["ok", "failing"]}, "size": INDEX,
                                      "role": {"type": "string", "enum": ["sequencer", "frontend"]},
                                      "storage": {"type": "string", "enum": ["sqlite", "postgresql"]},
                                      "problem": {"type": "string"}}, optional=("problem",)))
               for code in ("200", "503")}}}},
        "/metrics": {"get": _op("Prometheus metrics", {"200": _answer(TEXT, "text/plain")})},
        "/openapi.json": {"get": _op("This document", {"200": _answer({"type": "object"})})},
        "/v1/me": {"get": _op("The calling party", {"200": _answer(_object({"name": NAME, "role": ROLE,
                                                                              "keys": _nullable(KEYS)}))}, auth=True)},
        "/v1/me/keys": {"put": _op("Register the caller's public keys", {"200": _answer(
            _object({"name": NAME, "fingerprint": TEXT}))}, auth=True,
            body=_object({"x25519": _b64(32), "ed25519": _b64(32)}, closed=True))},
        "/v1/parties/{name}/keys": {"get": _op("A customer's registered keys (providers)", {"200": _answer(
            _object({"name": NAME, "role": ROLE, "keys": KEYS}))}, auth=True, params=("name",))},
        "/v1/relationships": {
            "get": _op("The caller's relationships (a customer's accepted ones by default)", {"200": _answer(
                _object({"relationships": {"type": "array", "items": LISTED}}))}, auth=True, params=("state",)),
            "post": _op("Create a relationship with its wraps and genesis record",
                        {code: _answer(_object({**RELATIONSHIP["properties"], "receipt": RECEIPT})) for code in ("200", "201")},
                        auth=True, body=_object({
                            "relationship": OWN_RID, "customer": NAME, "cadence": CADENCE,
                            "billing_cycle": {"type": "string", "enum": ["monthly"]},
                            "wraps": _object({"provider": _b64(most=1024), "customer": _b64(most=1024)}, closed=True),
                            "genesis": RECORD}, optional=("cadence", "billing_cycle"))),
        },
        "/v1/relationships/{rid}": {"get": _op("One of the caller's relationships", {"200": _answer(DETAILED)},
                                               auth=True, params=("rid",))},
        "/v1/relationships/{rid}/acceptance": {"post": _op(
            "The customer accepts the relationship: its signature over the genesis entry", {"200": _answer(DETAILED)},
            auth=True, params=("rid",), body=_object({"signature": _b64(SIGNATURE_SIZE)}))},
        "/v1/relationships/{rid}/decline": {"post": _op("The customer declines the relationship", {"200": _answer(DETAILED)},
                                                        auth=True, params=("rid",), body={"type": "object"},
                                                        body_required=False)},
        "/v1/relationships/{rid}/records": {
            "get": _op("Settled records after a seq", {"200": _answer(_object({"relationship": RID, "records": {
                "type": "array", "items": _object({"seq": SEQ, "index": INDEX, "tag": HASH, "ciphertext": _b64(),
                                                   "checkpoint": TEXT})}}))},
                       auth=True, params=("rid", "after_seq", "limit")),
            "post": _op("Append one sealed record", {code: _answer(RECEIPT) for code in ("200", "201")},
                        auth=True, params=("rid",), body=RECORD),
        },
        "/v1/records": {"post": _binary_batch(_op("Append many records across relationships", {"200": _answer(_object({
            "accepted": INDEX, "rejected": INDEX, "checkpoint": _nullable(TEXT),
            "results": {"type": "array", "items": BATCH_RESULT}}))}, auth=True,
            body=_object({"records": {"type": "array", "items": BATCH_ITEM, "minItems": 1, "maxItems": MAX_BATCH}},
                         closed=True)))},
    },
}


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(SPEC)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", get_openapi)
