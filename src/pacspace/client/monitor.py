"""The customer's monitor: poll the log, verify everything new, keep a verified copy, report misbehaviour.

Each poll:

1. the checkpoint's signature against the pinned log key;
2. its consistency with the last checkpoint this monitor verified (a smaller
   size is a rollback; an inconsistent pair of signed notes is kept as proof);
3. for every relationship of the party, every new record: inclusion at the
   verified checkpoint, tag = HMAC(K_tag, seq), ct_hash (via the entry), key
   commitment, decryption, the provider's signature, seq/prev continuity and
   closes that add up;

and only then writes the checkpoint and the records, in one transaction.
Each failure is a :class:`Detection` with a stable kind, an exit code, one
line for humans, and the evidence that proves it, saved under
``<PACSPACE_HOME>/evidence/``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint import SignedCheckpoint, open_checkpoint
from ..errors import MalformedInput, PacspaceError, ProofError, SignatureError
from ..keys import PublicKeys, unwrap_secret
from ..merkle import leaf_hash, verify_consistency, verify_inclusion
from ..note import Ed25519Verifier
from ..policy import Policy, require_quorum
from ..records.body import Close, Delta, Genesis, body_hash, decode_body
from ..records.chain import ChainError, ChainHead, check_close, check_next, check_usage_period
from ..records.seal import (
    Opened,
    ProviderSignatureError,
    RelationshipKeys,
    SealError,
    TagMismatch,
    open_record,
    public_entry,
)
from .home import Home
from .http import PacspaceClient
from .monitor_state import MonitorState, StoredCopy

# Documented in docs/monitor.md; stable.
EXIT_CODES = {
    "bad_checkpoint_signature": 10,
    "inconsistent_checkpoints": 11,
    "rollback": 12,
    "inclusion_failed": 13,
    "chain_broken": 14,
    "bad_tag": 15,
    "bad_ciphertext": 16,
    "bad_signature": 17,
    "key_mismatch": 18,
    "unwitnessed_checkpoint": 19,
}


class Detection(PacspaceError):
    """Proof that the log or a party misbehaved, with the evidence to show anyone."""

    code = "detection"

    def __init__(self, kind: str, message: str, evidence: dict[str, Any]) -> None:
        super().__init__(message)
        self.kind = kind
        self.evidence = evidence

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.kind]


@dataclass
class PollReport:
    checkpoint_size: int
    new_records: int = 0
    relationships: int = 0
    per_relationship: dict[str, int] = field(default_factory=dict)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _checkpoint(
    client: PacspaceClient, state: MonitorState, log_key: Ed25519Verifier, policy: Policy | None = None
) -> SignedCheckpoint:
    raw = await client.checkpoint()
    try:
        checkpoint = open_checkpoint(raw, log_key)
    except (SignatureError, MalformedInput) as exc:
        raise Detection("bad_checkpoint_signature", f"the log's checkpoint does not verify: {exc}", {"checkpoint": raw.decode(errors="replace")}) from None
    if policy is not None:
        try:
            require_quorum(policy, checkpoint.note)
        except SignatureError as exc:
            raise Detection("unwitnessed_checkpoint", str(exc), {"checkpoint": raw.decode()}) from None
    previous_note = state.latest_checkpoint()
    if previous_note is None:
        return checkpoint
    previous = open_checkpoint(previous_note, log_key)
    evidence = {"earlier_checkpoint": previous_note.decode(), "later_checkpoint": raw.decode()}
    if checkpoint.size < previous.size:
        raise Detection("rollback", f"the log went back from size {previous.size} to {checkpoint.size}", evidence)
    proof = await client.consistency(previous.size, checkpoint.size)
    hashes = [base64.b64decode(h) for h in proof["hashes"]]
    try:
        verify_consistency(previous.size, checkpoint.size, previous.root_hash, checkpoint.root_hash, hashes)
    except ProofError as exc:
        evidence["consistency_proof"] = proof["hashes"]
        raise Detection(
            "inconsistent_checkpoints",
            f"checkpoints at sizes {previous.size} and {checkpoint.size} are not consistent ({exc}): "
            "the two signed notes prove the log forked",
            evidence,
        ) from None
    return checkpoint


def _classify(exc: SealError) -> str:
    if isinstance(exc, TagMismatch):
        return "bad_tag"
    if isinstance(exc, ProviderSignatureError):
        return "bad_signature"
    return "bad_ciphertext"


async def poll(
    client: PacspaceClient,
    home: Home,
    state: MonitorState,
    log_key: Ed25519Verifier,
    progress: Callable[[str, int, int], None] | None = None,
    policy: Policy | None = None,
) -> PollReport:
    """One poll; raises Detection on any misbehaviour (nothing is stored then)."""
    checkpoint = await _checkpoint(client, state, log_key, policy)
    mine = home.keys()
    me = (await client.me())["name"]
    report = PollReport(checkpoint.size)
    new_relationships: list[tuple[str, str, str, str, bytes]] = []
    new_copies: list[StoredCopy] = []
    for info in await client.relationships():
        rid = info["relationship"]
        known = state.relationship(rid)
        detail = await client.relationship(rid)
        provider = PublicKeys.from_json({k: detail["provider_keys"][k] for k in ("x25519", "ed25519")})
        if known is None:
            secret = unwrap_secret(base64.b64decode(detail["wrap"]), mine, rid, 0)
            new_relationships.append((rid, info["provider"], info["customer"], provider.fingerprint(), secret))
        else:
            secret = known[3]
            if provider.fingerprint() != known[2]:
                raise Detection(
                    "key_mismatch",
                    f"{rid}: the server now relays provider keys {provider.fingerprint()}, not the {known[2]} verified before",
                    {"relationship": rid, "relayed": detail["provider_keys"]},
                )
        rkeys = RelationshipKeys(secret)
        copies = state.copies(rid)
        opened = [Opened(c.seq, decode_body(c.body), c.body, c.signature) for c in copies]
        head: ChainHead | None = None
        if opened:
            head = ChainHead(rid, opened[-1].seq + 1, body_hash(opened[-1].encoded))
        rows = []
        after = opened[-1].seq if opened else -1
        while True:
            page = await client.records(rid, after, 1000)
            rows += page
            if len(page) < 1000:
                break
            after = page[-1]["seq"]
        for n, row in enumerate(rows):
            copy, record, head = await _verify(client, rid, row, rkeys, provider, checkpoint, head, opened)
            if record.seq == 0:
                _check_genesis(record, rid, info, mine.public, me)
            opened.append(record)
            new_copies.append(copy)
            if progress and (n % 100 == 0 or n + 1 == len(rows)):
                progress(rid, n + 1, len(rows))
        report.relationships += 1
        report.per_relationship[rid] = len(rows)
        report.new_records += len(rows)
    state.save_poll((checkpoint.size, checkpoint.format()), new_relationships, new_copies, int(time.time()))
    return report


async def _verify(
    client: PacspaceClient,
    rid: str,
    row: dict[str, Any],
    rkeys: RelationshipKeys,
    provider: PublicKeys,
    checkpoint: SignedCheckpoint,
    head: ChainHead | None,
    opened: list[Opened],
) -> tuple[StoredCopy, Opened, ChainHead]:
    seq, index = int(row["seq"]), int(row["index"])
    tag, blob = base64.b64decode(row["tag"]), base64.b64decode(row["ciphertext"])
    entry = public_entry(tag, blob)
    evidence = {"relationship": rid, "seq": seq, "index": index, "tag": row["tag"], "ciphertext": row["ciphertext"],
                "checkpoint": checkpoint.format().decode()}
    if index >= checkpoint.size:
        raise Detection("inclusion_failed", f"{rid} seq {seq}: index {index} is beyond the checkpoint", evidence)
    proof = await client.inclusion(index, checkpoint.size)
    path = [base64.b64decode(h) for h in proof["hashes"]]
    try:
        verify_inclusion(index, checkpoint.size, leaf_hash(entry), path, checkpoint.root_hash)
    except ProofError as exc:
        evidence["inclusion_proof"] = proof["hashes"]
        raise Detection(
            "inclusion_failed",
            f"{rid} seq {seq}: the record is not in the log at index {index} ({exc}); "
            "a ciphertext that does not match the logged ct_hash fails here too",
            evidence,
        ) from None
    if seq in {r.seq for r in opened}:
        raise Detection("chain_broken", f"{rid}: seq {seq} appears twice", evidence)
    try:
        record = open_record(seq, tag, blob, rkeys, provider.signing_key())
    except SealError as exc:
        kind = _classify(exc)
        raise Detection(kind, f"{rid} seq {seq}: {exc}", evidence) from None
    try:
        new_head = check_next(head, record)
        if isinstance(record.body, Close):
            check_close(opened, record.body)
        elif isinstance(record.body, Delta):
            check_usage_period(opened, record.body)
    except ChainError as exc:
        raise Detection("chain_broken", f"{rid}: {exc}", evidence) from None
    copy = StoredCopy(rid, seq, index, tag, blob, record.encoded, record.signature, checkpoint.size, b"".join(path))
    return copy, record, new_head


def _check_genesis(record: Opened, rid: str, info: dict[str, Any], mine: PublicKeys, me: str) -> None:
    body = record.body
    evidence = {"relationship": rid, "genesis": record.encoded.decode()}
    if not isinstance(body, Genesis) or body.common.relationship != rid:
        raise Detection("chain_broken", f"{rid}: seq 0 is not this relationship's genesis record", evidence)
    if (body.provider.name, body.customer.name) != (info["provider"], info["customer"]):
        raise Detection("key_mismatch", f"{rid}: the genesis names other parties than the server reports", evidence)
    named = {body.provider.name: body.provider, body.customer.name: body.customer}.get(me)
    ours = mine.to_json()
    if named is None or (named.x25519, named.ed25519) != (ours["x25519"], ours["ed25519"]):
        raise Detection("key_mismatch", f"{rid}: the genesis record does not name your keys", evidence)


def save_evidence(home: Home, detection: Detection) -> str:
    """Write the evidence of a detection to ``<home>/evidence/<time>-<kind>.json``; returns the path."""
    folder = home.path / "evidence"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{detection.kind}.json"
    path.write_text(json.dumps({"kind": detection.kind, "message": str(detection), **detection.evidence}, indent=1))
    return str(path)
