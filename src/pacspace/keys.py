"""Party keys: X25519 (to receive relationship secrets) and Ed25519 (to sign), fingerprints, HPKE wraps. Pure.

A relationship secret is wrapped with HPKE (RFC 9180, base mode, DHKEM(X25519,
HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM) to each reader's X25519 key; the
``info`` binds the wrap to its relationship and epoch so a wrap cannot be
replayed into another relationship. The server stores wraps and cannot open them.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .errors import MalformedInput, PacspaceError

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class KeyUnusable(PacspaceError):
    """A key or wrap that cannot be used: malformed, or not for this party."""

    code = "bad_key"
    http_status = 422


@dataclass(frozen=True)
class PublicKeys:
    """What a party registers with the server, and what a genesis record names."""

    x25519: bytes
    ed25519: bytes

    def __post_init__(self) -> None:
        if len(self.x25519) != 32 or len(self.ed25519) != 32:
            raise KeyUnusable("public keys are 32 bytes each")

    def fingerprint(self) -> str:
        """Compare out of band, like a messenger's safety number: SHA-256, in 16 groups of 4 hex digits."""
        digest = hashlib.sha256(b"pacspace/v1 party keys\n" + self.x25519 + self.ed25519).digest()
        hexed = digest.hex()
        return ":".join(hexed[i : i + 4] for i in range(0, len(hexed), 4))

    def to_json(self) -> dict[str, str]:
        return {
            "x25519": base64.b64encode(self.x25519).decode(),
            "ed25519": base64.b64encode(self.ed25519).decode(),
        }

    @classmethod
    def from_json(cls, obj: object) -> PublicKeys:
        if not isinstance(obj, dict) or set(obj) != {"x25519", "ed25519"}:
            raise KeyUnusable("public keys are {x25519, ed25519} in base64")
        try:
            return cls(base64.b64decode(obj["x25519"], validate=True), base64.b64decode(obj["ed25519"], validate=True))
        except (ValueError, TypeError):
            raise KeyUnusable("public keys are standard base64") from None

    def signing_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.ed25519)


@dataclass(frozen=True)
class PartyKeys:
    """A party's private keys. Lives only on the party's machine."""

    x25519: X25519PrivateKey
    ed25519: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> PartyKeys:
        return cls(X25519PrivateKey.generate(), Ed25519PrivateKey.generate())

    @property
    def public(self) -> PublicKeys:
        return PublicKeys(self.x25519.public_key().public_bytes_raw(), self.ed25519.public_key().public_bytes_raw())

    def private_bytes(self) -> tuple[bytes, bytes]:
        return self.x25519.private_bytes_raw(), self.ed25519.private_bytes_raw()

    @classmethod
    def from_private_bytes(cls, x25519: bytes, ed25519: bytes) -> PartyKeys:
        try:
            return cls(X25519PrivateKey.from_private_bytes(x25519), Ed25519PrivateKey.from_private_bytes(ed25519))
        except ValueError:
            raise KeyUnusable("private keys are 32 bytes each") from None


_HEX = frozenset("0123456789abcdef")
# Fingerprints were 128 bits (the first half of today's) before they were 256: both lengths are accepted.
_LENGTHS = (64, 32)


def _digits(text: str) -> str | None:
    """A fingerprint's hex digits, lower-case, without separators; None unless it is 64 or 32 of them."""
    digits = "".join(text.split()).replace(":", "").lower()
    return digits if len(digits) in _LENGTHS and set(digits) <= _HEX else None


def parse_fingerprint(text: str) -> str:
    """A fingerprint someone typed or pasted, in the canonical form (case, spaces and colons do not matter)."""
    digits = _digits(text)
    if digits is None:
        raise MalformedInput(
            f"{text.strip()[:80]!r} is not a key fingerprint: 16 groups of 4 hex digits (8 for one printed before "
            "pacspace's fingerprints grew to 256 bits), as `pacspace keys show` prints it"
        )
    return ":".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def fingerprint_matches(fingerprint: str, given: str) -> bool:
    """Whether two fingerprints name the same keys: the one place pacspace compares them.

    Either may be an older 128-bit fingerprint, given as input or stored in a home or monitor.db: it is
    the first half of the 256-bit one, so it matches when it is that prefix. Nothing shorter matches.
    """
    a, b = _digits(fingerprint), _digits(given)
    if a is None or b is None:
        return False
    shorter, longer = sorted((a, b), key=len)
    return longer.startswith(shorter)


def _wrap_info(relationship: str, epoch: int) -> bytes:
    return b"pacspace/v1 relationship secret\n" + relationship.encode() + b"\n" + struct.pack(">I", epoch)


def wrap_secret(secret: bytes, reader: PublicKeys, relationship: str, epoch: int) -> bytes:
    """HPKE-seal a relationship secret to a reader's X25519 key (enc || ciphertext)."""
    return _SUITE.encrypt(secret, X25519PublicKey.from_public_bytes(reader.x25519), _wrap_info(relationship, epoch))


def unwrap_secret(wrap: bytes, keys: PartyKeys, relationship: str, epoch: int) -> bytes:
    try:
        secret = _SUITE.decrypt(wrap, keys.x25519, _wrap_info(relationship, epoch))
    except Exception:
        raise KeyUnusable(f"the wrap for relationship {relationship} does not open with this party's key") from None
    if len(secret) != 32:
        raise KeyUnusable("a wrapped relationship secret is 32 bytes")
    return secret
