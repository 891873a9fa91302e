"""C2SP tlog-witness: the add-checkpoint request, and the witness's decision. Pure: no I/O.

A witness keeps, per log origin, the latest checkpoint it cosigned. A request
carries the size the client believes the witness holds (``old``), a
consistency proof from that size, and a signed checkpoint. The decision
follows the spec's order (C2SP tlog-witness at C2SP/C2SP@95978ca): unknown
origin 404; no valid log signature 403; old > new 400; old not the witness's
size 409 (with the size); a size-0 checkpoint whose root is not the empty
tree's 422; a proof that does not verify 422, which covers a same-size
checkpoint with another root and proof lines between equal sizes; otherwise
cosign.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .checkpoint import Checkpoint, parse_checkpoint_text
from .errors import MalformedInput, PacspaceError, ProofError
from .merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from .note import CosignatureVerifier, Ed25519Verifier, Note, NoteSignature, NoteSigner, b64decode_strict, open_note, parse_note
from .policy import parse_policy

MAX_PROOF_LINES = 63  # C2SP tlog-witness: clients MUST NOT send more
MAX_REQUEST = 64 * 1024
_OLD = re.compile(r"old (0|[1-9][0-9]{0,19})")


@dataclass(frozen=True)
class AddCheckpoint:
    old: int
    proof: tuple[bytes, ...]
    note: Note
    checkpoint: Checkpoint


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """``old <size>\\n``, zero to 63 base64 proof lines, an empty line, then the signed checkpoint."""
    if len(body) > MAX_REQUEST:
        raise MalformedInput("request too large")
    head, sep, rest = body.partition(b"\n\n")
    if not sep:
        raise MalformedInput("no empty line before the checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise MalformedInput("the old size and proof lines must be ASCII") from None
    match = _OLD.fullmatch(lines[0])
    if match is None:
        raise MalformedInput("the first line must be 'old <size>'")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise MalformedInput(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = tuple(b64decode_strict(line) for line in lines[1:])
    if any(len(h) != HASH_SIZE for h in proof):
        raise MalformedInput("consistency proof hashes are 32 bytes")
    note = parse_note(rest)
    return AddCheckpoint(int(match.group(1)), proof, note, parse_checkpoint_text(note.text))


@dataclass(frozen=True)
class Latest:
    """What the witness holds for one origin."""

    size: int
    root_hash: bytes
    note: bytes


class WitnessRefusal(PacspaceError):
    """An add-checkpoint the witness must not cosign; ``http_status`` is the spec's answer."""

    code = "refused"

    def __init__(self, status: int, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.http_status = status
        self.size = size


def decide(request: AddCheckpoint, log_keys: dict[str, Ed25519Verifier], latest: Latest | None) -> None:
    """Raise WitnessRefusal unless ``request`` may be cosigned given what the witness holds for the origin."""
    checkpoint = request.checkpoint
    key = log_keys.get(checkpoint.origin)
    if key is None:
        raise WitnessRefusal(404, f"unknown log origin {checkpoint.origin!r}")
    try:
        open_note(request.note, [key])
    except PacspaceError:
        raise WitnessRefusal(403, "the checkpoint carries no valid signature by the log's key") from None
    if request.old > checkpoint.size:
        raise WitnessRefusal(400, f"old size {request.old} is larger than the checkpoint's size {checkpoint.size}")
    held = 0 if latest is None else latest.size
    if request.old != held:
        raise WitnessRefusal(409, f"the witness holds size {held}, not {request.old}", size=held)
    if checkpoint.size == 0 and checkpoint.root_hash != EMPTY_ROOT:
        raise WitnessRefusal(422, "a checkpoint of size 0 must have the empty tree's root hash")
    old_root = EMPTY_ROOT if latest is None or request.old == 0 else latest.root_hash
    try:
        # Also refuses proof lines between equal sizes, and a same-size checkpoint with another root.
        verify_consistency(request.old, checkpoint.size, old_root, checkpoint.root_hash, request.proof)
    except ProofError as exc:
        raise WitnessRefusal(422, f"not consistent with the checkpoint the witness holds: {exc}") from None


def cosignature(signer: NoteSigner, request: AddCheckpoint, timestamp: int) -> NoteSignature:
    """The witness's tlog-cosignature/v1 over the checkpoint body."""
    return signer.cosign(request.note.text, timestamp)


def monitoring_note(note: Note, log_key: Ed25519Verifier, cosignature: NoteSignature) -> bytes:
    """What the monitoring endpoint serves: the checkpoint with the log's signatures and the witness's cosignature.

    C2SP tlog-witness: the cosignature add-checkpoint returned, and the log key's
    signature the witness verified. Other lines a log sent (other witnesses'
    cosignatures, say) are not the witness's to vouch for and are dropped; the
    log's own timestamp cosignature (same key, type 0x04) is kept if it verifies.
    """
    log_time = CosignatureVerifier(log_key.name, log_key.public_key)
    kept = [
        s for s in note.signatures
        if ((s.name, s.key_id) == (log_key.name, log_key.key_id) and log_key.verify(note.text, s.signature))
        or ((s.name, s.key_id) == (log_time.name, log_time.key_id) and log_time.verify(note.text, s.signature))
    ]
    return Note(note.text, ()).with_signatures(*kept, cosignature).format()


def carries_cosignature(note: bytes, signer: NoteSigner) -> bool:
    """Whether a stored note holds a line by the witness's key (stores written before the monitoring endpoint do not)."""
    own = (signer.cosignature_verifier.name, signer.cosignature_verifier.key_id)
    return any((s.name, s.key_id) == own for s in parse_note(note).signatures)


def parse_log_policy(text: str) -> dict[str, Ed25519Verifier]:
    """The ``log <vkey> [url]`` lines of a C2SP tlog-policy file: the logs this witness witnesses, by origin.

    The whole file is checked as any policy is (no duplicate logs or witnesses), so a
    file one party refuses is refused everywhere.
    """
    logs = parse_policy(text).logs
    if not logs:
        raise MalformedInput("the policy names no log")
    return logs
