"""C2SP tlog-witness: the add-checkpoint request, and the witness's decision. Pure: no I/O.

A witness keeps, per log origin, the latest checkpoint it cosigned. A request
carries the size the client believes the witness holds (``old``), a
consistency proof from that size, and a signed checkpoint. The decision
follows the spec's order: unknown origin 404; no valid log signature 403;
old > new 400; old not the witness's size 409 (with the size); same size
but another root 409; a proof that does not verify 422; otherwise cosign.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .checkpoint import Checkpoint, parse_checkpoint_text
from .errors import MalformedInput, PacspaceError, ProofError
from .merkle import HASH_SIZE, verify_consistency
from .note import Ed25519Verifier, Note, NoteSignature, NoteSigner, b64decode_strict, open_note, parse_note, parse_vkey

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
    if latest is not None and checkpoint.size == latest.size:
        if checkpoint.root_hash != latest.root_hash:
            raise WitnessRefusal(409, "same size, different root: the log forked")
        return
    if request.old == 0:
        if request.proof:
            raise WitnessRefusal(422, "the consistency proof from size 0 must be empty")
        return
    try:
        verify_consistency(request.old, checkpoint.size, latest.root_hash, checkpoint.root_hash, request.proof)  # type: ignore[union-attr]
    except ProofError as exc:
        raise WitnessRefusal(422, f"the consistency proof does not verify: {exc}") from None


def cosignature(signer: NoteSigner, request: AddCheckpoint, timestamp: int) -> NoteSignature:
    """The witness's tlog-cosignature/v1 over the checkpoint body."""
    return signer.cosign(request.note.text, timestamp)


def parse_log_policy(text: str) -> dict[str, Ed25519Verifier]:
    """The ``log <vkey> [url]`` lines of a C2SP tlog-policy file: the logs this witness witnesses, by origin."""
    logs: dict[str, Ed25519Verifier] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] == "log":
            if len(words) not in (2, 3):
                raise MalformedInput(f"policy line {number}: 'log <vkey> [url]'")
            verifier = parse_vkey(words[1])
            if not isinstance(verifier, Ed25519Verifier):
                raise MalformedInput(f"policy line {number}: a log key is an Ed25519 (type 0x01) vkey")
            logs[verifier.name] = verifier
        elif words[0] not in ("witness", "group", "quorum"):
            raise MalformedInput(f"policy line {number}: unknown keyword {words[0]!r}")
    if not logs:
        raise MalformedInput("the policy names no log")
    return logs
