"""What the console's pages show, read from the monitor's verified copy (monitor.db) and nothing else.

The copy holds only what the monitor verified; the bill of a period is
verified again from it (client.bill) each time a page shows it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..checkpoint import SignedCheckpoint, open_checkpoint
from ..errors import NotFound, PacspaceError
from ..merkle import HASH_SIZE, leaf_hash, verify_inclusion
from ..note import Ed25519Verifier
from ..receipt import Receipt
from ..records.body import Body, Close, Delta, Genesis, body_hash, decode_body
from ..records.rules import Ledger
from ..records.seal import Opened, public_entry
from ..client.monitor_state import Followed, MonitorState, StoredCopy, StoredDetection, StoredFinding


@dataclass(frozen=True)
class PeriodStatus:
    period: str
    state: str  # "open", "closed" (a valid close), or "findings" (an authentic record of it breaks a rule)
    records: int


@dataclass(frozen=True)
class RelationshipView:
    followed: Followed
    records: int
    periods: list[PeriodStatus]
    findings: list[StoredFinding]
    detections: list[StoredDetection]


@dataclass(frozen=True)
class CheckpointView:
    size: int
    signed_at: datetime
    verified_at: datetime | None


@dataclass(frozen=True)
class RecordView:
    """One stored record, checked again for the drill-down: its inclusion and its provider's signature."""

    copy: StoredCopy
    body: Body
    checkpoint: SignedCheckpoint
    receipt: str
    proof_ok: bool
    signature_ok: bool
    body_hash: str
    problems: list[str] = field(default_factory=list)


def checkpoint_view(state: MonitorState, log_key: Ed25519Verifier) -> CheckpointView | None:
    note = state.latest_checkpoint()
    if note is None:
        return None
    checkpoint = open_checkpoint(note, log_key)
    polled = state.last_poll()
    return CheckpointView(checkpoint.size, _utc(checkpoint.timestamp), None if polled is None else _utc(polled))


def relationships(state: MonitorState) -> list[RelationshipView]:
    return [relationship_view(state, rid) for rid in state.relationship_ids()]


def relationship_view(state: MonitorState, rid: str) -> RelationshipView:
    followed = state.relationship(rid)
    if followed is None:
        raise NotFound(f"the verified copy holds no relationship {rid}")
    findings, copies = state.findings(rid), state.copies(rid)
    return RelationshipView(followed, len(copies), periods(copies, findings), findings, state.detections(rid))


def periods(copies: list[StoredCopy], findings: list[StoredFinding]) -> list[PeriodStatus]:
    """Each period the copy has records of, newest first, with its state."""
    ledger, counts = Ledger(), dict[str, int]()
    for c in copies:
        body = decode_body(c.body)
        ledger.add(Opened(c.seq, body, c.body, c.signature))
        if isinstance(body, (Delta, Close)):
            counts[body.period] = counts.get(body.period, 0) + 1
    flagged = {f.period for f in findings}
    return [PeriodStatus(p, "findings" if p in flagged else "closed" if p in ledger.closed else "open", n)
            for p, n in sorted(counts.items(), reverse=True)]


def record_view(state: MonitorState, log_key: Ed25519Verifier, rid: str, seq: int) -> RecordView:
    """The record at ``seq``, its receipt, and its proof and signature checked again now; NotFound if not held."""
    copies = state.copies(rid)
    copy = next((c for c in copies if c.seq == seq), None)
    note = state.checkpoint(copy.checkpoint_size) if copy is not None else None
    if copy is None or note is None:
        raise NotFound(f"the verified copy holds no seq {seq} of {rid}")
    body = decode_body(copy.body)
    checkpoint = open_checkpoint(note, log_key)
    path = tuple(copy.proof[i : i + HASH_SIZE] for i in range(0, len(copy.proof), HASH_SIZE))
    entry = public_entry(copy.tag, copy.blob)
    problems = []
    try:
        verify_inclusion(copy.index, checkpoint.size, leaf_hash(entry), list(path), checkpoint.root_hash)
    except PacspaceError as exc:
        problems.append(f"the inclusion proof does not verify: {exc}")
    if not _signed_by_provider(copies, copy):
        problems.append("the provider's signature does not verify")
    receipt = Receipt(copy.index, path, checkpoint.format(), entry).format()
    return RecordView(copy, body, checkpoint, receipt, not any("inclusion" in p for p in problems),
                      not any("signature" in p for p in problems), body_hash(copy.body), problems)


def _signed_by_provider(copies: list[StoredCopy], copy: StoredCopy) -> bool:
    genesis = decode_body(copies[0].body) if copies else None
    if not isinstance(genesis, Genesis):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(genesis.provider.ed25519)).verify(copy.signature, copy.body)
    except (InvalidSignature, ValueError):
        return False
    return True


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)
