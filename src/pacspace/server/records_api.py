"""The private API of the recordation layer: parties' keys, relationships, sealed records.

Every route here needs ``Authorization: Bearer <token>``. A party sees only its
own relationships: another party's relationship answers 404 exactly as one
that does not exist. The server stores ciphertexts and wraps it cannot open.

The append routes parse, authorize and call the append protocol
(appending.py, ``service.appender``); :func:`_append_groups` is the one place
its results become HTTP statuses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from hashlib import sha256
import logging
import re
import time
from typing import Any

from aiohttp import web

from ..appending import Appended, Fate, Group, Submission
from ..errors import MalformedInput, NotFound, PacspaceError
from ..keys import KeyUnusable, PublicKeys
from ..receipt import Receipt
from ..records.body import CADENCES
from ..records.seal import BLOB_OVERHEAD, MAX_BUCKET, entry_from_ct_hash
from ..storage import record_ops
from ..storage.records import STATES, Party, Relationship, RelationshipDeclined, StoredRecord
from ..records.batchwire import BatchRecord
from . import batch_answer, bodies, refusals
from .bodies import TooLarge
from .context import SERVICE, LogService

log = logging.getLogger("pacspace.server")

MAX_BLOB = MAX_BUCKET + BLOB_OVERHEAD
MAX_BATCH = 10_000
MAX_PAGE = 1000
_RID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class Unauthorized(PacspaceError):
    code = "unauthorized"
    http_status = 401


class Forbidden(PacspaceError):
    code = "forbidden"
    http_status = 403


class Conflict(PacspaceError):
    code = "conflict"
    http_status = 409


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/me", get_me)
    app.router.add_put("/v1/me/keys", put_my_keys)
    app.router.add_get("/v1/parties/{name}/keys", get_party_keys)
    app.router.add_post("/v1/relationships", post_relationship)
    app.router.add_get("/v1/relationships", get_relationships)
    app.router.add_get("/v1/relationships/{rid}", get_relationship)
    app.router.add_post("/v1/relationships/{rid}/records", post_record)
    app.router.add_get("/v1/relationships/{rid}/records", get_records)
    app.router.add_post("/v1/records", post_records)


# The authenticated caller, stored on the request (a typed key where aiohttp has them, from 3.13).
PARTY: Any = web.RequestKey("party", Party) if hasattr(web, "RequestKey") else "party"

PRIVATE_PREFIXES = ("/v1/me", "/v1/parties", "/v1/relationships", "/v1/records")


def authenticate(request: web.Request) -> None:
    """Every private route's first step (run by the app's middleware): the caller's party, from its bearer token."""
    if request.path.startswith(PRIVATE_PREFIXES):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        party = None
        if scheme.lower() == "bearer" and token:
            party = _service(request).records.party_by_token(token.strip())
        if party is None:
            # One answer for missing, malformed, wrong and revoked tokens.
            raise Unauthorized("a valid bearer token is required")
        request[PARTY] = party


def _service(request: web.Request) -> LogService:
    return request.app[SERVICE]


def _party(request: web.Request) -> Party:
    return request[PARTY]  # type: ignore[no-any-return]


async def _json(request: web.Request) -> dict[str, Any]:
    """The body, a JSON object, at most the route's limit for the caller's role (bodies.LIMITS)."""
    return await bodies.read_json(request, _party(request).role)


def _b64(value: Any, what: str, size: int | None = None, max_size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise MalformedInput(f"{what} must be a base64 string")
    if max_size is not None and len(value) > (max_size + 2) // 3 * 4:
        raise TooLarge(f"{what} exceeds {max_size} bytes")
    try:
        # Strict: only the alphabet and correct padding, as base64.b64decode(validate=True) but cheaper.
        raw = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise MalformedInput(f"{what} is not valid base64") from None
    if size is not None and len(raw) != size:
        raise MalformedInput(f"{what} must be {size} bytes")
    return raw


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 62:
        raise MalformedInput(f"{what} must be a non-negative integer")
    return value


def _visible(request: web.Request, rid: str) -> Relationship:
    """The relationship, if the caller is one of its parties; otherwise exactly 'not found'."""
    rel = _service(request).records.relationship(rid) if _RID.fullmatch(rid) else None
    if rel is None or not rel.has(_party(request).name):
        raise NotFound("no such relationship")
    return rel


def _rel_json(rel: Relationship) -> dict[str, Any]:
    return {
        "relationship": rel.id,
        "provider": rel.provider,
        "customer": rel.customer,
        "cadence": rel.cadence,
        "billing_cycle": rel.billing_cycle,
        "created_at": rel.created_at,
    }


def relationship_json(service: LogService, rel: Relationship, reader: str) -> dict[str, Any]:
    """GET /v1/relationships/{rid}'s answer: the relationship, its consent, ``reader``'s wrap and both parties' keys."""
    records = service.records
    wrap = records.wrap(rel.id, reader)
    return {
        **_rel_json(rel),
        "state": rel.state,
        "acceptance": None if rel.acceptance is None else base64.b64encode(rel.acceptance).decode(),
        "decided_at": rel.decided_at,
        "wrap": None if wrap is None else base64.b64encode(wrap).decode(),
        "provider_keys": _keys_json(records.party(rel.provider)),
        "customer_keys": _keys_json(records.party(rel.customer)),
    }


def _keys_json(party: Party | None) -> dict[str, str] | None:
    if party is None or party.x25519 is None or party.ed25519 is None:
        return None
    keys = PublicKeys(party.x25519, party.ed25519)
    return {**keys.to_json(), "fingerprint": keys.fingerprint()}


async def get_me(request: web.Request) -> web.Response:
    party = _party(request)
    return web.json_response({"name": party.name, "role": party.role, "keys": _keys_json(party)})


async def put_my_keys(request: web.Request) -> web.Response:
    party = _party(request)
    body = await _json(request)
    try:
        keys = PublicKeys.from_json(body)
    except KeyUnusable as exc:
        raise MalformedInput(str(exc)) from None
    await asyncio.to_thread(_service(request).records.set_keys, party.name, keys.x25519, keys.ed25519)
    return web.json_response({"name": party.name, "fingerprint": keys.fingerprint()})


async def get_party_keys(request: web.Request) -> web.Response:
    """Providers look up a customer's registered keys to wrap a relationship secret to them."""
    caller = _party(request)
    name = request.match_info["name"]
    other = _service(request).records.party(name) if _NAME.fullmatch(name) else None
    allowed = other is not None and (other.name == caller.name or (caller.role == "provider" and other.role == "customer"))
    if not allowed or other is None or other.revoked_at is not None:
        raise NotFound("no such party")
    keys = _keys_json(other)
    if keys is None:
        raise NotFound(f"{name} has not registered keys yet (it runs `pacspace keys init`)")
    return web.json_response({"name": other.name, "role": other.role, "keys": keys})


async def get_relationships(request: web.Request) -> web.Response:
    """The caller's relationships. A customer sees only those it accepted unless it asks (``?state=pending``
    for its invitations): a client from before consent never follows one it did not accept."""
    party = _party(request)
    state = request.query.get("state", "all" if party.role == "provider" else "accepted")
    if state != "all" and state not in STATES:
        raise MalformedInput("state is pending, accepted, declined or all")
    rels = _service(request).records.relationships_of(party.name, None if state == "all" else state)
    return web.json_response({"relationships": [{**_rel_json(r), "state": r.state} for r in rels]})


async def get_relationship(request: web.Request) -> web.Response:
    rel = _visible(request, request.match_info["rid"])
    return web.json_response(relationship_json(_service(request), rel, _party(request).name))


def _append_refusal(rel: Relationship, caller: str) -> PacspaceError | None:
    """Why ``caller``, a party of the relationship, may not append to it; None if it may."""
    if rel.provider != caller:
        return Forbidden("only the relationship's provider appends records")
    if rel.state == "declined":
        return RelationshipDeclined("the customer declined this relationship: it takes no more records")
    return None


# One record as sent, checked, with its entry (one per record of a batch: a tuple), and one relationship's records.
_Submission = Submission
_Group = Group


def _submission(obj: Any) -> _Submission:
    try:
        seq, tag_text, blob_text = obj["seq"], obj["tag"], obj["ciphertext"]
    except (KeyError, TypeError, IndexError):
        raise MalformedInput("a record is {seq, tag, ciphertext}") from None
    if not isinstance(obj, dict):
        raise MalformedInput("a record is {seq, tag, ciphertext}")
    blob = _b64(blob_text, "ciphertext", max_size=MAX_BLOB)
    if len(blob) < BLOB_OVERHEAD:
        raise MalformedInput("ciphertext is too short to be a sealed record")
    seq = _int(seq, "seq")
    tag = _b64(tag_text, "tag", 32)
    ct_hash = sha256(blob).digest()
    return tuple.__new__(_Submission, (seq, tag, ct_hash, blob, entry_from_ct_hash(tag, ct_hash)))


async def post_relationship(request: web.Request) -> web.Response:
    party = _party(request)
    if party.role != "provider":
        raise Forbidden("only providers create relationships")
    body = await _json(request)
    rid = body.get("relationship")
    customer_name = body.get("customer")
    cadence = body.get("cadence", "daily")
    billing_cycle = body.get("billing_cycle", "monthly")
    if not isinstance(rid, str) or not _RID.fullmatch(rid):
        raise MalformedInput(f"relationship must be '{party.name}:' followed by letters, digits and ._:-")
    if not rid.startswith(party.name + ":"):
        # Namespaced by provider: an id can only collide with the caller's own relationships, so a 409 never
        # reveals that another party's relationship exists. Another namespace is refused whatever is in it.
        raise Forbidden(f"a provider creates relationships under its own name: '{party.name}:...'")
    if not isinstance(cadence, str) or not CADENCES.fullmatch(cadence):
        raise MalformedInput("cadence is daily, hourly or <N>m")
    if billing_cycle != "monthly":
        raise MalformedInput("billing_cycle is monthly")
    records = _service(request).records
    customer = records.party(customer_name) if isinstance(customer_name, str) else None
    if customer is None or customer.role != "customer" or customer.revoked_at is not None:
        raise NotFound("no such customer")
    wraps = body.get("wraps")
    if not isinstance(wraps, dict) or set(wraps) != {"provider", "customer"}:
        raise MalformedInput("wraps is {provider, customer}: the secret wrapped to each")
    wrap_bytes = {
        party.name: _b64(wraps["provider"], "wraps.provider", max_size=1024),
        customer.name: _b64(wraps["customer"], "wraps.customer", max_size=1024),
    }
    genesis = _submission(body.get("genesis"))
    if genesis.seq != 0:
        raise MalformedInput("the genesis record is seq 0")
    rel = Relationship(rid, party.name, customer.name, cadence, billing_cycle, int(time.time()))
    # The relationship, its wraps and its genesis record are stored together or not at all.
    status, receipts = await _append(request, rel, [genesis], create=record_ops.AddRelationship(rel, wrap_bytes))
    return web.json_response({**_rel_json(rel), "receipt": receipts[0]}, status=status)


async def post_record(request: web.Request) -> web.Response:
    rel = _visible(request, request.match_info["rid"])
    refusal = _append_refusal(rel, _party(request).name)
    if refusal is not None:
        raise refusal
    sub = _submission(await _json(request))
    status, receipts = await _append(request, rel, [sub])
    return web.json_response(receipts[0], status=status)


async def _append(
    request: web.Request, rel: Relationship, subs: list[_Submission], create: Any = None
) -> tuple[int, list[dict[str, Any]]]:
    """Store, sequence and settle consecutive records of one relationship, all or nothing; full receipts."""
    (outcome,) = await _append_groups(_service(request), [_Group(rel, subs, create)])
    if isinstance(outcome, PacspaceError):
        raise outcome
    status, indexed = outcome
    service = _service(request)
    return status, [_receipt(service, s.seq, s.entry, index, size) for s, (index, size) in zip(subs, indexed)]


# An error, or (HTTP status, [(log index, size of the checkpoint covering it)]).
_Outcome = PacspaceError | tuple[int, list[tuple[int, int]]]
# New records are created (201); a retry of committed ones is answered from them (200).
_STATUS = {Fate.NEW: 201, Fate.REPEATED: 200}


async def _append_groups(service: LogService, groups: list[_Group]) -> list[_Outcome]:
    """The append protocol's outcome for each group (appending.Appender.append), as this API answers it."""
    return [
        (_STATUS[outcome.fate], outcome.placed) if isinstance(outcome, Appended) else outcome.reason
        for outcome in await service.appender.append(groups)
    ]


def _checkpoint_note(service: LogService, size: int) -> bytes:
    """The signed checkpoint of ``size``: the one just published (in memory) for new records, else stored."""
    published = service.sequencer.published
    if published is not None and published.size == size:
        return published.format()
    return service.store.checkpoint_at(size)


def _receipt(service: LogService, seq: int, entry: bytes, index: int, size: int) -> dict[str, Any]:
    checkpoint = _checkpoint_note(service, size)
    proof = service.proof_ranges.inclusion_proof(index, size, service.store)
    leaf = hashlib.sha256(b"\x00" + entry).digest()
    return {
        "index": index,
        "seq": seq,
        "leaf_hash": base64.b64encode(leaf).decode(),
        "checkpoint": checkpoint.decode(),
        "proof": Receipt(index, tuple(proof), checkpoint, entry).format(),
    }


async def post_records(request: web.Request) -> web.Response:
    """Many records across the caller's relationships; each relationship's records are all or nothing.

    The body is JSON or the binary encoding (records/batchwire.py). Answers one
    result per record, in request order, with its log index and leaf hash (as JSON,
    or batchwire's binary results when Accept prefers them: batch_answer.py); the
    checkpoint covering the new records is given once. Inclusion proofs are at
    /v1/proof/inclusion (computing thousands here would cost more than committing them).
    """
    party = _party(request)
    if party.role != "provider":
        raise Forbidden("only providers append records")  # before a byte of the body is read
    batch = _Batch()
    await bodies.read_records(request, party.role, batch.add, bodies.RECORD_BODY, batch.add_records)
    if not batch.results:
        raise MalformedInput(f"records is a list of 1 to {MAX_BATCH} records")
    members, results = batch.members, batch.results
    service = _service(request)
    groups: list[tuple[_Group, list[int]]] = []
    known = service.records.relationships(list(members))
    for rid, member in members.items():
        if any(a[1].seq > b[1].seq for a, b in zip(member, member[1:])):
            member.sort(key=lambda m: m[1].seq)
        rel = known.get(rid)
        failure: PacspaceError | None = NotFound("no such relationship")
        if rel is not None and rel.has(party.name):
            failure = _append_refusal(rel, party.name)
        if failure is not None or rel is None:
            for i, sub in member:
                results[i] = _error(failure or NotFound("no such relationship"), rid, sub.seq)
            continue
        groups.append((_Group(rel, [sub for _, sub in member]), [i for i, _ in member]))
    outcomes = await _append_groups(service, [g for g, _ in groups]) if groups else []
    checkpoint = None
    ok = 0
    for (group, positions), outcome in zip(groups, outcomes):
        rid = group.rel.id
        if isinstance(outcome, PacspaceError):
            for i, sub in zip(positions, group.subs):
                results[i] = _error(outcome, rid, sub.seq)
            continue
        status, indexed = outcome
        if status == 201 and checkpoint is None:
            checkpoint = _checkpoint_note(service, indexed[0][1])  # the same for every new record of the request
        for i, sub, (index, _) in zip(positions, group.subs, indexed):
            results[i] = (rid, sub.seq, index, sub.entry)
        ok += len(positions)
    refusals.batch_refused(request, len(results) - ok)
    return batch_answer.answer(request, checkpoint, results)  # type: ignore[arg-type]


class _Batch:
    """The batch route's items (JSON) or records (binary), checked one by one as the body arrives: each a
    submission in its relationship's group, or its error; the parsed item itself is not kept."""

    def __init__(self) -> None:
        self.members: dict[str, list[tuple[int, _Submission]]] = {}
        self.results: list[batch_answer.Result | None] = []

    def add_records(self, records: list[BatchRecord]) -> None:
        """Records of the binary encoding, whose shape its decoder checked: each a submission in its group."""
        members, results = self.members, self.results
        if len(results) + len(records) > MAX_BATCH:
            raise MalformedInput(f"records is a list of 1 to {MAX_BATCH} records")
        for rid, seq, tag, blob in records:
            ct_hash = sha256(blob).digest()
            sub = tuple.__new__(_Submission, (seq, tag, ct_hash, blob, entry_from_ct_hash(tag, ct_hash)))
            group = members.get(rid)
            if group is None:
                group = members[rid] = []
            group.append((len(results), sub))
            results.append(None)

    def add(self, item: Any) -> None:
        i = len(self.results)
        if i == MAX_BATCH:
            raise MalformedInput(f"records is a list of 1 to {MAX_BATCH} records")
        self.results.append(None)
        rid = item.get("relationship") if isinstance(item, dict) else None
        if not isinstance(rid, str) or not _RID.fullmatch(rid):
            rid = None  # not echoed back: what the answer holds stays small
        try:
            if rid is None:
                raise MalformedInput("each record names its relationship by its id")
            sub = _submission(item)  # before its group exists: a bad item never leaves an empty group behind
            self.members.setdefault(rid, []).append((i, sub))
        except PacspaceError as exc:
            self.results[i] = _error(exc, rid, None)


def _error(exc: PacspaceError, rid: Any, seq: int | None) -> dict[str, Any]:
    return {"relationship": rid, "seq": seq, "status": "error", "error": exc.code, "message": str(exc), **exc.details()}


async def get_records(request: web.Request) -> web.Response:
    rel = _visible(request, request.match_info["rid"])
    after = _query_int(request, "after_seq", -1, minimum=-1)
    limit = _query_int(request, "limit", 100, minimum=1)
    if limit > MAX_PAGE:
        raise MalformedInput(f"limit is at most {MAX_PAGE}")
    service = _service(request)
    # A record committed while its checkpoint awaited the witnesses may have lost its answer, and no settle
    # followed: once its entry is published, it is settled here, so that its sender sees it.
    await service.appender.ready_to_read(rel.id)
    if service.store.network_reads:  # from the database, and blobs from an object store: in a thread of their own
        rows = await asyncio.get_running_loop().run_in_executor(
            service.record_reads, service.records.records, rel.id, after, limit)
    else:
        rows = service.records.records(rel.id, after, limit)
    return web.json_response(
        {
            "relationship": rel.id,
            "records": [
                {
                    "seq": r.seq,
                    "index": r.index,
                    "tag": base64.b64encode(r.tag).decode(),
                    "ciphertext": _ciphertext(r),
                    "checkpoint": _service(request).store.checkpoint_at(r.checkpoint_size).decode(),
                }
                for r in rows
            ],
        }
    )


def _ciphertext(rec: StoredRecord) -> str:
    assert rec.blob is not None  # a record store's records() reads every record's blob, or raises
    return base64.b64encode(rec.blob).decode()


def _query_int(request: web.Request, name: str, default: int, minimum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"-1|0|[1-9][0-9]{0,17}", raw) or int(raw) < minimum:
        raise MalformedInput(f"{name} must be an integer of at least {minimum}")
    return int(raw)

