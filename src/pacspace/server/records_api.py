"""The private API of the recordation layer: parties' keys, relationships, sealed records.

Every route here needs ``Authorization: Bearer <token>``. A party sees only its
own relationships: another party's relationship answers 404 exactly as one
that does not exist. The server stores ciphertexts and wraps it cannot open.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from hashlib import sha256
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import web

from ..errors import AdmissionFailed, EntryTooLarge, MalformedInput, NotFound, PacspaceError, PoolFull
from ..keys import KeyUnusable, PublicKeys
from ..merkle import leaf_hash
from ..receipt import Receipt
from ..records.body import CADENCES
from ..records.seal import BLOB_OVERHEAD, MAX_BUCKET, entry_from_ct_hash
from ..storage.records import (
    STATES,
    InFlight,
    Party,
    RecordConflict,
    RecordStore,
    Relationship,
    RelationshipDeclined,
    TagConflict,
)
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


class TooLarge(PacspaceError):
    code = "too_large"
    http_status = 413


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


async def _json(request: web.Request, max_bytes: int) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > max_bytes:
        raise TooLarge(f"request body exceeds {max_bytes} bytes")
    data = await request.read()
    if len(data) > max_bytes:
        raise TooLarge(f"request body exceeds {max_bytes} bytes")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedInput("request body is not JSON") from None
    if not isinstance(body, dict):
        raise MalformedInput("request body must be a JSON object")
    return body


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
    body = await _json(request, 4096)
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


class _Submission(NamedTuple):
    """One record as sent, checked, with what the server derives from it (one per record of a batch: a tuple)."""

    seq: int
    tag: bytes
    ct_hash: bytes
    blob: bytes
    entry: bytes
    # In this order so that ``sub[:4]`` is what records.db stores: (seq, tag, ct_hash, blob).


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
    body = await _json(request, 2 * MAX_BLOB)
    rid = body.get("relationship")
    customer_name = body.get("customer")
    cadence = body.get("cadence", "daily")
    billing_cycle = body.get("billing_cycle", "monthly")
    if not isinstance(rid, str) or not _RID.fullmatch(rid) or not rid.startswith(party.name + ":"):
        # Namespaced by provider: an id can only collide with the caller's own relationships,
        # so a 409 never reveals that another party's relationship exists.
        raise MalformedInput(f"relationship must be '{party.name}:' followed by letters, digits and ._:-")
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
    status, receipts = await _append(request, rel, [genesis], create=RecordStore.add_relationship_op(rel, wrap_bytes))
    return web.json_response({**_rel_json(rel), "receipt": receipts[0]}, status=status)


async def post_record(request: web.Request) -> web.Response:
    rel = _visible(request, request.match_info["rid"])
    refusal = _append_refusal(rel, _party(request).name)
    if refusal is not None:
        raise refusal
    sub = _submission(await _json(request, 2 * MAX_BLOB))
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


@dataclass
class _Group:
    """One relationship's records in a request: stored, sequenced and settled together or not at all."""

    rel: Relationship
    subs: list[_Submission]
    create: Any = None


# An error, or (HTTP status, [(log index, size of the checkpoint covering it)]).
_Outcome = PacspaceError | tuple[int, list[tuple[int, int]]]


async def _append_groups(service: LogService, groups: list[_Group]) -> list[_Outcome]:
    """Store every group's rows in one transaction, sequence all new entries in one batch, settle in one.

    Runs shielded: once rows are stored, a client that goes away cannot stop
    their entries being sequenced and the rows settled.
    """
    return await asyncio.shield(_append_groups_unshielded(service, groups))


def _group_op(group: _Group) -> Any:
    # All or nothing together: a genesis that fails takes its relationship with it.
    return RecordStore.reserve_op(group.rel.id, [s[:4] for s in group.subs], before=group.create)


async def _reserve(service: LogService, groups: list[_Group]) -> list[Any]:
    """Store the groups' rows in one transaction: each group's reserve result, or its error.

    Groups that create a relationship get an op each; all others share one bulk
    op, which costs one statement per table instead of several per group.
    """
    creating = [i for i, g in enumerate(groups) if g.create is not None]
    plain = [i for i, g in enumerate(groups) if g.create is None]
    ops = [_group_op(groups[i]) for i in creating]
    if plain:
        records = [(groups[i].rel.id, [s[:4] for s in groups[i].subs]) for i in plain]
        ops.append(RecordStore.reserve_many_op(records))
    answers = await service.writer.write(ops)
    results: list[Any] = [None] * len(groups)
    for i, answer in zip(creating, answers):
        results[i] = answer
    if plain:
        bulk = answers[-1]
        for k, i in enumerate(plain):
            results[i] = bulk if isinstance(bulk, BaseException) else bulk[k]
    return results


def _unsettled(result: Any) -> bool:
    """A reserve result whose records (or an earlier one of their relationship) still lack a log index."""
    return isinstance(result, InFlight) or (isinstance(result, list) and any(r.index is None for r in result))


async def _append_groups_unshielded(service: LogService, groups: list[_Group]) -> list[_Outcome]:
    results = await _reserve(service, groups)
    # Rows without their log index: a record still in flight, or one whose settle was lost (a failed
    # write, or a checkpoint the witnesses cosigned late). The retry of such a record lands here too.
    stuck = [i for i, r in enumerate(results) if _unsettled(r)]
    # Another record at a seq whose row is unsettled: a client that lost our answer (a witness outage)
    # sealed that seq again. Settled (once its entry is published), the row shows in the client's refetch.
    conflicted = [groups[i].rel.id for i, r in enumerate(results) if isinstance(r, RecordConflict)]
    if stuck or conflicted:
        # A row can outlive its request unsettled (a settle write failed): if its entry is in the
        # log, settle it now rather than blocking the relationship until the next start. If that
        # fails, the other groups' rows are stored already and must still be sequenced: the stuck
        # ones keep their in-flight answer, to be repaired on a later retry.
        repaired = await _settle_published(service, [groups[i].rel.id for i in stuck] + conflicted)
        if repaired and stuck:
            retried = await _reserve(service, [groups[i] for i in stuck])
            for i, r in zip(stuck, retried):
                results[i] = r
    outcomes: list[_Outcome | None] = [None] * len(groups)
    new: list[int] = []
    for i, result in enumerate(results):
        if isinstance(result, PacspaceError):
            outcomes[i] = result
        elif isinstance(result, BaseException):
            raise result
        elif result is not None:
            if any(r.index is None for r in result):
                outcomes[i] = InFlight("this record is still being committed; retry for its receipt")
            else:
                outcomes[i] = (200, [(r.index, r.checkpoint_size) for r in result])  # type: ignore[misc]
        else:
            new.append(i)
    if not new:
        return outcomes  # type: ignore[return-value]
    entries = [s.entry for i in new for s in groups[i].subs]
    rows = [(groups[i].rel.id, s.seq) for i in new for s in groups[i].subs]
    try:
        sequenced, settled = await service.sequence_records(entries, rows)
    except (PoolFull, MalformedInput, EntryTooLarge, AdmissionFailed) as exc:
        # Refused before entering the pool (full, malformed, tags not checkable): nothing was appended;
        # forget our rows.
        # Any other error (witness_quorum_failed, sequencer_stopped, a lost channel) propagates and
        # leaves them: their entries may be in the log, to be settled from it later or at the next start.
        await _forget(service, [groups[i] for i in new])
        for i in new:
            outcomes[i] = exc
        return outcomes  # type: ignore[return-value]
    settle = []
    tags: list[bytes] = []
    refused = []
    size = 0  # every admitted record of the call is in the same checkpoint
    at = 0
    for i in new:
        subs = groups[i].subs
        answers = sequenced[at : at + len(subs)]
        at += len(subs)
        if any(q is None for q in answers):
            # Admission refused the relationship's records whole: one of their tags repeats.
            refused.append(i)
            outcomes[i] = TagConflict("a tag is already in the log, or in a record being committed")
            continue
        size = answers[0].checkpoint.size
        settle.extend((groups[i].rel.id, s.seq, q.index) for s, q in zip(subs, answers))
        tags.extend(s.tag for s in subs)
        outcomes[i] = (201, [(q.index, size) for q in answers])
    if settle and not settled:
        # The entries are committed: acknowledge now, record their indexes in records.db behind us.
        service.settle_later([_settle_op(settle, tags, size)])
    if refused:
        await _forget(service, [groups[i] for i in refused])
    return outcomes  # type: ignore[return-value]


def _settle_op(settle: list[tuple[str, int, int]], tags: list[bytes], size: int) -> Any:
    """The settle op for rows (relationship, seq, index) with these tags: by tag if their indexes run on."""
    first = settle[0][2]
    if all(index == first + k for k, (_, _, index) in enumerate(settle)):
        return RecordStore.settle_run_op(tags, first, size)
    return RecordStore.settle_rows_op(settle, size)


async def _forget(service: LogService, groups: list[_Group]) -> None:
    """Drop the stored rows of groups whose entries were never appended (and a relationship their genesis would have made)."""
    undo = []
    for group in groups:
        undo.append(RecordStore.drop_op(group.rel.id, [s.seq for s in group.subs]))
        if group.create is not None:
            undo.append(RecordStore.drop_relationship_op(group.rel.id))
    try:
        failures = [r for r in await service.writer.write(undo) if isinstance(r, BaseException)]
    except Exception as exc:
        failures = [exc]
    if failures:
        # The other groups' answers stand. These rows stay unsettled (their relationships answer
        # previous_in_flight) until the next start, which drops them: their entries are not in the log.
        log.error("could not drop records that were never appended: %s", failures[0])


async def _settle_published(service: LogService, rids: list[str]) -> int:
    """_settle_from_log for callers that go on without it: if it fails, the rows wait for a later try (0)."""
    try:
        return await _settle_from_log(service, rids)
    except Exception as exc:
        log.warning("could not settle earlier records from the log: %s", exc)
        return 0


async def _settle_from_log(service: LogService, rids: list[str]) -> int:
    """Settle these relationships' unsettled rows whose entries are in the published log; returns how many.

    A row whose entry another record already holds was refused by admission (a provider's
    copy of its own record) and is dropped instead.
    """
    rows = [r for rid in rids for r in service.records.unsettled_of(rid)]
    if not rows:
        return 0
    size = service.sequencer.latest.size
    found = await service.find_leaves([leaf_hash(r.entry) for r in rows], size)
    taken = service.records.settled_indexes([i for i in found if i is not None])
    ops = []
    for r, index in zip(rows, found):
        if index is None:
            continue
        if index in taken:
            ops.append(RecordStore.drop_op(r.relationship, [r.seq]))
            if r.seq == 0:
                ops.append(RecordStore.drop_relationship_op(r.relationship))
        else:
            ops.append(RecordStore.settle_op(r.relationship, [(r.seq, index)], size))
            taken.add(index)
    if ops:
        for result in await service.writer.write(ops):
            if isinstance(result, BaseException):
                raise result
    return len(ops)


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

    Answers one result per record, in request order, with its log index and
    leaf hash; the checkpoint covering the new records is given once. Inclusion
    proofs are at /v1/proof/inclusion (computing thousands here would cost more
    than committing them).
    """
    party = _party(request)
    body = await _json(request, 64 << 20)
    items = body.get("records")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise MalformedInput(f"records is a list of 1 to {MAX_BATCH} records")
    members: dict[str, list[tuple[int, _Submission]]] = {}
    results: list[dict[str, Any] | None] = [None] * len(items)
    for i, item in enumerate(items):
        rid = item.get("relationship") if isinstance(item, dict) else None
        try:
            if not isinstance(rid, str):
                raise MalformedInput("each record names its relationship")
            members.setdefault(rid, []).append((i, _submission(item)))
        except PacspaceError as exc:
            results[i] = _error(exc, rid, None)
    service = _service(request)
    groups: list[tuple[_Group, list[int]]] = []
    known = service.records.relationships([rid for rid in members if _RID.fullmatch(rid)])
    for rid, group in members.items():
        if any(a[1].seq > b[1].seq for a, b in zip(group, group[1:])):
            group.sort(key=lambda m: m[1].seq)
        rel = known.get(rid)
        failure: PacspaceError | None = NotFound("no such relationship")
        if rel is not None and rel.has(party.name):
            failure = _append_refusal(rel, party.name)
        if failure is not None or rel is None:
            for i, sub in group:
                results[i] = _error(failure or NotFound("no such relationship"), rid, sub.seq)
            continue
        groups.append((_Group(rel, [sub for _, sub in group]), [i for i, _ in group]))
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
            leaf = sha256(b"\x00" + sub.entry).digest()
            results[i] = {"relationship": rid, "seq": sub.seq, "status": "ok", "index": index,
                          "leaf_hash": binascii.b2a_base64(leaf, newline=False).decode()}
        ok += len(positions)
    return web.json_response(
        {
            "accepted": ok,
            "rejected": len(items) - ok,
            "checkpoint": None if checkpoint is None else checkpoint.decode(),
            "results": results,
        }
    )


def _error(exc: PacspaceError, rid: Any, seq: int | None) -> dict[str, Any]:
    return {"relationship": rid, "seq": seq, "status": "error", "error": exc.code, "message": str(exc), **exc.details()}


async def get_records(request: web.Request) -> web.Response:
    rel = _visible(request, request.match_info["rid"])
    after = _query_int(request, "after_seq", -1, minimum=-1)
    limit = _query_int(request, "limit", 100, minimum=1)
    if limit > MAX_PAGE:
        raise MalformedInput(f"limit is at most {MAX_PAGE}")
    service = _service(request)
    await service.settled()
    if service.records.has_unsettled(rel.id):
        # A record committed while its checkpoint awaited the witnesses lost its answer, and no settle
        # followed: once its entry is published, settle it here, so that its sender sees it.
        await _settle_published(service, [rel.id])
    rows = service.records.records(rel.id, after, limit)
    return web.json_response(
        {
            "relationship": rel.id,
            "records": [
                {
                    "seq": r.seq,
                    "index": r.index,
                    "tag": base64.b64encode(r.tag).decode(),
                    "ciphertext": base64.b64encode(r.blob).decode(),
                    "checkpoint": _service(request).store.checkpoint_at(r.checkpoint_size).decode(),
                }
                for r in rows
            ],
        }
    )


def _query_int(request: web.Request, name: str, default: int, minimum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"-1|0|[1-9][0-9]{0,17}", raw) or int(raw) < minimum:
        raise MalformedInput(f"{name} must be an integer of at least {minimum}")
    return int(raw)

