"""A customer's consent over HTTP: accept a relationship (with its signature over the genesis entry) or decline it.

Only the relationship's customer decides (its provider is forbidden; anyone
else is told, exactly as for an id that does not exist, that there is no such
relationship). The server checks an acceptance against the customer's
registered Ed25519 key and the genesis entry it holds (records/acceptance.py)
before storing it; storage/consent.py decides which transitions are allowed.
"""

from __future__ import annotations

import time

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import PacspaceError
from ..records.acceptance import SIGNATURE_SIZE, acceptance_valid
from ..storage import record_ops
from ..storage.records import InFlight, Relationship, StoredRecord
from .context import LogService
from .records_api import Forbidden, _b64, _json, _party, _service, _visible, relationship_json


class BadAcceptance(PacspaceError):
    """An acceptance signature that the customer's registered key did not make over this relationship's genesis."""

    code = "bad_acceptance"
    http_status = 422


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/relationships/{rid}/acceptance", post_acceptance)
    app.router.add_post("/v1/relationships/{rid}/decline", post_decline)


def _as_customer(request: web.Request) -> Relationship:
    """The relationship, if the caller is its customer; its provider is forbidden, others learn nothing."""
    rel = _visible(request, request.match_info["rid"])
    if _party(request).name != rel.customer:
        raise Forbidden("only the relationship's customer accepts or declines it")
    return rel


async def post_acceptance(request: web.Request) -> web.Response:
    rel = _as_customer(request)
    body = await _json(request)
    signature = _b64(body.get("signature"), "signature", SIGNATURE_SIZE)
    service = _service(request)
    genesis = await _settled_genesis(service, rel.id)
    if not acceptance_valid(_customer_key(service, rel), rel.id, genesis.entry, signature):
        raise BadAcceptance(
            "the signature does not verify: it must be the customer's registered Ed25519 key's signature "
            "over this relationship's id and genesis entry"
        )
    accepted = await _decide(service, record_ops.Accept(rel.id, signature, int(time.time())))
    return web.json_response(relationship_json(service, accepted, rel.customer))


async def post_decline(request: web.Request) -> web.Response:
    rel = _as_customer(request)
    if request.body_exists and request.content_length != 0:
        await _json(request)  # `{}` or any object: nothing in it is read
    service = _service(request)
    declined = await _decide(service, record_ops.Decline(rel.id, int(time.time())))
    return web.json_response(relationship_json(service, declined, rel.customer))


async def _settled_genesis(service: LogService, rid: str) -> StoredRecord:
    """The relationship's genesis record, once it has its log index (settled from the log here if it can be)."""
    genesis = service.records.record(rid, 0, blob=False)
    if genesis is not None and genesis.index is None:
        # Just committed (its settle is written behind the provider's answer), or its answer lost in a witness outage.
        await service.appender.ready_to_read(rid)
        genesis = service.records.record(rid, 0, blob=False)
    if genesis is None or genesis.index is None:
        raise InFlight("the relationship's genesis record is still being committed; retry when it has its receipt")
    return genesis


def _customer_key(service: LogService, rel: Relationship) -> Ed25519PublicKey:
    customer = service.records.party(rel.customer)
    key = None if customer is None else customer.ed25519
    if key is None:
        raise BadAcceptance("the customer has no registered Ed25519 key to check an acceptance against")
    return Ed25519PublicKey.from_public_bytes(key)


async def _decide(service: LogService, op: record_ops.Accept | record_ops.Decline) -> Relationship:
    """Run a consent op through the records writer; the relationship as it now is, or the op's error."""
    (result,) = await service.writer.write([op])
    if isinstance(result, BaseException):
        raise result
    return result  # type: ignore[no-any-return]
