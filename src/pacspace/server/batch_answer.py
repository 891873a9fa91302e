"""The batch route's answer (``POST /v1/records``): JSON, or the binary results of records/batchwire.py when the
request's Accept prefers them. Either way one result per record, in request order.

The JSON is written record by record from a template rather than built as dicts and encoded: for a batch of
thousands of records the answer was as costly as decoding the request's binary encoding.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Sequence
from hashlib import sha256
from typing import Any

from aiohttp import web

from ..records import batchwire

# A committed record: (relationship id, seq, log index, its 65-byte entry).
Accepted = tuple[str, int, int, bytes]
Result = Accepted | dict[str, Any]

# The relationship id is interpolated as is: the decoders let through only ids of [A-Za-z0-9._:-].
_OK = '{"relationship":"%s","seq":%d,"status":"ok","index":%d,"leaf_hash":"%s"}'


def answer(request: web.Request, checkpoint: bytes | None, results: Sequence[Result]) -> web.Response:
    """The 200 answer: ``results`` holds each record's Accepted tuple or its error object."""
    if prefers_binary(request.headers.getall("Accept", ())):
        body = batchwire.encode_results(checkpoint, [r[2] if isinstance(r, tuple) else r for r in results])
        return web.Response(body=body, content_type=batchwire.RESULTS_TYPE)
    return web.Response(body=json_answer(checkpoint, results), content_type="application/json", charset="utf-8")


def json_answer(checkpoint: bytes | None, results: Sequence[Result]) -> bytes:
    """``{"accepted", "rejected", "checkpoint", "results"}``; an accepted record's result carries its leaf hash."""
    parts = []
    dumps, b64 = json.dumps, binascii.b2a_base64
    for result in results:
        if type(result) is tuple:
            rid, seq, index, entry = result
            parts.append(_OK % (rid, seq, index, b64(sha256(b"\x00" + entry).digest(), newline=False).decode()))
        else:
            parts.append(dumps(result))
    ok = sum(1 for r in results if type(r) is tuple)
    note = None if checkpoint is None else checkpoint.decode()
    head = {"accepted": ok, "rejected": len(results) - ok, "checkpoint": note}
    return (dumps(head)[:-1] + ', "results": [' + ",".join(parts) + "]}").encode()


def prefers_binary(accept: Sequence[str]) -> bool:
    """Whether Accept headers rank the binary results above JSON: named with q > 0, and JSON not named higher."""
    ranks = {}
    for header in accept:
        for item in header.split(","):
            kind, *params = item.split(";")
            q = 1.0
            for param in params:
                name, _, value = param.partition("=")
                if name.strip().lower() == "q":
                    try:
                        q = float(value)
                    except ValueError:
                        q = 0.0
            ranks[kind.strip().lower()] = q
    binary = ranks.get(batchwire.RESULTS_TYPE, 0.0)
    return binary > 0 and binary >= ranks.get("application/json", 0.0)
