"""C2SP tlog-checkpoint bodies and signed checkpoints. Pure.

A checkpoint body is three lines: origin, decimal tree size, base64 root hash.
pacspace writes no extension lines and accepts none: a checkpoint it cannot
re-format byte for byte is rejected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import MalformedNote, SignatureError
from .merkle import HASH_SIZE, Hash
from .note import (
    CosignatureVerifier,
    Ed25519Verifier,
    Note,
    NoteSigner,
    b64decode_strict,
    b64encode,
    check_key_name,
    open_note,
    parse_note,
)

_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: Hash

    def __post_init__(self) -> None:
        check_origin(self.origin)
        if not 0 <= self.size < 1 << 64:
            raise MalformedNote(f"tree size {self.size} is out of range")
        if len(self.root_hash) != HASH_SIZE:
            raise MalformedNote("root hash is not 32 bytes")

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{b64encode(self.root_hash)}\n"


def check_origin(origin: str) -> None:
    """An origin is a key name (no spaces, no '+'): the checkpoint's key name is its origin."""
    check_key_name(origin)


def parse_checkpoint_text(text: str) -> Checkpoint:
    lines = text.split("\n")
    if len(lines) != 4 or lines[3] != "":
        raise MalformedNote("checkpoint body must be exactly origin, size and root lines")
    origin, size, root = lines[0], lines[1], lines[2]
    if not _SIZE.fullmatch(size):
        raise MalformedNote(f"checkpoint size {size!r} is not a canonical decimal")
    checkpoint = Checkpoint(origin, int(size), Hash(b64decode_strict(root)))
    if checkpoint.text() != text:
        raise MalformedNote("checkpoint is not in canonical form")
    return checkpoint


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint with its note signatures; ``timestamp`` is the log's own cosigned time."""

    checkpoint: Checkpoint
    note: Note
    timestamp: int

    def format(self) -> bytes:
        return self.note.format()

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root_hash(self) -> Hash:
        return self.checkpoint.root_hash


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner, timestamp: int) -> SignedCheckpoint:
    """Sign with the log key (Ed25519, key name = origin) and add the log's timestamped cosignature."""
    if signer.name != checkpoint.origin:
        raise MalformedNote("the log key's name must be the checkpoint origin")
    text = checkpoint.text()
    note = Note(text, (signer.sign(text), signer.cosign(text, timestamp)))
    return SignedCheckpoint(checkpoint, note, timestamp)


def open_checkpoint(data: bytes, log_key: Ed25519Verifier, *, require_timestamp: bool = True) -> SignedCheckpoint:
    """Parse and verify a signed checkpoint against the log's verifier key.

    The origin must equal the key name. The log's own cosignature (type 0x04,
    same key) supplies the signed time. pacspace logs sign one on every
    checkpoint, so its absence is a SignatureError unless ``require_timestamp``
    is False (a foreign log), in which case the timestamp is 0.
    """
    note = parse_note(data)
    checkpoint = parse_checkpoint_text(note.text)
    if checkpoint.origin != log_key.name:
        raise SignatureError(f"checkpoint origin {checkpoint.origin!r} is not the log's {log_key.name!r}")
    open_note(note, [log_key])
    cosigner = CosignatureVerifier(log_key.name, log_key.public_key)
    timestamp = 0
    for sig in note.signatures:
        if (sig.name, sig.key_id) == (cosigner.name, cosigner.key_id):
            signed = cosigner.timestamp(note.text, sig.signature)
            if signed is None:
                raise SignatureError("the log's timestamp cosignature does not verify")
            timestamp = signed
            break
    else:
        if require_timestamp:
            raise SignatureError("the checkpoint carries no timestamp cosignature by the log")
    return SignedCheckpoint(checkpoint, note, timestamp)
