"""One relationship through one poll of the monitor: its new records fetched a page at a time, each verified,
and stored with the rules' view of the chain, page by page.

For each record after the ones held (docs/monitor.md, steps 3 to 9):
inclusion at the verified checkpoint (computed from the log's tiles, or from
its proof endpoint if the tiles do not lead to the signed root), tag =
HMAC(K_tag, seq), key commitment, decryption, the body's schema, the
provider's signature, seq/prev continuity, for seq 0 a genesis naming the
right parties and keys, and the protocol rules (records.rules).

A record that fails raises a Detection: nothing of it is stored and the copy
stops just before it; every page verified before it is kept. A record that
breaks a rule is stored as a finding, with its evidence. Nothing here reads
more than one page of one relationship at a time, or more of the copy than its
``Progress``: a relationship with a long history costs a poll nothing more
than a short one.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint import SignedCheckpoint
from ..errors import PacspaceError, ProofError
from ..keys import KeyUnusable, PublicKeys, fingerprint_matches, unwrap_secret
from ..merkle import Node, leaf_hash, verify_inclusion
from ..records.acceptance import acceptance_valid
from ..records.batchwire import MAX_SEQ
from ..records.body import Genesis, body_hash, decode_body
from ..records.chain import ChainError, ChainHead, check_next
from ..records.rules import Finding, Ledger
from ..records.seal import Opened, ProviderSignatureError, RelationshipKeys, SealError, TagMismatch, open_record, public_entry
from .detections import Detection, b64, write_evidence
from .home import Home
from .http import PacspaceClient, ServerError
from .opening import Opener
from .monitor_state import Followed, MonitorState, Progress, StoredCopy, StoredFinding
from .tile_reader import TileReader

PAGE = 1000  # records per request (the server's largest page)
MAX_FINDING_FILES = 1000  # per relationship: a flood of flagged records fills no disk


@dataclass
class Outcome:
    """What one poll did for one relationship."""

    relationship: str
    new_records: int = 0
    findings: list[StoredFinding] = field(default_factory=list)  # found in this poll
    detection: Detection | None = None
    error: PacspaceError | None = None
    followed: bool = True
    note: str | None = None  # something the party should know (why it is not followed, say)


@dataclass
class Poll:
    """What every step of one poll needs."""

    client: PacspaceClient
    home: Home
    state: MonitorState
    checkpoint: SignedCheckpoint
    me: str
    now: int
    tiles_wrong: int | None = None  # a record whose proof from the tiles did not lead to the signed root
    opener: Opener = field(default_factory=lambda: Opener(0))


@dataclass(frozen=True)
class Prepared:
    """One row of a page, decoded and opened ahead of its turn (opening.py)."""

    seq: int
    tag: bytes
    blob: bytes
    result: Opened | SealError


class Follower:
    """One relationship: ``start`` (its keys, how far the copy goes, the first page), then ``verify`` a page and
    ``next_page`` until ``done``."""

    def __init__(self, poll: Poll, info: dict[str, Any], listed: bool) -> None:
        self.poll = poll
        self.info = info
        self.rid = str(info["relationship"])
        self.listed = listed
        self.outcome = Outcome(self.rid)
        self.rows: list[dict[str, Any]] = []
        self.done = False
        self._new: Followed | None = None
        self._prepared: dict[int, Prepared] = {}

    async def start(self) -> None:
        """Everything before the first record: raises Detection for what is wrong with the relationship itself."""
        poll, rid = self.poll, self.rid
        try:
            detail = await poll.client.relationship(rid)
        except ServerError as exc:
            if not self.listed and exc.http_status == 404:
                raise Detection("relationship_hidden", f"{rid}: the server says it does not exist, but you accepted it "
                                "and your copy holds its records", {"relationship": rid}, rid) from None
            raise
        if not self.listed:
            self.outcome.note = f"{rid}: the server's list leaves out this relationship you follow; followed anyway"
        try:
            self.provider = PublicKeys.from_json({k: detail["provider_keys"][k] for k in ("x25519", "ed25519")})
        except (KeyUnusable, KeyError, TypeError):
            raise Detection("key_mismatch", f"{rid}: the server relays no usable keys for the provider",
                            {"relationship": rid, "relayed": detail.get("provider_keys")}, rid) from None
        known = poll.state.relationship(rid)
        progress = poll.state.progress(rid) if known is not None else None
        if known is not None and progress is None:
            progress = _rebuilt(poll.state, rid)  # a copy from before progress was kept: once
        self.ledger = Ledger.from_json(json.loads(progress.rules)) if progress else Ledger()
        self.head = ChainHead(rid, progress.next_seq, progress.head) if progress else None
        await self.next_page()
        if known is None:
            known = self._first_sight(detail)
            if known is None:
                return
        elif not fingerprint_matches(self.provider.fingerprint(), known.provider_fingerprint):
            raise Detection(
                "key_mismatch",
                f"{rid}: the server now relays provider keys {self.provider.fingerprint()}, not the "
                f"{known.provider_fingerprint} verified before",
                {"relationship": rid, "relayed": detail["provider_keys"]}, rid,
            )
        self.keys = RelationshipKeys(known.secret)

    def _first_sight(self, detail: dict[str, Any]) -> Followed | None:
        """A relationship the copy does not hold yet: followed if this party may (its acceptance, for a customer)."""
        rid = self.rid
        if not self.rows:
            self.outcome.followed, self.done = False, True  # its genesis is not in the log yet
            return None
        if self.info.get("customer") == self.poll.me and not self._accepted_by_me(detail):
            self.outcome.followed, self.done = False, True
            self.outcome.note = (f"{rid} is listed as accepted, but not by your signature: check it and run "
                                 f"`pacspace relationship accept {rid}` to follow it")
            return None
        try:
            secret = unwrap_secret(base64.b64decode(detail.get("wrap") or ""), self.poll.home.keys(), rid, 0)
        except (KeyUnusable, ValueError) as exc:
            raise Detection("key_mismatch", f"{rid}: {exc}", {"relationship": rid}, rid) from None
        self._new = Followed(rid, str(self.info["provider"]), str(self.info["customer"]), self.provider.fingerprint(),
                             secret)
        return self._new

    def _accepted_by_me(self, detail: dict[str, Any]) -> bool:
        """Whether the server's acceptance is this party's signature over the genesis it serves."""
        signature, first = detail.get("acceptance"), self.rows[0]
        if detail.get("state") != "accepted" or not signature or first.get("seq") != 0:
            return False
        try:
            entry = public_entry(base64.b64decode(first["tag"]), base64.b64decode(first["ciphertext"]))
            return acceptance_valid(self.poll.home.keys().ed25519.public_key(), self.rid, entry,
                                    base64.b64decode(signature))
        except (ValueError, KeyError, TypeError):
            return False

    async def next_page(self) -> None:
        after = self.head.next_seq - 1 if self.head is not None else -1
        page = await self.poll.client.records(self.rid, after, PAGE)
        if not isinstance(page, list):
            raise ServerError(200, "malformed", f"{self.rid}: the server's page of records is not a list")
        self.rows, self._prepared = page, {}

    async def open_page(self) -> None:
        """Open the page's records ahead of ``verify`` (in worker processes, if many). What it finds is kept
        beside the page, by row position, never in the rows: those are the server's JSON, with any members."""
        self._prepared = {}
        positions, items = [], []
        for i, row in enumerate(self.rows):
            if not (isinstance(row, dict) and isinstance(row.get("seq"), int) and 0 <= row["seq"] <= MAX_SEQ
                    and isinstance(row.get("tag"), str) and isinstance(row.get("ciphertext"), str)):
                continue  # verify finds what is wrong with it, in order
            try:
                tag, blob = base64.b64decode(row["tag"], validate=True), base64.b64decode(row["ciphertext"], validate=True)
            except ValueError:
                return  # a malformed row: verify finds it, in order
            positions.append(i)
            items.append((row["seq"], tag, blob))
        try:
            results = await self.poll.opener.open_all(self.keys, self.provider.ed25519, items)
        except (OSError, RuntimeError):  # the workers could not start or died: verify opens each record itself
            return
        self._prepared = {i: Prepared(seq, tag, blob, result)
                          for i, (seq, tag, blob), result in zip(positions, items, results)}

    def nodes(self, tiles: TileReader) -> set[Node]:
        """The tree nodes the page's inclusion proofs read."""
        size = self.poll.checkpoint.size
        return tiles.plan(row["index"] for row in self.rows
                          if isinstance(row, dict) and isinstance(row.get("index"), int) and 0 <= row["index"] < size)

    async def verify(self, tiles: TileReader | None) -> None:
        """Verify and store the current page; raises Detection at the first record that fails (what verified
        before it is stored), and leaves ``done`` set when nothing more is to come."""
        copies: list[StoredCopy] = []
        findings: list[StoredFinding] = []
        self.done = len(self.rows) < PAGE
        try:
            for i, row in enumerate(self.rows):
                copy, record = await self._verify(row, tiles, self._prepared.get(i))
                try:
                    self.head = check_next(self.head, record)
                except ChainError as exc:
                    raise Detection("chain_broken", f"{self.rid}: {exc}", _evidence(self.rid, row, self.poll.checkpoint),
                                    self.rid, copy.seq) from None
                if record.seq == 0:
                    self._check_genesis(record)
                for finding in self.ledger.add(record):
                    findings.append(self._save_finding(finding, copy))
                copies.append(copy)
        except BaseException:
            self.done = True
            raise
        finally:
            if copies and self.head is not None:
                progress = Progress(self.head.next_seq, self.head.head, json.dumps(self.ledger.to_json()))
                self.poll.state.save_relationship(self._new, copies, findings, progress, self.rid)
                self._new = None
                self.outcome.new_records += len(copies)
                self.outcome.findings += findings

    async def _verify(self, row: dict[str, Any], tiles: TileReader | None,
                      prepared: Prepared | None) -> tuple[StoredCopy, Opened]:
        rid, checkpoint = self.rid, self.poll.checkpoint
        try:
            seq, index = int(row["seq"]), int(row["index"])
            if not 0 <= seq <= MAX_SEQ:
                raise ValueError(seq)
            if prepared is not None and prepared.seq == seq:
                tag, blob = prepared.tag, prepared.blob
            else:
                prepared = None
                tag, blob = base64.b64decode(row["tag"], validate=True), base64.b64decode(row["ciphertext"], validate=True)
        except (KeyError, TypeError, ValueError):
            raise Detection("inclusion_failed", f"{rid}: the server served a malformed record",
                            _evidence(rid, row, checkpoint), rid) from None
        if not 0 <= index < checkpoint.size:
            raise Detection("inclusion_failed", f"{rid} seq {seq}: index {index} is beyond the checkpoint",
                            _evidence(rid, row, checkpoint), rid, seq)
        leaf = leaf_hash(public_entry(tag, blob))
        path = _path_from_tiles(tiles, index, checkpoint, leaf)
        if path is None:
            path = await self._path_from_endpoint(index, seq, leaf, _evidence(rid, row, checkpoint))
            if tiles is not None:
                self.poll.tiles_wrong = index
        try:
            opened = prepared.result if prepared is not None else open_record(seq, tag, blob, self.keys,
                                                                              self.provider.signing_key())
            if isinstance(opened, SealError):
                raise opened
            record = opened
        except SealError as exc:
            raise Detection(_classify(exc), f"{rid} seq {seq}: {exc}", _evidence(rid, row, checkpoint), rid, seq) from None
        return StoredCopy(rid, seq, index, tag, blob, record.encoded, record.signature, checkpoint.size, b"".join(path)), record

    async def _path_from_endpoint(self, index: int, seq: int, leaf: bytes, evidence: dict[str, Any]) -> list[bytes]:
        checkpoint = self.poll.checkpoint
        proof = await self.poll.client.inclusion(index, checkpoint.size)
        try:
            path = [base64.b64decode(h, validate=True) for h in proof["hashes"]]
            verify_inclusion(index, checkpoint.size, leaf, path, checkpoint.root_hash)
        except (ProofError, KeyError, TypeError, ValueError) as exc:
            evidence["inclusion_proof"] = proof.get("hashes") if isinstance(proof, dict) else None
            raise Detection(
                "inclusion_failed",
                f"{self.rid} seq {seq}: the record is not in the log at index {index} ({exc}); "
                "a ciphertext that does not match the logged ct_hash fails here too",
                evidence, self.rid, seq,
            ) from None
        return path

    def _check_genesis(self, record: Opened) -> None:
        body, rid, info = record.body, self.rid, self.info
        evidence = {"relationship": rid, "genesis": record.encoded.decode()}
        if not isinstance(body, Genesis) or body.common.relationship != rid:
            raise Detection("chain_broken", f"{rid}: seq 0 is not this relationship's genesis record", evidence, rid, 0)
        if (body.provider.name, body.customer.name) != (info["provider"], info["customer"]):
            raise Detection("key_mismatch", f"{rid}: the genesis names other parties than the server reports",
                            evidence, rid, 0)
        relayed = self.provider.to_json()
        if (body.provider.x25519, body.provider.ed25519) != (relayed["x25519"], relayed["ed25519"]):
            raise Detection("key_mismatch", f"{rid}: the genesis names other provider keys than the server relays",
                            evidence, rid, 0)
        named = {body.provider.name: body.provider, body.customer.name: body.customer}.get(self.poll.me)
        ours = self.poll.home.keys().public.to_json()
        if named is None or (named.x25519, named.ed25519) != (ours["x25519"], ours["ed25519"]):
            raise Detection("key_mismatch", f"{rid}: the genesis record does not name your keys", evidence, rid, 0)

    def _save_finding(self, finding: Finding, copy: StoredCopy) -> StoredFinding:
        """A finding's evidence: the record as logged, its own key (it opens this record only), the provider's key."""
        poll = self.poll
        if poll.state.finding_count(self.rid) >= MAX_FINDING_FILES:
            path = f"(not written: {self.rid} has more than {MAX_FINDING_FILES} findings; the record is in monitor.db)"
        else:
            path = write_evidence(poll.home, f"finding-{finding.kind}", {
                **finding.to_json(),
                "relationship": self.rid,
                "index": copy.index,
                "tag": b64(copy.tag),
                "ciphertext": b64(copy.blob),
                "record_key": b64(self.keys.record_key(copy.seq)),
                "body": copy.body.decode(),
                "provider_ed25519": b64(self.provider.ed25519),
                "checkpoint": poll.checkpoint.format().decode(),
                "inclusion_proof": [b64(copy.proof[i : i + 32]) for i in range(0, len(copy.proof), 32)],
            })
        return StoredFinding(self.rid, finding.seq, finding.kind, finding.period, finding.message, finding.fix, path,
                             poll.now)


def _rebuilt(state: MonitorState, rid: str) -> Progress | None:
    """The progress of a copy kept before progress was: replayed from its records (None if it holds none)."""
    ledger = Ledger()
    copies = state.copies(rid)
    for c in copies:
        ledger.add(Opened(c.seq, decode_body(c.body), c.body, c.signature))
    if not copies:
        return None
    return Progress(copies[-1].seq + 1, body_hash(copies[-1].body), json.dumps(ledger.to_json()))


def _path_from_tiles(tiles: TileReader | None, index: int, checkpoint: SignedCheckpoint, leaf: bytes) -> list[bytes] | None:
    """The inclusion path computed from the log's tiles, if it leads to the signed root; else None."""
    if tiles is None:
        return None
    try:
        return list(tiles.inclusion_path(index, leaf, checkpoint.root_hash))
    except (PacspaceError, KeyError):
        return None


def _evidence(rid: str, row: dict[str, Any], checkpoint: SignedCheckpoint) -> dict[str, Any]:
    return {"relationship": rid, "seq": row.get("seq"), "index": row.get("index"), "tag": row.get("tag"),
            "ciphertext": row.get("ciphertext"), "checkpoint": checkpoint.format().decode()}


def _classify(exc: SealError) -> str:
    if isinstance(exc, TagMismatch):
        return "bad_tag"
    if isinstance(exc, ProviderSignatureError):
        return "bad_signature"
    return "bad_ciphertext"
