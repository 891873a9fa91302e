"""The customer's monitor: poll the log, verify everything new, keep a verified copy, report misbehaviour.

Each poll:

1. the checkpoint's signature against the pinned log key (and, with a policy,
   its witnesses' quorum);
2. its consistency with the last checkpoint this monitor verified. A smaller
   size is a rollback. A proof that does not verify is checked again from the
   log's tiles: only hashes that lead to the newer signed root, and to another
   root for the older size, prove a fork; anything else proves nothing about
   the log (``bad_proof``). The checkpoint is stored once it verifies.
3. each relationship the party follows, on its own: every new record's
   inclusion at the verified checkpoint, tag = HMAC(K_tag, seq), ct_hash (via
   the entry), key commitment, decryption, the provider's signature, and
   seq/prev continuity. A record that fails is a *detection*: nothing of it is
   stored, the relationship's copy stops before it, and every other
   relationship goes on. A record that verifies but breaks a protocol rule
   (records.rules) is a *finding*: it is stored, reported, and the copy goes
   on past it.

A customer follows only the relationships it accepted: the server lists them,
and the monitor checks the acceptance is signed by the customer's own key over
the genesis it verifies. Invitations are listed, never followed.

Each detection and finding has a stable kind, an exit code (pacspace.exitcodes),
one line for humans, and evidence saved under ``<PACSPACE_HOME>/evidence/``,
once however many polls see it again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint import SignedCheckpoint, open_checkpoint
from ..errors import MalformedInput, PacspaceError, ProofError, SignatureError
from ..exitcodes import DETECTIONS, FAILURE, OK, RULE_BROKEN, UNREACHABLE
from ..keys import KeyUnusable, PublicKeys, fingerprint_matches, unwrap_secret
from ..merkle import (
    Node,
    consistency_path,
    consistency_proof_plan,
    fold_inclusion_proof,
    inclusion_proof_plan,
    leaf_hash,
    proves_fork,
    verify_consistency,
    verify_inclusion,
)
from ..note import Ed25519Verifier
from ..policy import Policy, require_quorum
from ..records.acceptance import acceptance_valid
from ..records.body import Genesis, body_hash, decode_body
from ..records.chain import ChainError, ChainHead, check_next
from ..records.rules import Finding, Ledger
from ..records.seal import Opened, ProviderSignatureError, RelationshipKeys, SealError, TagMismatch, open_record, public_entry
from .home import Home
from .http import PacspaceClient, Unreachable
from .monitor_state import Followed, MonitorState, StoredCopy, StoredFinding
from .evidence import FORK_FORMAT
from .tile_reader import TileReader

# Kept for callers that map kinds to codes; the table lives in pacspace.exitcodes.
EXIT_CODES = DETECTIONS
PAGE = 1000  # records per request (the server's largest page)
PARALLEL = 16  # requests in flight at once
CHUNK = 32  # relationships whose records are held in memory at once


class Detection(PacspaceError):
    """Proof that the log or a party misbehaved, with the evidence to show anyone."""

    code = "detection"

    def __init__(self, kind: str, message: str, evidence: dict[str, Any], relationship: str = "", seq: int = -1) -> None:
        super().__init__(message)
        self.kind = kind
        self.evidence = evidence
        self.relationship = relationship
        self.seq = seq
        self.evidence_path: str | None = None
        self.exit_code = EXIT_CODES[kind]


@dataclass
class RelationshipOutcome:
    """What one poll did for one relationship."""

    relationship: str
    new_records: int = 0
    findings: list[StoredFinding] = field(default_factory=list)  # found in this poll
    detection: Detection | None = None
    error: PacspaceError | None = None
    followed: bool = True
    note: str | None = None  # why it is not followed, where that needs the party's attention


@dataclass
class PollReport:
    checkpoint_size: int
    outcomes: list[RelationshipOutcome] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)  # invitations this party has not accepted
    log_detections: list[Detection] = field(default_factory=list)  # about the log, that did not stop the poll

    @property
    def new_records(self) -> int:
        return sum(o.new_records for o in self.outcomes)

    @property
    def relationships(self) -> int:
        return sum(o.followed for o in self.outcomes)

    @property
    def per_relationship(self) -> dict[str, int]:
        return {o.relationship: o.new_records for o in self.outcomes if o.followed}

    @property
    def detections(self) -> list[Detection]:
        return self.log_detections + [o.detection for o in self.outcomes if o.detection is not None]

    @property
    def findings(self) -> list[StoredFinding]:
        return [f for o in self.outcomes for f in o.findings]

    @property
    def exit_code(self) -> int:
        """The lowest detection code; else an error's; else RULE_BROKEN for new findings; else OK."""
        if self.detections:
            return min(d.exit_code for d in self.detections)
        errors = [o.error for o in self.outcomes if o.error is not None]
        if errors:
            return UNREACHABLE if all(isinstance(e, Unreachable) for e in errors) else FAILURE
        return RULE_BROKEN if self.findings else OK


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class _Poll:
    """What every step of one poll needs."""

    client: PacspaceClient
    home: Home
    state: MonitorState
    log_key: Ed25519Verifier
    progress: Callable[[str, int, int], None] | None
    now: int
    tile_detections: list[Detection] = field(default_factory=list)


async def poll(
    client: PacspaceClient,
    home: Home,
    state: MonitorState,
    log_key: Ed25519Verifier,
    progress: Callable[[str, int, int], None] | None = None,
    policy: Policy | None = None,
) -> PollReport:
    """One poll. Raises Detection (its evidence saved) when the log itself cannot be trusted: then nothing is
    stored. Everything about one relationship is in the report, and holds back no other relationship."""
    ctx = _Poll(client, home, state, log_key, progress, int(time.time()))
    try:
        checkpoint, recovered = await _checkpoint(ctx, policy)
    except Detection as found:
        _note(ctx, found)
        raise
    for kept in recovered:
        _note(ctx, kept)
    state.save_checkpoint(checkpoint.size, checkpoint.format(), ctx.now)
    me = await client.me()
    report = PollReport(checkpoint.size, log_detections=recovered)
    listing = await client.relationships()
    for start in range(0, len(listing), CHUNK):
        await _chunk(ctx, checkpoint, listing[start : start + CHUNK], me["name"], report)
    if me.get("role") == "customer":
        report.pending = await client.relationships(state="pending")
    return report


async def _chunk(ctx: _Poll, checkpoint: SignedCheckpoint, infos: list[dict[str, Any]], me: str, report: PollReport) -> None:
    """Some relationships: their new records fetched concurrently, the tiles all their proofs need fetched once,
    then each relationship verified and stored on its own."""
    gate = asyncio.Semaphore(PARALLEL)
    fetched = await asyncio.gather(*(_fetch(ctx, info, gate) for info in infos), return_exceptions=True)
    tiles: TileReader | None = TileReader(ctx.client, checkpoint.size, ctx.state, PARALLEL)
    try:
        await tiles.fetch(_nodes([f for f in fetched if isinstance(f, _Fetched)], checkpoint.size))  # type: ignore[union-attr]
    except PacspaceError:
        tiles = None  # every proof then comes from the log's proof endpoint, and is checked the same way
    for info, got in zip(infos, fetched):
        outcome = RelationshipOutcome(info["relationship"])
        try:
            if isinstance(got, BaseException):
                raise got
            await _follow(ctx, checkpoint, info, me, outcome, got, tiles)
        except Detection as found:
            found.relationship = found.relationship or outcome.relationship
            _note(ctx, found)
            outcome.detection = found
        except PacspaceError as exc:
            outcome.error = exc
        report.outcomes.append(outcome)
    if tiles is not None:
        ctx.state.save_tiles(tiles.new_full_tiles())
    for found in ctx.tile_detections:
        _note(ctx, found)
    report.log_detections += ctx.tile_detections
    ctx.tile_detections = []


@dataclass
class _Fetched:
    """What the server says of one relationship, and what the copy holds of it."""

    detail: dict[str, Any]
    copies: list[StoredCopy]
    rows: list[dict[str, Any]]


async def _fetch(ctx: _Poll, info: dict[str, Any], gate: asyncio.Semaphore) -> _Fetched:
    rid = info["relationship"]
    async with gate:
        detail = await ctx.client.relationship(rid)
        copies = ctx.state.copies(rid)
        rows = await _rows(ctx.client, rid, copies[-1].seq if copies else -1)
    return _Fetched(detail, copies, rows)


def _nodes(fetched: list[_Fetched], size: int) -> set[Node]:
    """Every tree node the inclusion proofs of these records read; each row keeps its own (``plan``)."""
    nodes: set[Node] = set()
    for f in fetched:
        for row in f.rows:
            index = row.get("index")
            if isinstance(index, int) and 0 <= index < size:
                row["plan"] = inclusion_proof_plan(index, size)
                nodes.update(row["plan"])
    return nodes


# --- the log ---------------------------------------------------------------


async def _checkpoint(ctx: _Poll, policy: Policy | None) -> tuple[SignedCheckpoint, list[Detection]]:
    """The server's checkpoint, verified (steps 1 and 2), and any detection that did not stop the poll."""
    raw = await ctx.client.checkpoint()
    try:
        checkpoint = open_checkpoint(raw, ctx.log_key)
    except (SignatureError, MalformedInput) as exc:
        raise Detection("bad_checkpoint_signature", f"the log's checkpoint does not verify: {exc}",
                        {"checkpoint": raw.decode(errors="replace")}) from None
    if policy is not None:
        try:
            require_quorum(policy, checkpoint.note)
        except SignatureError as exc:
            raise Detection("unwitnessed_checkpoint", str(exc), {"checkpoint": raw.decode()}) from None
    previous_note = ctx.state.latest_checkpoint()
    if previous_note is None:
        return checkpoint, []
    previous = open_checkpoint(previous_note, ctx.log_key)
    evidence: dict[str, Any] = {"earlier_checkpoint": previous_note.decode(), "later_checkpoint": raw.decode()}
    if checkpoint.size < previous.size:
        raise Detection("rollback", f"the log went back from size {previous.size} to {checkpoint.size}", evidence)
    served: list[str] | None = None
    try:
        served = (await ctx.client.consistency(previous.size, checkpoint.size))["hashes"]
        hashes = [base64.b64decode(h, validate=True) for h in served]  # type: ignore[union-attr]
        verify_consistency(previous.size, checkpoint.size, previous.root_hash, checkpoint.root_hash, hashes)
        return checkpoint, []
    except (ProofError, MalformedInput, KeyError, TypeError, ValueError) as exc:
        evidence["served_proof"] = served
        failure = str(exc)
    except PacspaceError as exc:  # the server answered an error instead of a proof
        if isinstance(exc, Unreachable):
            raise
        evidence["served_proof"] = None
        failure = f"the server did not serve a proof: {exc}"
    return checkpoint, [await _recheck_from_tiles(ctx, previous, checkpoint, evidence, failure)]


async def _recheck_from_tiles(
    ctx: _Poll, previous: SignedCheckpoint, checkpoint: SignedCheckpoint, evidence: dict[str, Any], failure: str
) -> Detection:
    """After a consistency proof that did not verify: a fork only with proof, else a bad proof.

    Raises Detection inconsistent_checkpoints if the log's own hashes prove a
    fork, or bad_proof if they cannot be had or do not lead to the newer root
    (nothing is stored then). Returns a bad_proof detection for the poll to
    report if the tiles prove the two checkpoints consistent: the log is sound,
    only the proof served was wrong.
    """
    old, size = previous.size, checkpoint.size
    path: list[bytes] | None = []
    if 0 < old < size:
        reader = TileReader(ctx.client, size)
        try:
            nodes = consistency_proof_plan(old, size)
            if old & (old - 1) == 0:
                nodes.append((old.bit_length() - 1, 0))
            await reader.fetch(nodes)
            path = list(consistency_path(old, size, reader))
        except PacspaceError:
            path = None
    if path is not None and proves_fork(old, size, previous.root_hash, checkpoint.root_hash, path):
        raise Detection(
            "inconsistent_checkpoints",
            f"the log signed size {old} and size {size} with roots no append-only tree has: a fork "
            f"(check it offline: pacspace evidence verify FILE)",
            {"format": FORK_FORMAT, **evidence, "consistency_path": [_b64(h) for h in path]},
        )
    message = (f"the server's consistency proof from size {old} to {size} does not verify ({failure}); "
               "this proves nothing about the log")
    if path is not None and _consistent(old, size, previous.root_hash, checkpoint.root_hash, path):
        return Detection("bad_proof", message + ", and the log's tiles prove the two checkpoints consistent", evidence)
    raise Detection("bad_proof", message + "; nothing is stored, the next poll tries again", evidence)


def _consistent(old: int, size: int, old_root: bytes, root: bytes, path: list[bytes]) -> bool:
    if old == size:
        return old_root == root
    try:
        proof = path[1:] if old & (old - 1) == 0 else path
        verify_consistency(old, size, old_root, root, proof)
    except ProofError:
        return False
    return True


# --- one relationship -------------------------------------------------------


async def _follow(
    ctx: _Poll, checkpoint: SignedCheckpoint, info: dict[str, Any], me: str, out: RelationshipOutcome,
    fetched: _Fetched, tiles: TileReader | None,
) -> None:
    """Verify and store one relationship's new records; raises Detection at the first record that fails."""
    rid = out.relationship
    known = ctx.state.relationship(rid)
    detail, copies, rows = fetched.detail, fetched.copies, fetched.rows
    try:
        provider = PublicKeys.from_json({k: detail["provider_keys"][k] for k in ("x25519", "ed25519")})
    except (KeyUnusable, KeyError, TypeError):
        raise Detection("key_mismatch", f"{rid}: the server relays no usable keys for the provider",
                        {"relationship": rid, "relayed": detail.get("provider_keys")}) from None
    ledger, head = _replay(copies)
    followed: Followed | None = None
    if known is None:
        if not rows:
            out.followed = False  # its genesis is not in the log yet
            return
        if info.get("customer") == me and not _accepted_by_me(ctx, rid, rows[0], detail):
            out.followed = False
            out.note = (f"{rid} is listed as accepted, but not by your signature: check it and run "
                        f"`pacspace relationship accept {rid}` to follow it")
            return
        try:
            secret = unwrap_secret(base64.b64decode(detail["wrap"] or ""), ctx.home.keys(), rid, 0)
        except (KeyUnusable, ValueError) as exc:
            raise Detection("key_mismatch", f"{rid}: {exc}", {"relationship": rid}) from None
        followed = known = Followed(rid, info["provider"], info["customer"], provider.fingerprint(), secret)
    elif not fingerprint_matches(provider.fingerprint(), known.provider_fingerprint):
        raise Detection(
            "key_mismatch",
            f"{rid}: the server now relays provider keys {provider.fingerprint()}, not the "
            f"{known.provider_fingerprint} verified before",
            {"relationship": rid, "relayed": detail["provider_keys"]},
        )
    rkeys = RelationshipKeys(known.secret)
    new_copies: list[StoredCopy] = []
    new_findings: list[StoredFinding] = []
    try:
        for n, row in enumerate(rows):
            copy, record = await _verify(ctx, rid, row, rkeys, provider, checkpoint, tiles)
            try:
                head = check_next(head, record)
            except ChainError as exc:
                raise Detection("chain_broken", f"{rid}: {exc}", _record_evidence(rid, row, checkpoint), rid, copy.seq) from None
            if record.seq == 0:
                _check_genesis(record, rid, info, provider, ctx.home, me)
            for finding in ledger.add(record):
                new_findings.append(_save_finding(ctx, rid, finding, copy, rkeys, provider, checkpoint))
            new_copies.append(copy)
            if ctx.progress and (n % 100 == 0 or n + 1 == len(rows)):
                ctx.progress(rid, n + 1, len(rows))
    finally:
        # What verified before a failure is kept: the copy stops just before the record that failed.
        if new_copies:
            ctx.state.save_relationship(followed, new_copies, new_findings)
            out.new_records = len(new_copies)
            out.findings = new_findings


def _replay(copies: list[StoredCopy]) -> tuple[Ledger, ChainHead | None]:
    """The rules' view and the chain head of what the copy holds (all of it verified before)."""
    ledger = Ledger()
    for c in copies:
        ledger.add(Opened(c.seq, decode_body(c.body), c.body, c.signature))
    if not copies:
        return ledger, None
    return ledger, ChainHead(copies[-1].relationship, copies[-1].seq + 1, body_hash(copies[-1].body))


async def _rows(client: PacspaceClient, rid: str, after: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        page = await client.records(rid, after, PAGE)
        rows += page
        if len(page) < PAGE:
            return rows
        after = page[-1]["seq"]


def _accepted_by_me(ctx: _Poll, rid: str, first: dict[str, Any], detail: dict[str, Any]) -> bool:
    """Whether the server's acceptance of this relationship is this party's signature over the genesis it serves."""
    signature = detail.get("acceptance")
    if detail.get("state") != "accepted" or not signature or int(first.get("seq", -1)) != 0:
        return False
    try:
        entry = public_entry(base64.b64decode(first["tag"]), base64.b64decode(first["ciphertext"]))
        return acceptance_valid(ctx.home.keys().ed25519.public_key(), rid, entry, base64.b64decode(signature))
    except (ValueError, KeyError, TypeError):
        return False


def _record_evidence(rid: str, row: dict[str, Any], checkpoint: SignedCheckpoint) -> dict[str, Any]:
    return {"relationship": rid, "seq": row.get("seq"), "index": row.get("index"), "tag": row.get("tag"),
            "ciphertext": row.get("ciphertext"), "checkpoint": checkpoint.format().decode()}


def _classify(exc: SealError) -> str:
    if isinstance(exc, TagMismatch):
        return "bad_tag"
    if isinstance(exc, ProviderSignatureError):
        return "bad_signature"
    return "bad_ciphertext"


async def _verify(
    ctx: _Poll,
    rid: str,
    row: dict[str, Any],
    rkeys: RelationshipKeys,
    provider: PublicKeys,
    checkpoint: SignedCheckpoint,
    tiles: TileReader | None,
) -> tuple[StoredCopy, Opened]:
    evidence = _record_evidence(rid, row, checkpoint)
    try:
        seq, index = int(row["seq"]), int(row["index"])
        tag, blob = base64.b64decode(row["tag"], validate=True), base64.b64decode(row["ciphertext"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise Detection("inclusion_failed", f"{rid}: the server served a malformed record", evidence, rid) from None
    entry = public_entry(tag, blob)
    if not 0 <= index < checkpoint.size:
        raise Detection("inclusion_failed", f"{rid} seq {seq}: index {index} is beyond the checkpoint", evidence, rid, seq)
    path = _path_from_tiles(tiles, index, row.get("plan"), checkpoint, leaf_hash(entry))
    if path is None:
        proof = await ctx.client.inclusion(index, checkpoint.size)
        try:
            path = [base64.b64decode(h, validate=True) for h in proof["hashes"]]
            verify_inclusion(index, checkpoint.size, leaf_hash(entry), path, checkpoint.root_hash)
        except (ProofError, KeyError, TypeError, ValueError) as exc:
            evidence["inclusion_proof"] = proof.get("hashes") if isinstance(proof, dict) else None
            raise Detection(
                "inclusion_failed",
                f"{rid} seq {seq}: the record is not in the log at index {index} ({exc}); "
                "a ciphertext that does not match the logged ct_hash fails here too",
                evidence, rid, seq,
            ) from None
        if tiles is not None and not ctx.tile_detections:
            ctx.tile_detections.append(Detection(
                "bad_proof", f"the log's tiles give a wrong inclusion proof for index {index}, its proof endpoint a "
                "right one; this proves nothing about the log, but other tlog clients read those tiles",
                {"index": index, "checkpoint": checkpoint.format().decode()}, seq=index))
    try:
        record = open_record(seq, tag, blob, rkeys, provider.signing_key())
    except SealError as exc:
        raise Detection(_classify(exc), f"{rid} seq {seq}: {exc}", evidence, rid, seq) from None
    copy = StoredCopy(rid, seq, index, tag, blob, record.encoded, record.signature, checkpoint.size, b"".join(path))
    return copy, record


def _path_from_tiles(
    tiles: TileReader | None, index: int, plan: list[Node] | None, checkpoint: SignedCheckpoint, leaf: bytes
) -> list[bytes] | None:
    """The inclusion path computed from the log's tiles, if it leads to the signed root; else None."""
    if tiles is None or plan is None:
        return None
    try:
        path = list(fold_inclusion_proof(index, checkpoint.size, tiles.read_hashes(plan)))
        verify_inclusion(index, checkpoint.size, leaf, path, checkpoint.root_hash)
    except (PacspaceError, KeyError):
        return None
    tiles.proven(plan)
    return path


def _check_genesis(record: Opened, rid: str, info: dict[str, Any], provider: PublicKeys, home: Home, me: str) -> None:
    body = record.body
    evidence = {"relationship": rid, "genesis": record.encoded.decode()}
    if not isinstance(body, Genesis) or body.common.relationship != rid:
        raise Detection("chain_broken", f"{rid}: seq 0 is not this relationship's genesis record", evidence, rid, 0)
    if (body.provider.name, body.customer.name) != (info["provider"], info["customer"]):
        raise Detection("key_mismatch", f"{rid}: the genesis names other parties than the server reports", evidence, rid, 0)
    relayed = provider.to_json()
    if (body.provider.x25519, body.provider.ed25519) != (relayed["x25519"], relayed["ed25519"]):
        raise Detection("key_mismatch", f"{rid}: the genesis names other provider keys than the server relays",
                        evidence, rid, 0)
    named = {body.provider.name: body.provider, body.customer.name: body.customer}.get(me)
    ours = home.keys().public.to_json()
    if named is None or (named.x25519, named.ed25519) != (ours["x25519"], ours["ed25519"]):
        raise Detection("key_mismatch", f"{rid}: the genesis record does not name your keys", evidence, rid, 0)


# --- evidence -----------------------------------------------------------------


def _note(ctx: _Poll, found: Detection) -> None:
    """Save a detection's evidence the first time it is seen; later polls only count it."""
    earlier = ctx.state.detection(found.relationship, found.kind, found.seq)
    found.evidence_path = earlier.evidence if earlier is not None else save_evidence(ctx.home, found)
    ctx.state.note_detection(found.relationship, found.kind, found.seq, str(found), found.evidence_path, ctx.now)


def _save_finding(
    ctx: _Poll, rid: str, finding: Finding, copy: StoredCopy, rkeys: RelationshipKeys, provider: PublicKeys,
    checkpoint: SignedCheckpoint,
) -> StoredFinding:
    """A finding's evidence: the record as logged, its own key (it opens this record only), the provider's key."""
    evidence = {
        **finding.to_json(),
        "relationship": rid,
        "index": copy.index,
        "tag": _b64(copy.tag),
        "ciphertext": _b64(copy.blob),
        "record_key": _b64(rkeys.record_key(copy.seq)),
        "body": copy.body.decode(),
        "provider_ed25519": _b64(provider.ed25519),
        "checkpoint": checkpoint.format().decode(),
        "inclusion_proof": [_b64(copy.proof[i : i + 32]) for i in range(0, len(copy.proof), 32)],
    }
    path = _write_evidence(ctx.home, f"finding-{finding.kind}", evidence)
    return StoredFinding(rid, finding.seq, finding.kind, finding.period, finding.message, finding.fix, path, ctx.now)


def save_evidence(home: Home, detection: Detection) -> str:
    """Write the evidence of a detection to ``<home>/evidence/<time>-<kind>.json``; returns the path."""
    extra = {"relationship": detection.relationship} if detection.relationship else {}
    return _write_evidence(home, detection.kind, {"kind": detection.kind, "message": str(detection), **extra,
                                                  **detection.evidence})


def _write_evidence(home: Home, name: str, content: dict[str, Any]) -> str:
    folder = home.path / "evidence"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1000):
        path = folder / f"{stamp}-{name}{'' if n == 0 else f'-{n}'}.json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(content, indent=1))
        return str(path)
    raise PacspaceError(f"cannot name a new evidence file in {folder}")
