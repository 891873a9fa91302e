"""Sealing and opening records: the key schedule, the sealed blob, the 65-byte public entry. Pure.

Per relationship and key epoch, a 32-byte secret S. From it, with HKDF-SHA256
and distinct labels:

    K_tag        = HKDF(S, info="pacspace/v1 tag key" || u32 epoch)
    K_rec(seq)   = HKDF(S, info="pacspace/v1 record key" || u32 epoch || u64 seq)

    tag          = HMAC-SHA256(K_tag, "pacspace/v1 tag" || u64 seq)
    commitment   = HMAC-SHA256(K_rec(seq), "pacspace/v1 key commitment")
    plaintext    = u32 len(body) || body || Ed25519 signature (64) || zeros to a size bucket
    blob         = 0x01 || nonce (12) || commitment (32) || AES-256-GCM(K_rec(seq), nonce, plaintext, aad=tag)
    ct_hash      = SHA-256(blob)
    entry        = 0x01 || tag || ct_hash                                   (65 bytes, the log leaf)

The nonce is random: a provider that re-seals a seq after a crash must never
reuse (key, nonce). The commitment binds the blob to one key, so no blob opens
to two plaintexts under two keys. K_rec(seq) alone opens one record, which is
how a single record is disclosed without the others.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from functools import cached_property

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import exitcodes
from ..errors import MalformedInput, PacspaceError
from .body import Body, body_hash, decode_body, encode_body

SEAL_VERSION = 0x01
ENTRY_VERSION = 0x01
_ENTRY_PREFIX = bytes([ENTRY_VERSION])
ENTRY_SIZE = 65
NONCE_SIZE = 12
COMMITMENT_SIZE = 32
SIGNATURE_SIZE = 64
SECRET_SIZE = 32
# Padding hides a record's exact size: the plaintext fills the next power of two, at least 256 bytes.
MIN_BUCKET = 256
MAX_BUCKET = 1 << 16
BLOB_OVERHEAD = 1 + NONCE_SIZE + COMMITMENT_SIZE + 16


class SealError(PacspaceError):
    """A sealed record that does not open: wrong key, altered bytes, bad signature, or malformed."""

    code = "seal_failed"
    http_status = 422
    exit_code = exitcodes.VERIFICATION_FAILED


class TagMismatch(SealError):
    """The tag is not HMAC(K_tag, seq): the record is not this relationship's record at this seq."""


class CiphertextError(SealError):
    """The blob does not open under the record key: altered, malformed, or committed to another key."""


class ProviderSignatureError(SealError):
    """The body opened but the provider's signature over it does not verify."""


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


@dataclass(frozen=True)
class RelationshipKeys:
    """The keys of one relationship epoch; never leaves the parties' machines."""

    secret: bytes
    epoch: int = 0

    def __post_init__(self) -> None:
        if len(self.secret) != SECRET_SIZE:
            raise SealError("a relationship secret is 32 bytes")
        if not 0 <= self.epoch < 1 << 32:
            raise SealError("epoch out of range")

    @classmethod
    def generate(cls, epoch: int = 0) -> RelationshipKeys:
        return cls(os.urandom(SECRET_SIZE), epoch)

    @cached_property  # a frozen dataclass's __dict__ still takes it: derived once, not per record
    def tag_key(self) -> bytes:
        return _hkdf(self.secret, b"pacspace/v1 tag key" + struct.pack(">I", self.epoch))

    def record_key(self, seq: int) -> bytes:
        return _hkdf(self.secret, b"pacspace/v1 record key" + struct.pack(">IQ", self.epoch, seq))

    def tag(self, seq: int) -> bytes:
        return tag_for(self.tag_key, seq)


def tag_for(tag_key: bytes, seq: int) -> bytes:
    return hmac.new(tag_key, b"pacspace/v1 tag" + struct.pack(">Q", seq), hashlib.sha256).digest()


def commitment_for(record_key: bytes) -> bytes:
    return hmac.new(record_key, b"pacspace/v1 key commitment", hashlib.sha256).digest()


def public_entry(tag: bytes, blob: bytes) -> bytes:
    """The 65-byte leaf: 0x01 || tag || SHA-256(blob)."""
    return entry_from_ct_hash(tag, hashlib.sha256(blob).digest())


def entry_from_ct_hash(tag: bytes, ct_hash: bytes) -> bytes:
    """The 65-byte leaf when SHA-256(blob) is already known."""
    return _ENTRY_PREFIX + tag + ct_hash


def record_tag(entry: bytes) -> bytes | None:
    """The tag of a record's public entry; None for an entry of another shape."""
    if len(entry) != ENTRY_SIZE or entry[0] != ENTRY_VERSION:
        return None
    return entry[1:33]


def _bucket(size: int) -> int:
    bucket = MIN_BUCKET
    while bucket < size:
        bucket <<= 1
    if bucket > MAX_BUCKET:
        raise SealError(f"record of {size} bytes exceeds the largest bucket ({MAX_BUCKET})")
    return bucket


@dataclass(frozen=True)
class Sealed:
    seq: int
    tag: bytes
    blob: bytes
    body: bytes

    @property
    def entry(self) -> bytes:
        return public_entry(self.tag, self.blob)

    @property
    def ct_hash(self) -> bytes:
        return hashlib.sha256(self.blob).digest()


def seal(body: Body, keys: RelationshipKeys, signer: Ed25519PrivateKey, nonce: bytes | None = None) -> Sealed:
    """Seal a body: sign the canonical bytes, pad, encrypt under K_rec(seq) with the tag as AAD."""
    seq = body.common.seq
    encoded = encode_body(body)
    signature = signer.sign(encoded)
    plain = struct.pack(">I", len(encoded)) + encoded + signature
    plain += bytes(_bucket(len(plain)) - len(plain))
    record_key = keys.record_key(seq)
    tag = keys.tag(seq)
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    if len(nonce) != NONCE_SIZE:
        raise SealError("a nonce is 12 bytes")
    ciphertext = AESGCM(record_key).encrypt(nonce, plain, tag)
    blob = bytes([SEAL_VERSION]) + nonce + commitment_for(record_key) + ciphertext
    return Sealed(seq, tag, blob, encoded)


@dataclass(frozen=True)
class Opened:
    seq: int
    body: Body
    encoded: bytes
    signature: bytes

    @cached_property  # the chain and the rules both name a record by it
    def head(self) -> str:
        """What the next record's ``prev`` names: body_hash of the canonical body."""
        return body_hash(self.encoded)


def open_with_record_key(
    seq: int, tag: bytes, blob: bytes, record_key: bytes, provider: Ed25519PublicKey
) -> Opened:
    """Open one record with its own key (what selective disclosure hands a third party)."""
    if len(blob) < BLOB_OVERHEAD or blob[0] != SEAL_VERSION:
        raise CiphertextError(f"record {seq}: not a version-1 sealed blob")
    nonce = blob[1 : 1 + NONCE_SIZE]
    commitment = blob[1 + NONCE_SIZE : 1 + NONCE_SIZE + COMMITMENT_SIZE]
    if not hmac.compare_digest(commitment, commitment_for(record_key)):
        raise CiphertextError(f"record {seq}: the key commitment does not match this key")
    try:
        plain = AESGCM(record_key).decrypt(nonce, blob[1 + NONCE_SIZE + COMMITMENT_SIZE :], tag)
    except InvalidTag:
        raise CiphertextError(f"record {seq}: does not decrypt (altered ciphertext or tag)") from None
    if len(plain) < 4:
        raise CiphertextError(f"record {seq}: plaintext too short")
    (length,) = struct.unpack_from(">I", plain)
    end = 4 + length + SIGNATURE_SIZE
    if end > len(plain) or any(plain[end:]) or len(plain) != _bucket(end):
        raise CiphertextError(f"record {seq}: malformed padding")
    encoded = plain[4 : 4 + length]
    signature = plain[4 + length : end]
    try:
        provider.verify(signature, encoded)
    except InvalidSignature:
        raise ProviderSignatureError(f"record {seq}: the provider's signature does not verify") from None
    try:
        body = decode_body(encoded)
    except MalformedInput as exc:
        # Signed, but not a body: the provider's mistake, and a record no one can verify further.
        raise CiphertextError(f"record {seq}: the signed body does not follow its schema ({exc})") from None
    if body.common.seq != seq:
        raise CiphertextError(f"record {seq}: the body says seq {body.common.seq}")
    return Opened(seq, body, encoded, signature)


def open_record(seq: int, tag: bytes, blob: bytes, keys: RelationshipKeys, provider: Ed25519PublicKey) -> Opened:
    """Open a record as a party: the tag must be HMAC(K_tag, seq), then as open_with_record_key."""
    if not hmac.compare_digest(tag, keys.tag(seq)):
        raise TagMismatch(f"record {seq}: the tag is not this relationship's tag for seq {seq}")
    return open_with_record_key(seq, tag, blob, keys.record_key(seq), provider)
