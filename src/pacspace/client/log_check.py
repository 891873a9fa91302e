"""The monitor's check of the log itself: the checkpoint's signature, the witnesses' quorum, and its consistency
with the last checkpoint verified, with a fork reported only with proof.

1. The checkpoint must be signed by the pinned log key (``bad_checkpoint_signature``)
   and, with a policy, carry its witnesses' quorum (``unwitnessed_checkpoint``).
2. It may not be smaller than the last one verified (``rollback``).
3. The server's consistency proof must verify. If it does not, or the server
   serves none, the monitor computes one from the log's tiles: hashes that lead
   to the newer signed root are the log's own, so if they lead to another root
   for the older size, the log forked (``inconsistent_checkpoints``, with the
   path as evidence anyone can check offline); if they lead to the older root,
   the log is sound and only the proof was wrong (``bad_proof``, and the poll
   goes on); if they lead to no signed root, nothing is proven either way
   (``bad_proof``, and nothing is stored). Tiles the server cannot serve prove
   nothing: that is an error, not a detection.
"""

from __future__ import annotations

import base64
from typing import Any

from ..checkpoint import SignedCheckpoint, open_checkpoint
from ..errors import MalformedInput, PacspaceError, ProofError, SignatureError
from ..merkle import consistency_path, consistency_proof_plan, proves_fork, verify_consistency
from ..note import Ed25519Verifier
from ..policy import Policy, require_quorum
from .detections import Detection, b64
from .evidence import FORK_FORMAT
from .http import PacspaceClient
from .tile_reader import TileReader


async def verified_checkpoint(
    client: PacspaceClient, previous_note: bytes | None, log_key: Ed25519Verifier, policy: Policy | None
) -> tuple[SignedCheckpoint, list[Detection]]:
    """The server's checkpoint, verified, and the detections that did not stop the poll; raises Detection when the
    log cannot be trusted, and an error when the server would not say enough to tell."""
    raw = await client.checkpoint()
    try:
        checkpoint = open_checkpoint(raw, log_key)
    except (SignatureError, MalformedInput) as exc:
        raise Detection("bad_checkpoint_signature", f"the log's checkpoint does not verify: {exc}",
                        {"checkpoint": raw.decode(errors="replace")}) from None
    if policy is not None:
        try:
            require_quorum(policy, checkpoint.note)
        except SignatureError as exc:
            raise Detection("unwitnessed_checkpoint", str(exc), {"checkpoint": raw.decode()}, seq=checkpoint.size) from None
    if previous_note is None:
        return checkpoint, []
    previous = open_checkpoint(previous_note, log_key)
    evidence: dict[str, Any] = {"earlier_checkpoint": previous_note.decode(), "later_checkpoint": raw.decode()}
    if checkpoint.size < previous.size:
        raise Detection("rollback", f"the log went back from size {previous.size} to {checkpoint.size}", evidence,
                        seq=checkpoint.size)
    served: Any = None
    refused: PacspaceError | None = None
    try:
        served = (await client.consistency(previous.size, checkpoint.size))["hashes"]
        hashes = [base64.b64decode(h, validate=True) for h in served]
        verify_consistency(previous.size, checkpoint.size, previous.root_hash, checkpoint.root_hash, hashes)
        return checkpoint, []
    except (ProofError, MalformedInput, KeyError, TypeError, ValueError) as exc:
        failure = str(exc)
    except PacspaceError as exc:  # an error answer, not a proof: the tiles may still tell
        refused, failure = exc, f"the server served no proof: {exc}"
    evidence["served_proof"] = served
    found = await _recheck_from_tiles(client, previous, checkpoint, evidence, failure, refused)
    return checkpoint, [] if found is None else [found]


async def _recheck_from_tiles(
    client: PacspaceClient, previous: SignedCheckpoint, checkpoint: SignedCheckpoint, evidence: dict[str, Any],
    failure: str, refused: PacspaceError | None,
) -> Detection | None:
    """Step 3 after a proof that did not verify; returns the detection to report, or None if there is none."""
    old, size = previous.size, checkpoint.size
    path: list[bytes] | None = []
    if 0 < old < size:
        reader = TileReader(client, size)
        nodes = consistency_proof_plan(old, size)
        if old & (old - 1) == 0:
            nodes.append((old.bit_length() - 1, 0))
        try:
            await reader.fetch(nodes)
        except PacspaceError as exc:
            raise refused or exc from None  # nothing to judge the log by: an error that proves nothing
        try:
            path = list(consistency_path(old, size, reader))
        except PacspaceError:
            path = None
    if path is None:
        raise _unproven(old, size, failure, evidence)
    if proves_fork(old, size, previous.root_hash, checkpoint.root_hash, path):
        raise Detection(
            "inconsistent_checkpoints",
            f"the log signed size {old} and size {size} with roots no append-only tree has: a fork "
            "(check it offline: pacspace evidence verify FILE)",
            {"format": FORK_FORMAT, **evidence, "consistency_path": [b64(h) for h in path]}, seq=size,
        )
    if _consistent(old, size, previous.root_hash, checkpoint.root_hash, path):
        if refused is not None:
            return None  # the endpoint failed, the log's tiles proved the checkpoints consistent: nothing to report
        return Detection("bad_proof", f"the server's consistency proof from size {old} to {size} does not verify "
                         f"({failure}); the log's tiles prove the two checkpoints consistent, so this proves nothing "
                         "about the log", evidence, seq=size)
    raise _unproven(old, size, failure, evidence)


def _unproven(old: int, size: int, failure: str, evidence: dict[str, Any]) -> Detection:
    return Detection("bad_proof", f"neither the server's consistency proof from size {old} to {size} ({failure}) nor "
                     "its tiles lead to the signed roots: this proves nothing about the log; nothing is stored, the "
                     "next poll tries again", evidence, seq=size)


def _consistent(old: int, size: int, old_root: bytes, root: bytes, path: list[bytes]) -> bool:
    if old == size:
        return old_root == root
    try:
        proof = path[1:] if old & (old - 1) == 0 else path
        verify_consistency(old, size, old_root, root, proof)
    except ProofError:
        return False
    return True
