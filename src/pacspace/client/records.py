"""Client-side recordation: create relationships, seal and append records, fetch and fully verify them.

Every record a party reads is checked before it is believed: the checkpoint's
signature against the pinned log key; the entry's inclusion under it; the tag
(HMAC under the relationship key); ct_hash (via the entry); the key
commitment, decryption and the provider's signature (records.seal); and the
seq/prev chain (records.chain).
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ..checkpoint import SignedCheckpoint, open_checkpoint
from ..errors import PacspaceError
from ..keys import PartyKeys, PublicKeys, unwrap_secret, wrap_secret
from ..merkle import leaf_hash, verify_consistency, verify_inclusion
from ..receipt import verify_receipt
from ..note import Ed25519Verifier
from ..records.body import (
    GENESIS_PREV,
    Body,
    Close,
    Common,
    Delta,
    Genesis,
    Line,
    body_hash,
    totals,
)
from ..records.body import PartyKeys as NamedKeys
from ..records.chain import ChainError, ChainHead, check_close, check_next, check_usage_period
from ..records.seal import Opened, RelationshipKeys, open_record, public_entry, seal
from .home import Home
from .http import PacspaceClient


class RollbackDetected(PacspaceError):
    """The server shows less, or other, than this party verified before."""

    code = "rollback"


class KeyMismatch(PacspaceError):
    """A key the server relayed is not the one expected (out-of-band fingerprint or genesis record)."""

    code = "key_mismatch"


def _public(obj: dict[str, Any] | None, who: str) -> PublicKeys:
    if not obj:
        raise KeyMismatch(f"the {who} has not registered keys")
    return PublicKeys.from_json({"x25519": obj["x25519"], "ed25519": obj["ed25519"]})


def _named(name: str, keys: PublicKeys) -> NamedKeys:
    j = keys.to_json()
    return NamedKeys(name, j["x25519"], j["ed25519"])


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def create_relationship(
    client: PacspaceClient,
    keys: PartyKeys,
    me: str,
    customer: str,
    cadence: str = "daily",
    billing_cycle: str = "monthly",
    customer_fingerprint: str | None = None,
    home: Home | None = None,
) -> dict[str, Any]:
    """Draw the secret, wrap it to the customer and to ourselves, and commit the signed genesis record.

    With ``home``, the provider keeps the secret (0600) and the chain's head, so
    its recorder can extend the chain without fetching it first.
    """
    found = await client.party_keys(customer)
    customer_keys = _public(found.get("keys"), "customer")
    if customer_fingerprint is not None and customer_keys.fingerprint() != customer_fingerprint.strip().lower():
        raise KeyMismatch(
            f"the server relays keys with fingerprint {customer_keys.fingerprint()} for {customer}, "
            f"not {customer_fingerprint}: refusing to create the relationship"
        )
    # Ids are namespaced by provider: a provider can only ever collide with its own relationships.
    rid = f"{me}:{secrets.token_hex(12)}"
    rkeys = RelationshipKeys.generate()
    genesis = Genesis(
        Common(rid, 0, GENESIS_PREV, secrets.token_hex(8), now_utc()),
        _named(me, keys.public),
        _named(customer, customer_keys),
        cadence,
        billing_cycle,
    )
    sealed = seal(genesis, rkeys, keys.ed25519)
    body = {
        "relationship": rid,
        "customer": customer,
        "cadence": cadence,
        "billing_cycle": billing_cycle,
        "wraps": {
            "provider": base64.b64encode(wrap_secret(rkeys.secret, keys.public, rid, 0)).decode(),
            "customer": base64.b64encode(wrap_secret(rkeys.secret, customer_keys, rid, 0)).decode(),
        },
        "genesis": {
            "seq": 0,
            "tag": base64.b64encode(sealed.tag).decode(),
            "ciphertext": base64.b64encode(sealed.blob).decode(),
        },
    }
    result = await client.create_relationship(body)
    if home is not None:
        checked = verify_receipt(result["receipt"]["proof"], home.log_key(), entry=sealed.entry)
        if checked.index != result["receipt"]["index"]:
            raise ChainError("the genesis receipt does not match the record that was sent")
        home.save_relationship_secret(rid, rkeys.secret)
        home.save_relationship_state(
            rid, {"next_seq": 1, "head": body_hash(sealed.body), "provider_fingerprint": keys.public.fingerprint()}
        )
    return result


@dataclass(frozen=True)
class VerifiedRecord:
    seq: int
    index: int
    opened: Opened
    tag: bytes
    blob: bytes

    @property
    def body(self) -> Body:
        return self.opened.body


@dataclass
class RelationshipView:
    """What a party needs to read or extend one relationship: its keys and the verified chain so far."""

    rid: str
    info: dict[str, Any]
    keys: RelationshipKeys
    provider: PublicKeys
    records: list[VerifiedRecord]
    checkpoint: SignedCheckpoint

    @property
    def head(self) -> ChainHead | None:
        if not self.records:
            return None
        last = self.records[-1]
        return ChainHead(self.rid, last.seq + 1, body_hash(last.opened.encoded))


async def verified_checkpoint(client: PacspaceClient, home: Home, log_key: Ed25519Verifier) -> SignedCheckpoint:
    """The server's checkpoint, signed by the pinned key and consistent with the last one this party verified."""
    checkpoint = open_checkpoint(await client.checkpoint(), log_key)
    previous_note = home.last_checkpoint()
    if previous_note is not None:
        previous = open_checkpoint(previous_note, log_key)
        if checkpoint.size < previous.size:
            raise RollbackDetected(
                f"the log shows size {checkpoint.size}, smaller than the {previous.size} verified before"
            )
        proof = await client.consistency(previous.size, checkpoint.size)
        verify_consistency(
            previous.size, checkpoint.size, previous.root_hash, checkpoint.root_hash,
            [base64.b64decode(h) for h in proof["hashes"]],
        )
    home.save_checkpoint(checkpoint.format())
    return checkpoint


async def load_relationship(
    client: PacspaceClient, home: Home, rid: str, log_key: Ed25519Verifier, provider_fingerprint: str | None = None
) -> RelationshipView:
    """Fetch every record of a relationship and verify each one fully (see the module docstring).

    Beyond each record, the whole: the chain starts with a genesis naming this
    relationship, both parties by name and this party's own keys; closes add
    up; the chain is no shorter than, and extends, what this party verified
    before; and the provider's key is the one pinned at first sight (or
    ``provider_fingerprint``, compared out of band).
    """
    mine = home.keys()
    me = (await client.me())["name"]
    info = await client.relationship(rid)
    if not info.get("wrap"):
        raise KeyMismatch("the server holds no wrap of this relationship's secret for you")
    secret = unwrap_secret(base64.b64decode(info["wrap"]), mine, rid, 0)
    rkeys = RelationshipKeys(secret)
    provider = _public(info.get("provider_keys"), "provider")
    state = home.relationship_state(rid)
    pinned = provider_fingerprint or state.get("provider_fingerprint")
    if pinned is not None and provider.fingerprint() != str(pinned).strip().lower():
        raise KeyMismatch(
            f"the provider's key has fingerprint {provider.fingerprint()}, not the {pinned} pinned for {rid}"
        )
    rows: list[dict[str, Any]] = []
    after = -1
    while True:
        page = await client.records(rid, after, 1000)
        rows += page
        if len(page) < 1000:
            break
        after = page[-1]["seq"]
    # The checkpoint is fetched after the records, so it covers every one of them.
    checkpoint = await verified_checkpoint(client, home, log_key)
    verified: list[VerifiedRecord] = []
    opened: list[Opened] = []
    head: ChainHead | None = None
    for row in rows:
        record = await _verify_row(client, row, rkeys, provider, checkpoint)
        head = check_next(head, record.opened)
        if isinstance(record.body, Close):
            check_close(opened, record.body)
        elif isinstance(record.body, Delta):
            check_usage_period(opened, record.body)
        verified.append(record)
        opened.append(record.opened)
    if not verified:
        raise ChainError(f"the server shows no records for {rid}, not even its genesis")
    _check_genesis(verified[0].body, rid, info, provider, mine, me)
    _check_extends(state, verified)
    view = RelationshipView(rid, info, rkeys, provider, verified, checkpoint)
    _save_state(home, view)
    return view


def _check_extends(state: dict[str, Any], verified: list[VerifiedRecord]) -> None:
    """The chain must contain everything verified before, unchanged: no truncation, no rewritten record."""
    if not state:
        return
    known = int(state["next_seq"])
    if len(verified) < known:
        raise RollbackDetected(f"the server shows {len(verified)} records; {known} were verified before")
    if body_hash(verified[known - 1].opened.encoded) != state["head"]:
        raise RollbackDetected(f"record {known - 1} differs from the one verified before (a fork)")


def _save_state(home: Home, view: RelationshipView) -> None:
    last = view.records[-1]
    home.save_relationship_state(
        view.rid,
        {"next_seq": last.seq + 1, "head": body_hash(last.opened.encoded), "provider_fingerprint": view.provider.fingerprint()},
    )


async def _verify_row(
    client: PacspaceClient, row: dict[str, Any], rkeys: RelationshipKeys, provider: PublicKeys, checkpoint: SignedCheckpoint
) -> VerifiedRecord:
    seq, index = int(row["seq"]), int(row["index"])
    tag, blob = base64.b64decode(row["tag"]), base64.b64decode(row["ciphertext"])
    entry = public_entry(tag, blob)
    if index >= checkpoint.size:
        raise ChainError(f"seq {seq}: index {index} is beyond the verified checkpoint")
    proof = await client.inclusion(index, checkpoint.size)
    verify_inclusion(
        index, checkpoint.size, leaf_hash(entry), [base64.b64decode(h) for h in proof["hashes"]], checkpoint.root_hash
    )
    opened = open_record(seq, tag, blob, rkeys, provider.signing_key())
    return VerifiedRecord(seq, index, opened, tag, blob)


def _check_genesis(body: Body, rid: str, info: dict[str, Any], provider: PublicKeys, mine: PartyKeys, me: str) -> None:
    """The signed genesis is this relationship's, names its two parties, the key that signs the chain, and our keys."""
    if not isinstance(body, Genesis):
        raise ChainError("the first record is not a genesis record")
    if body.common.relationship != rid:
        raise ChainError(f"the genesis record is for relationship {body.common.relationship}, not {rid}")
    if (body.provider.name, body.customer.name) != (info.get("provider"), info.get("customer")):
        raise KeyMismatch("the genesis record names other parties than the server reports")
    relayed = _named(body.provider.name, provider)
    if (body.provider.x25519, body.provider.ed25519) != (relayed.x25519, relayed.ed25519):
        raise KeyMismatch("the genesis record names other provider keys than the server relays")
    named = {body.provider.name: body.provider, body.customer.name: body.customer}.get(me)
    ours = _named(me, mine.public)
    if named is None or (named.x25519, named.ed25519) != (ours.x25519, ours.ed25519):
        raise KeyMismatch("the genesis record does not name your keys: someone else's key was slipped in")


async def append_body(
    client: PacspaceClient, home: Home, view: RelationshipView, make: Any
) -> dict[str, Any]:
    """Seal ``make(common)`` at the chain's next seq and append it; returns the server's verified receipt.

    The receipt must prove this very entry under a checkpoint signed by the
    pinned log key. The view is extended with the new record, so the next
    append follows it without refetching.
    """
    head = view.head
    if head is None:
        raise ChainError("the relationship has no genesis record")
    common = Common(view.rid, head.next_seq, head.head, secrets.token_hex(8), now_utc())
    body = make(common)
    signer = home.keys().ed25519
    sealed = seal(body, view.keys, signer)
    receipt = await client.append(view.rid, sealed.seq, sealed.tag, sealed.blob)
    checked = verify_receipt(receipt["proof"], home.log_key(), entry=sealed.entry)
    if checked.index != receipt["index"] or receipt["seq"] != sealed.seq:
        raise ChainError("the receipt does not match the record that was sent")
    opened = Opened(sealed.seq, body, sealed.body, signer.sign(sealed.body))
    view.records.append(VerifiedRecord(sealed.seq, checked.index, opened, sealed.tag, sealed.blob))
    _save_state(home, view)
    return receipt


def delta_maker(period: str, window: tuple[str, str], lines: list[Line]) -> Any:
    return lambda common: Delta(common, period, window[0], window[1], tuple(lines))


def close_maker(view: RelationshipView, period: str) -> Any:
    """The close of ``period``: exactly the period's deltas and corrections, their count, head and totals."""
    if any(isinstance(r.body, Close) and r.body.period == period for r in view.records):
        raise ChainError(f"period {period} is already closed")
    usage = [r for r in view.records if isinstance(r.body, Delta) and r.body.period == period]
    if usage:
        first, last = usage[0].seq, usage[-1].seq
    else:
        last = view.records[-1].seq
        first = last + 1
    between = [r for r in view.records if first <= r.seq <= last]
    if any(not (isinstance(r.body, Delta) and r.body.period == period) for r in between):
        raise ChainError(f"records of another period lie between seq {first} and {last}: close that period first")
    head = next(r for r in view.records if r.seq == last)
    chain_head = body_hash(head.opened.encoded)
    sums = totals([r.body for r in usage if isinstance(r.body, Delta)])
    return lambda common: Close(common, period, first, last, len(usage), chain_head, sums)
