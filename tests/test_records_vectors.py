"""The sealed-record known answer (tests/vectors/pacspace-records.json), and that docs/protocol.md quotes it."""

from __future__ import annotations

import hashlib
import json
import pathlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pacspace.records.body import body_hash, decode_body
from pacspace.records.seal import RelationshipKeys, open_record, seal

ROOT = pathlib.Path(__file__).parent.parent
V = json.loads((ROOT / "tests" / "vectors" / "pacspace-records.json").read_text())


def test_sealed_record_known_answer():
    provider = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(V["provider_seed_hex"]))
    keys = RelationshipKeys(bytes.fromhex(V["secret_hex"]), V["epoch"])
    assert keys.tag_key.hex() == V["tag_key_hex"]
    assert keys.record_key(V["seq"]).hex() == V["record_key_hex"]
    assert keys.tag(V["seq"]).hex() == V["tag_hex"]
    body = decode_body(V["body"].encode())
    assert body_hash(V["body"].encode()) == V["body_hash_hex"]
    sealed = seal(body, keys, provider, nonce=bytes.fromhex(V["nonce_hex"]))
    assert sealed.body.decode() == V["body"]
    assert len(sealed.blob) == V["blob_len"]
    assert hashlib.sha256(sealed.blob).hexdigest() == V["blob_sha256_hex"]
    assert sealed.entry.hex() == V["entry_hex"]
    assert open_record(V["seq"], sealed.tag, sealed.blob, keys, provider.public_key()).encoded == sealed.body


def test_protocol_doc_quotes_the_record_vector():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    for key in ("tag_key_hex", "record_key_hex", "tag_hex", "entry_hex", "body"):
        assert V[key] in doc, key
