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
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint import SignedCheckpoint, open_checkpoint
from .. import exitcodes
from ..errors import PacspaceError
from ..keys import PartyKeys, PublicKeys, fingerprint_matches, unwrap_secret, wrap_secret
from ..merkle import leaf_hash, verify_consistency, verify_inclusion
from ..receipt import Receipt, verify_receipt
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
    encode_body,
    period_bounds,
)
from ..records.body import PartyKeys as NamedKeys
from ..records.chain import ChainError, ChainHead, check_next
from ..records.rules import Finding, Ledger, RuleBroken
from ..records.seal import Opened, RelationshipKeys, open_record, public_entry, seal
from .home import Home
from .http import PacspaceClient, ServerError, Unreachable
from .outbox import REFUSED_FOR_GOOD, Outbox, OutboxPending, Waiting


class RollbackDetected(PacspaceError):
    """The server shows less, or other, than this party verified before."""

    code = "rollback"
    exit_code = exitcodes.VERIFICATION_FAILED


class KeyMismatch(PacspaceError):
    """A key the server relayed is not the one expected (out-of-band fingerprint or genesis record)."""

    code = "key_mismatch"
    exit_code = exitcodes.VERIFICATION_FAILED


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
    if customer_fingerprint is not None and not fingerprint_matches(customer_keys.fingerprint(), customer_fingerprint):
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
    if home is None:
        return await client.create_relationship(body)
    item = Waiting(rid, 0, sealed.tag, sealed.blob, create=body, secret=rkeys.secret, head=body_hash(sealed.body))
    return await _send(client, home, item)


async def _send(client: PacspaceClient, home: Home, item: Waiting) -> dict[str, Any]:
    """Send one sealed record (or a relationship's creation) through the outbox; returns the server's answer.

    The record is in the outbox, durably, before it is sent, and leaves it only
    once a receipt for exactly its entry verified under the pinned log key.
    """
    outbox = Outbox(home.path)
    outbox.put(item)
    try:
        answer = await _post(client, item)
    except ServerError as exc:
        if exc.http_status < 500 and exc.code != "previous_in_flight":
            outbox.done(item)  # refused: nothing of it is in the log
            raise
        raise OutboxPending(
            f"{item.relationship} seq {item.seq} was sent but not acknowledged ({exc}); it is kept in the outbox "
            "and the next command for this relationship sends it again"
        ) from None
    except Unreachable as exc:
        raise Unreachable(f"{exc}; {item.relationship} seq {item.seq} is kept in the outbox and the next command "
                          "for this relationship sends it again") from None
    _settled(home, outbox, item, answer)
    return answer


async def _post(client: PacspaceClient, item: Waiting) -> dict[str, Any]:
    if item.create is not None:
        return await client.create_relationship(item.create)
    return await client.append(item.relationship, item.seq, item.tag, item.blob)


def _settled(home: Home, outbox: Outbox, item: Waiting, answer: dict[str, Any]) -> None:
    """Check the receipt is for exactly this entry, keep what the home keeps of a creation, then forget the record."""
    receipt = answer["receipt"] if item.create is not None else answer
    checked = verify_receipt(receipt["proof"], home.log_key(), entry=public_entry(item.tag, item.blob))
    if checked.index != receipt["index"] or receipt["seq"] != item.seq:
        raise ChainError("the receipt does not match the record that was sent")
    if item.create is not None and item.secret is not None and item.head is not None:
        if home.relationship_secret(item.relationship) is None:
            home.save_relationship_secret(item.relationship, item.secret)
        if not home.relationship_state(item.relationship):
            home.save_relationship_state(item.relationship, {
                "next_seq": 1, "head": item.head, "provider_fingerprint": home.keys().public.fingerprint()})
    outbox.done(item)


async def finish_creation(client: PacspaceClient, home: Home, customer: str) -> dict[str, Any] | None:
    """The answer to a creation of a relationship with ``customer`` that this home sent and never saw acknowledged,
    once it is; None if there is none (a retried ``relationship create`` finishes it rather than make another)."""
    outbox = Outbox(home.path)
    for item in outbox.waiting():
        if item.create is not None and item.create.get("customer") == customer:
            answer = await _resend(client, home, outbox, item, [])
            if answer is not None:
                return answer
    return None


async def send_waiting(client: PacspaceClient, home: Home, rid: str | None = None) -> list[str]:
    """Send what waits in the outbox (for ``rid``, or all), in seq order; returns a note per record set aside.

    A record the server refuses for good (another record holds its seq) is set
    aside, with every later one of its relationship, whose ``prev`` names it.
    Raises OutboxPending (or Unreachable) while a record still cannot be
    acknowledged: the caller must not extend that relationship meanwhile.
    """
    outbox = Outbox(home.path)
    notes: list[str] = []
    refused: set[str] = set()
    for item in outbox.waiting(rid):
        if item.relationship in refused:
            notes.append(f"{item.relationship} seq {item.seq} follows a refused record; kept in {outbox.drop(item)}")
        elif await _resend(client, home, outbox, item, notes) is None:
            refused.add(item.relationship)
    return notes


async def _resend(
    client: PacspaceClient, home: Home, outbox: Outbox, item: Waiting, notes: list[str]
) -> dict[str, Any] | None:
    """Send one waiting record again; its answer, or None if it was refused for good (and set aside)."""
    try:
        answer = await _post(client, item)
    except ServerError as exc:
        if exc.code in REFUSED_FOR_GOOD or exc.code == "seq_conflict":
            notes.append(f"{item.relationship} seq {item.seq}, sent earlier, was refused ({exc}); "
                         f"kept in {outbox.drop(item)}")
            return None
        raise OutboxPending(
            f"{item.relationship} seq {item.seq}, sent earlier, is still not acknowledged ({exc}); it stays in "
            "the outbox and the next command for this relationship sends it again"
        ) from None
    except Unreachable as exc:
        raise Unreachable(f"{exc}; {item.relationship} seq {item.seq} waits in the outbox") from None
    _settled(home, outbox, item, answer)
    return answer


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
    # The protocol rules' view of the chain, and the findings among its records (records.rules).
    ledger: Ledger = field(default_factory=Ledger)
    findings: list[Finding] = field(default_factory=list)
    # What sending the outbox first did (records set aside), for the caller to show.
    notes: list[str] = field(default_factory=list)

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
    notes = await send_waiting(client, home, rid)
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
    if pinned is not None and not fingerprint_matches(provider.fingerprint(), str(pinned)):
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
    ledger = Ledger()
    findings: list[Finding] = []
    head: ChainHead | None = None
    for row in rows:
        record = await verify_row(client, row, rkeys, provider, checkpoint)
        head = check_next(head, record.opened)
        # An authentic record that breaks a rule stays in the chain: it is reported, never a reason to stop.
        findings += ledger.add(record.opened)
        verified.append(record)
    if not verified:
        raise ChainError(f"the server shows no records for {rid}, not even its genesis")
    check_genesis(verified[0].body, rid, info, provider, mine, me)
    _check_extends(state, verified)
    view = RelationshipView(rid, info, rkeys, provider, verified, checkpoint, ledger, findings, notes)
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


async def verify_row(
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


def check_genesis(body: Body, rid: str, info: dict[str, Any], provider: PublicKeys, mine: PartyKeys, me: str) -> None:
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

    A record the protocol rules would flag (records.rules), or one that would
    leave a period impossible to close, is refused before anything is sent.
    The record goes through the outbox (see :func:`_send`). The receipt must
    prove this very entry under a checkpoint signed by the pinned log key. The
    view is extended with the new record, so the next append follows it
    without refetching.
    """
    head = view.head
    if head is None:
        raise ChainError("the relationship has no genesis record")
    common = Common(view.rid, head.next_seq, head.head, secrets.token_hex(8), now_utc())
    body = make(common)
    signer = home.keys().ed25519
    encoded = encode_body(body)
    opened = Opened(common.seq, body, encoded, signer.sign(encoded))
    refuse_rule_breaking(view.ledger, opened)
    sealed = seal(body, view.keys, signer)
    receipt = await _send(client, home, Waiting(view.rid, sealed.seq, sealed.tag, sealed.blob))
    view.records.append(VerifiedRecord(sealed.seq, int(receipt["index"]), opened, sealed.tag, sealed.blob))
    view.ledger.add(opened)
    _save_state(home, view)
    return receipt


def refuse_rule_breaking(ledger: Ledger, record: Opened) -> None:
    """Raise RuleBroken, naming the fix, for a record the rules would flag or that would trap a period open."""
    findings = ledger.check(record)
    if findings:
        first = findings[0]
        raise RuleBroken(f"refusing to send {first.message}. {first.fix[:1].upper()}{first.fix[1:]}", findings)
    hazard = ledger.hazard(record)
    if hazard is not None:
        raise RuleBroken(f"refusing to send seq {record.seq}: {hazard}")


def delta_maker(period: str, window: tuple[str, str], lines: list[Line], corrects: int | None = None) -> Any:
    """A delta of ``lines`` in ``window``; with ``corrects``, a correction of that earlier record."""
    return lambda common: Delta(common, period, window[0], window[1], tuple(lines), corrects=corrects)


async def receipt_of(client: PacspaceClient, view: RelationshipView, seq: int) -> dict[str, Any]:
    """The receipt of a record the view verified, rebuilt from the log (the answer to its append may be lost):
    its inclusion under the view's checkpoint, as the c2sp.org/tlog-proof text."""
    record = view.records[seq]
    checkpoint = view.checkpoint
    proof = await client.inclusion(record.index, checkpoint.size)
    path = tuple(base64.b64decode(h) for h in proof["hashes"])
    entry = public_entry(record.tag, record.blob)
    verify_inclusion(record.index, checkpoint.size, leaf_hash(entry), path, checkpoint.root_hash)
    text = Receipt(record.index, path, checkpoint.format(), entry).format()
    return {"index": record.index, "seq": seq, "checkpoint": checkpoint.format().decode(), "proof": text}


def close_maker(view: RelationshipView, period: str) -> Any:
    """The close of ``period``: exactly the period's deltas and corrections, their count, head and totals."""
    if period in view.ledger.closed:
        raise RuleBroken(f"period {period} is already closed (seq {view.ledger.closed[period]})")
    if period_bounds(period)[0] > now_utc():
        # A typo (2027-11 for 2026-11) would close a month before it began, for good.
        raise RuleBroken(f"{period} has not begun yet: only a month that has begun can be closed")
    head = view.head
    if head is None:
        raise ChainError("the relationship has no genesis record")
    first, last, count, chain_head, sums = view.ledger.expected_close(period, head.next_seq)
    return lambda common: Close(common, period, first, last, count, chain_head, sums)
