"""Evidence bundles: what a third party needs to check one billing period, without the server and without the
relationship secret.

The bundle discloses only the period's records (from its first usage record to
its close) with the per-record keys K_rec(seq) of those records alone, their
ciphertexts, tags, log indexes, inclusion proofs and the signed checkpoints
they were verified under, plus the provider's public key. Other periods, the
tag key and the relationship secret stay private.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..checkpoint import SignedCheckpoint, open_checkpoint
from .. import exitcodes
from .. import jsonshape as shape
from ..errors import MalformedInput, PacspaceError
from ..keys import PublicKeys
from ..merkle import HASH_SIZE, leaf_hash, proves_fork, verify_inclusion
from ..note import Ed25519Verifier
from ..receipt import verify_receipt
from ..records.body import Close, Line, body_hash, decode_body
from ..records.chain import ChainError
from ..records.rules import Finding, Ledger, RuleBroken
from ..records.seal import Opened, RelationshipKeys, open_with_record_key, public_entry
from .bill import BillError, BillIncomplete, verify_bill
from .monitor_state import MonitorState

FORMAT = "pacspace.evidence/v1"
FORK_FORMAT = "pacspace.fork-evidence/v1"


class EvidenceError(PacspaceError):
    code = "evidence_failed"
    exit_code = exitcodes.VERIFICATION_FAILED


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def export_bundle(state: MonitorState, log_key: Ed25519Verifier, rid: str, period: str) -> dict[str, Any]:
    """Build the bundle from the monitor's copy (re-verified first, as bill verify does)."""
    bill = verify_bill(state, log_key, rid, period)
    known = state.relationship(rid)
    if known is None:
        raise BillError(f"the monitor does not know relationship {rid}")
    if bill.close is None:
        raise BillIncomplete(f"{period} has no close record yet: there is no bill to give evidence of")
    close = bill.close
    keys = RelationshipKeys(known.secret)
    copies = {c.seq: c for c in state.copies(rid)}
    genesis = decode_body(copies[0].body)
    provider = genesis.provider  # type: ignore[union-attr]
    seqs = range(close.first_seq, close.seq + 1)
    checkpoints = sorted({copies[s].checkpoint_size for s in seqs})
    return {
        "format": FORMAT,
        # The key the exporter verified the log with: a convenience for the verifier page, never a trust anchor
        # (a reader pins the log's key out of band; `evidence verify` ignores this field).
        "log_vkey": log_key.vkey(),
        "relationship": rid,
        "period": period,
        "provider_ed25519": provider.ed25519,
        "provider_x25519": provider.x25519,
        "prev_of_first": body_hash(copies[close.first_seq - 1].body) if close.first_seq > 0 else None,
        "checkpoints": {str(size): (state.checkpoint(size) or b"").decode() for size in checkpoints},
        # What the invoice cites: the close's receipt, as the c2sp.org/tlog-proof text.
        "close_receipt": close.receipt,
        "records": [
            {
                "seq": s,
                "index": copies[s].index,
                "tag": _b64(copies[s].tag),
                "ciphertext": _b64(copies[s].blob),
                "record_key": _b64(keys.record_key(s)),
                "checkpoint_size": copies[s].checkpoint_size,
                "proof": [_b64(copies[s].proof[i : i + HASH_SIZE]) for i in range(0, len(copies[s].proof), HASH_SIZE)],
            }
            for s in seqs
        ],
    }


@dataclass
class VerifiedBundle:
    relationship: str
    period: str
    provider_fingerprint: str
    record_count: int
    totals: tuple[Line, ...]
    close_signed_time: int
    findings: tuple[Finding, ...] = ()  # the period's records that break a protocol rule (records.rules)


def verify_bundle(bundle: dict[str, Any], log_key: Ed25519Verifier) -> VerifiedBundle:
    """Check a bundle offline: checkpoints, inclusion, each record with its own key, continuity, the close.

    MalformedInput if it is not a bundle (its fields are checked first); EvidenceError if it does not prove
    what it claims."""
    what = "the evidence bundle"
    if shape.obj(bundle, what).get("format") != FORMAT:
        raise MalformedInput(f"not an evidence file: its format is neither {FORMAT} nor {FORK_FORMAT}")
    rid, period = shape.field(bundle, "relationship", str, what), shape.field(bundle, "period", str, what)
    ed25519 = shape.b64(bundle, "provider_ed25519", what, 32)
    x25519 = shape.b64(bundle, "provider_x25519", what, 32)
    prev_of_first = shape.field(bundle, "prev_of_first", str, what, optional=True)
    shape.field(bundle, "log_vkey", str, what, optional=True)  # (bundles before it was added have none)
    notes = shape.field(bundle, "checkpoints", dict, what)
    receipt_text = shape.field(bundle, "close_receipt", str, what)
    items = shape.field(bundle, "records", list, what)
    if not items:
        raise MalformedInput(f"{what} holds no records")
    checkpoints: dict[int, SignedCheckpoint] = {}
    for size, note in notes.items():
        if not re.fullmatch(r"0|[1-9][0-9]{0,18}", size) or not isinstance(note, str):
            raise MalformedInput(f"{what}: checkpoints maps tree sizes to signed checkpoint notes")
        checkpoints[int(size)] = open_checkpoint(note.encode(), log_key)
    provider = Ed25519PublicKey.from_public_bytes(ed25519)
    opened: list[Opened] = []
    for n, item in enumerate(items):
        where = f"{what}'s record {n}"
        seq, index = shape.field(item, "seq", int, where), shape.field(item, "index", int, where)
        tag, blob = shape.b64(item, "tag", where, 32), shape.b64(item, "ciphertext", where)
        record_key = shape.b64(item, "record_key", where, 32)
        path = shape.b64_list(item, "proof", where, HASH_SIZE)
        checkpoint = checkpoints.get(shape.field(item, "checkpoint_size", int, where))
        if checkpoint is None:
            raise MalformedInput(f"{where}: its checkpoint_size names no checkpoint of the bundle")
        if seq < 0 or not 0 <= index < checkpoint.size:
            raise EvidenceError(f"{where}: seq {seq} at index {index} is not in a tree of size {checkpoint.size}")
        entry = public_entry(tag, blob)
        verify_inclusion(index, checkpoint.size, leaf_hash(entry), path, checkpoint.root_hash)
        record = open_with_record_key(seq, tag, blob, record_key, provider)
        if record.body.common.relationship != rid:
            raise EvidenceError(f"seq {seq} belongs to another relationship")
        expected_prev = prev_of_first if not opened else body_hash(opened[-1].encoded)
        if expected_prev is not None and record.body.common.prev != expected_prev:
            raise EvidenceError(f"seq {seq} does not follow the record before it")
        if opened and seq != opened[-1].seq + 1:
            raise EvidenceError(f"seq {seq} follows seq {opened[-1].seq}: a gap")
        opened.append(record)
    close = opened[-1].body
    if not isinstance(close, Close) or close.period != period:
        raise EvidenceError("the bundle does not end with the period's close record")
    try:
        ledger = Ledger(opened[0].seq - 1, prev_of_first)
        findings = tuple(f for record in opened[:-1] for f in ledger.add(record))
        broken = ledger.check(opened[-1])
    except (ChainError, RuleBroken) as exc:
        raise EvidenceError(str(exc)) from None
    if broken:
        raise EvidenceError(broken[0].message)
    receipt = verify_receipt(receipt_text, log_key)
    last = items[-1]
    if receipt.entry != public_entry(shape.b64(last, "tag", what), shape.b64(last, "ciphertext", what)) \
            or receipt.index != last["index"]:
        raise EvidenceError("the close receipt is not for the close record")
    return VerifiedBundle(rid, period, PublicKeys(x25519, ed25519).fingerprint(), close.record_count, close.totals,
                          checkpoints[last["checkpoint_size"]].timestamp, findings)


@dataclass(frozen=True)
class ProvenFork:
    origin: str
    earlier: SignedCheckpoint
    later: SignedCheckpoint


def verify_fork(evidence: dict[str, Any], log_key: Ed25519Verifier) -> ProvenFork:
    """Check a monitor's fork evidence offline: two checkpoints signed by the log that no append-only tree has.

    Both notes must verify under ``log_key`` (same origin). Then either they
    have one size and two roots, or the consistency path leads from the
    larger's signed root (so its hashes are the log's own) to a root for the
    smaller size other than the one the log signed (merkle.proves_fork).
    """
    what = "the fork evidence"
    if shape.obj(evidence, what).get("format") != FORK_FORMAT:
        raise MalformedInput(f"not a {FORK_FORMAT} file (the monitor writes one for each fork it proves)")
    notes = [shape.field(evidence, key, str, what).encode() for key in ("earlier_checkpoint", "later_checkpoint")]
    path = shape.b64_list(evidence, "consistency_path", what, HASH_SIZE) if evidence.get("consistency_path") else []
    earlier, later = sorted((open_checkpoint(n, log_key) for n in notes), key=lambda c: c.size)
    if earlier.checkpoint.origin != later.checkpoint.origin:
        raise EvidenceError("the two checkpoints are of different logs")
    if not proves_fork(earlier.size, later.size, earlier.root_hash, later.root_hash, path):
        raise EvidenceError(f"this does not prove a fork: the path does not lead from the signed root of size "
                            f"{later.size} to another root for size {earlier.size}")
    return ProvenFork(earlier.checkpoint.origin, earlier, later)


def dumps(bundle: dict[str, Any]) -> str:
    return json.dumps(bundle, indent=1, sort_keys=True)
