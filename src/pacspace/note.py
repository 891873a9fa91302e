"""C2SP signed-note and tlog-cosignature/v1: key IDs, verifier keys, signing and opening notes. Pure.

A note is text ending in a newline, an empty line, then signature lines
``— <name> <base64(key ID || signature)>``. Ed25519 note signatures are type
0x01; timestamped Ed25519 cosignatures are type 0x04, over
``cosignature/v1\\ntime <t>\\n`` + the note text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from typing import NewType, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import MalformedNote, SignatureError

KeyID = NewType("KeyID", bytes)

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
# C2SP signed-note: verifiers must accept at least 16 signatures; we allow more
# headroom for witnesses, and bound it so a note cannot be arbitrarily large.
MAX_NOTE_SIGNATURES = 100
MAX_NOTE_SIZE = 1 << 16
# C2SP tlog-cosignature: the timestamp must not exceed 2**63 - 1.
MAX_TIMESTAMP = (1 << 63) - 1
_DASH = "\u2014 "
_COSIGN_HEADER = "cosignature/v1\n"


def key_id(name: str, alg: int, public_key: bytes) -> KeyID:
    """SHA-256(name || 0x0A || alg || public key)[:4] (C2SP signed-note, tlog-cosignature)."""
    return KeyID(hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()[:4])


def check_key_name(name: str) -> None:
    """C2SP signed-note: key names are non-empty and contain no Unicode spaces or '+'."""
    if not name or "+" in name or any(c.isspace() for c in name) or any(ord(c) < 0x20 for c in name):
        raise MalformedNote(f"invalid key name {name!r}: must be non-empty, without spaces or '+'")


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: str) -> bytes:
    """Standard padded base64 that re-encodes to exactly ``text``; raises MalformedNote otherwise."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise MalformedNote("invalid base64") from None
    if b64encode(data) != text:
        raise MalformedNote("non-canonical base64")
    return data


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: KeyID
    signature: bytes

    def line(self) -> str:
        return f"{_DASH}{self.name} {b64encode(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A note's text (ending in a newline) and its signatures, in order."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        _check_text(self.text)

    def format(self) -> bytes:
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode("utf-8")

    def with_signatures(self, *extra: NoteSignature) -> Note:
        """Add signatures; one from a key (name and key ID) the note already carries replaces that line.

        A note never carries two lines from one key: strict verifiers reject such a note.
        """
        lines = list(self.signatures)
        for sig in extra:
            same = next((i for i, s in enumerate(lines) if (s.name, s.key_id) == (sig.name, sig.key_id)), None)
            if same is None:
                lines.append(sig)
            else:
                lines[same] = sig
        return Note(self.text, tuple(lines))


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise MalformedNote("note text must end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise MalformedNote("note text contains a control character")


def parse_note(data: bytes) -> Note:
    """Parse a signed note strictly; the result re-formats to exactly ``data``."""
    if len(data) > MAX_NOTE_SIZE:
        raise MalformedNote(f"note exceeds {MAX_NOTE_SIZE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedNote("note is not valid UTF-8") from None
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise MalformedNote("note contains a control character")
    split = text.rfind("\n\n")
    if split < 0:
        raise MalformedNote("note has no signature block")
    body, sig_block = text[: split + 1], text[split + 2 :]
    if not sig_block.endswith("\n"):
        raise MalformedNote("note does not end with a newline")
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_NOTE_SIGNATURES:
        raise MalformedNote(f"note has more than {MAX_NOTE_SIGNATURES} signatures")
    signatures = tuple(_parse_signature_line(line) for line in lines)
    note = Note(body, signatures)
    if note.format() != data:
        raise MalformedNote("note is not in canonical form")
    return note


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(_DASH):
        raise MalformedNote("signature line does not start with an em dash and a space")
    parts = line[len(_DASH) :].split(" ")
    if len(parts) != 2:
        raise MalformedNote("signature line is not '— <name> <signature>'")
    name, sig64 = parts
    check_key_name(name)
    raw = b64decode_strict(sig64)
    if len(raw) < 5:
        raise MalformedNote("signature is too short")
    return NoteSignature(name, KeyID(raw[:4]), raw[4:])


class Verifier(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> KeyID: ...

    def verify(self, text: str, signature: bytes) -> bool: ...


@dataclass(frozen=True)
class Ed25519Verifier:
    """Verifies type 0x01 note signatures."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public_key) != 32:
            raise MalformedNote("an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> KeyID:
        return key_id(self.name, ALG_ED25519, self.public_key)

    def vkey(self) -> str:
        """The verifier key string ``<name>+<hex key ID>+<base64(0x01 || key)>``."""
        return f"{self.name}+{self.key_id.hex()}+{b64encode(bytes([ALG_ED25519]) + self.public_key)}"

    def verify(self, text: str, signature: bytes) -> bool:
        return _ed25519_ok(self.public_key, signature, text.encode("utf-8"))


def cosigned_message(text: str, timestamp: int) -> bytes:
    """C2SP tlog-cosignature: "cosignature/v1\\ntime <t>\\n" followed by the whole note text."""
    return f"{_COSIGN_HEADER}time {timestamp}\n{text}".encode("utf-8")


@dataclass(frozen=True)
class CosignatureVerifier:
    """Verifies type 0x04 timestamped cosignatures (C2SP tlog-cosignature, Ed25519)."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public_key) != 32:
            raise MalformedNote("an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> KeyID:
        return key_id(self.name, ALG_COSIGNATURE_V1, self.public_key)

    def vkey(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{b64encode(bytes([ALG_COSIGNATURE_V1]) + self.public_key)}"

    def verify(self, text: str, signature: bytes) -> bool:
        return self.timestamp(text, signature) is not None

    def timestamp(self, text: str, signature: bytes) -> int | None:
        """The signed time if the cosignature verifies, else None."""
        if len(signature) != 8 + 64:
            return None
        timestamp: int = struct.unpack(">Q", signature[:8])[0]
        if timestamp > MAX_TIMESTAMP:
            return None
        if not _ed25519_ok(self.public_key, signature[8:], cosigned_message(text, timestamp)):
            return None
        return timestamp


def _ed25519_ok(public_key: bytes, signature: bytes, message: bytes) -> bool:
    if len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def parse_vkey(vkey: str) -> Ed25519Verifier | CosignatureVerifier:
    """Parse ``<name>+<hex key ID>+<base64(alg || key)>`` and check the ID matches the key."""
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise MalformedNote("a verifier key is <name>+<key ID>+<key>")
    name, hex_id, key64 = parts
    check_key_name(name)
    raw = b64decode_strict(key64)
    if len(raw) != 33:
        raise MalformedNote("verifier key material must be an algorithm byte and 32 bytes")
    alg, public = raw[0], raw[1:]
    verifier: Ed25519Verifier | CosignatureVerifier
    if alg == ALG_ED25519:
        verifier = Ed25519Verifier(name, public)
    elif alg == ALG_COSIGNATURE_V1:
        verifier = CosignatureVerifier(name, public)
    else:
        raise MalformedNote(f"unsupported verifier key algorithm 0x{alg:02x}")
    if len(hex_id) != 8 or verifier.key_id.hex() != hex_id:
        raise MalformedNote("verifier key ID does not match the key")
    return verifier


def open_note(note: Note, verifiers: list[Verifier]) -> list[NoteSignature]:
    """Verify a note against trusted keys (C2SP signed-note "Signatures").

    Signatures from unknown (name, key ID) pairs are ignored; a known key's
    failing signature rejects the note; at least one known signature must verify.
    Returns the verified signatures.
    """
    known = {(v.name, v.key_id): v for v in verifiers}
    verified = []
    for sig in note.signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        if not verifier.verify(note.text, sig.signature):
            raise SignatureError(f"signature by {sig.name} does not verify")
        verified.append(sig)
    if not verified:
        raise SignatureError("no signature from a trusted key")
    return verified


class NoteSigner:
    """Signs notes with one Ed25519 key: note signatures (0x01) and timestamped cosignatures (0x04).

    The log uses the same key and name for both, which C2SP signed-note allows
    ("reusing the same cryptographic key and name for different signature
    types"): the cosigned message starts with "cosignature/v1\\n" and a time
    line, so no checkpoint text can be mistaken for it.
    """

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        check_key_name(name)
        self.name = name
        self._key = private_key
        public = private_key.public_key().public_bytes_raw()
        self.verifier = Ed25519Verifier(name, public)
        self.cosignature_verifier = CosignatureVerifier(name, public)

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, text: str) -> NoteSignature:
        _check_text(text)
        return NoteSignature(self.name, self.verifier.key_id, self._key.sign(text.encode("utf-8")))

    def cosign(self, text: str, timestamp: int) -> NoteSignature:
        _check_text(text)
        if not 0 <= timestamp <= MAX_TIMESTAMP:
            raise MalformedNote("cosignature timestamp out of range")
        signature = self._key.sign(cosigned_message(text, timestamp))
        return NoteSignature(
            self.name, self.cosignature_verifier.key_id, struct.pack(">Q", timestamp) + signature
        )

    def private_key_text(self) -> str:
        """The Go note private key encoding ``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>``."""
        seed = self._key.private_bytes_raw()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{b64encode(bytes([ALG_ED25519]) + seed)}"

    @classmethod
    def from_private_key_text(cls, text: str) -> NoteSigner:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise MalformedNote("not a note private key (PRIVATE+KEY+<name>+<id>+<key>)")
        name, hex_id, key64 = parts[2], parts[3], parts[4]
        raw = b64decode_strict(key64)
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise MalformedNote("note private key is not an Ed25519 seed")
        signer = cls.from_seed(name, raw[1:])
        if signer.verifier.key_id.hex() != hex_id:
            raise MalformedNote("note private key ID does not match the key")
        return signer
