"""A strict C2SP checkpoint verifier written from the specs alone, sharing no code with pacspace.

It applies every rule of c2sp.org/signed-note, tlog-checkpoint and tlog-cosignature
that a checkpoint can break, and the strictest reading where a verifier may
choose: a second signature line from the same key (name and key ID) rejects the
note, as it does in verifiers that refuse rather than drop repeated signatures.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_SIZE = re.compile(r"0|[1-9][0-9]*")
_SIG_LINE = re.compile("\u2014 ([^ ]+) ([A-Za-z0-9+/=]+)")


class Rejected(Exception):
    pass


@dataclass(frozen=True)
class VKey:
    name: str
    key_id: bytes
    alg: int
    public_key: bytes


@dataclass(frozen=True)
class Verified:
    origin: str
    size: int
    root: bytes
    cosigned_at: dict[str, int]  # witness key name -> signed time


def _b64(text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise Rejected(f"invalid base64 {text!r}") from None
    if base64.b64encode(raw).decode() != text:
        raise Rejected(f"non-canonical base64 {text!r}")
    return raw


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() or ord(c) < 0x20 for c in name):
        raise Rejected(f"invalid key name {name!r}")


def parse_vkey(text: str) -> VKey:
    name, hex_id, key64 = text.split("+", 2)
    _check_name(name)
    raw = _b64(key64)
    if len(raw) != 33 or raw[0] not in (0x01, 0x04):
        raise Rejected("only Ed25519 (0x01) and Ed25519 cosignature (0x04) vkeys are known")
    key_id = hashlib.sha256(name.encode() + b"\n" + raw[:1] + raw[1:]).digest()[:4]
    if bytes.fromhex(hex_id) != key_id or len(hex_id) != 8:
        raise Rejected(f"vkey {name}: key ID {hex_id} does not match SHA-256(name || 0x0A || type || key)[:4]")
    return VKey(name, key_id, raw[0], raw[1:])


def open_checkpoint(data: bytes, log: str, witnesses: list[str]) -> Verified:
    """Verify a checkpoint against the log's vkey (type 0x01) and witness vkeys (type 0x04); raise Rejected."""
    log_key = parse_vkey(log)
    if log_key.alg != 0x01:
        raise Rejected("the log key must be type 0x01")
    known = {(k.name, k.key_id): k for k in [log_key, *map(parse_vkey, witnesses)]}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("not UTF-8") from None
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise Rejected("a control character other than newline")
    split = text.rfind("\n\n")
    if split < 0:
        raise Rejected("no blank line before the signatures")
    body, block = text[: split + 1], text[split + 2 :]
    if not block.endswith("\n") or block == "\n":
        raise Rejected("the signature block is empty or does not end in a newline")
    lines = body.split("\n")
    if len(lines) != 4 or lines[3] != "":
        raise Rejected("a checkpoint body is exactly origin, size and root hash lines")
    origin, size, root64 = lines[:3]
    _check_name(origin)
    if not _SIZE.fullmatch(size) or int(size) >= 1 << 64:
        raise Rejected(f"tree size {size!r} is not a canonical decimal")
    root = _b64(root64)
    if len(root) != 32:
        raise Rejected("the root hash is not 32 bytes")
    if origin != log_key.name:
        raise Rejected("the origin is not the log key's name")
    seen: set[tuple[str, bytes]] = set()
    signed_by_log = False
    cosigned_at: dict[str, int] = {}
    signature_lines = block[:-1].split("\n")
    if len(signature_lines) > 100:
        raise Rejected("more than 100 signatures")
    for line in signature_lines:
        match = _SIG_LINE.fullmatch(line)
        if match is None:
            raise Rejected(f"malformed signature line {line!r}")
        name, sig64 = match.groups()
        _check_name(name)
        raw = _b64(sig64)
        if len(raw) < 5:
            raise Rejected("a signature shorter than a key ID and one byte")
        key_id, sig = raw[:4], raw[4:]
        if (name, key_id) in seen:
            raise Rejected(f"two signature lines from the same key {name} {key_id.hex()}")
        seen.add((name, key_id))
        key = known.get((name, key_id))
        if key is None:
            continue  # signed-note: ignore unknown keys
        public = Ed25519PublicKey.from_public_bytes(key.public_key)
        try:
            if key.alg == 0x01:
                if len(sig) != 64:
                    raise Rejected("an Ed25519 signature is 64 bytes")
                public.verify(sig, body.encode())
                signed_by_log = True
            else:
                if len(sig) != 72:
                    raise Rejected("an Ed25519 cosignature is a timestamp and 64 bytes")
                (timestamp,) = struct.unpack(">Q", sig[:8])
                if timestamp == 0 or timestamp >= 1 << 63:
                    raise Rejected("a checkpoint cosignature's timestamp is nonzero and below 2^63")
                public.verify(sig[8:], f"cosignature/v1\ntime {timestamp}\n".encode() + body.encode())
                cosigned_at[name] = timestamp
        except InvalidSignature:
            raise Rejected(f"the signature by known key {name} does not verify") from None
    if not signed_by_log:
        raise Rejected("no signature by the log's key")
    return Verified(origin, int(size), root, cosigned_at)
