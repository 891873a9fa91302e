"""A customer's acceptance of a relationship: its Ed25519 signature over the genesis record's public entry. Pure.

A provider can name any customer in a new relationship. Until that customer
accepts, the relationship is an invitation: the customer's monitor never follows
it, so a rogue provider's bad wrap or wrong genesis cannot touch it. To accept,
the customer verifies the genesis record in full (it opens with the customer's
key, is signed by the provider, names both parties' keys) and signs

    "pacspace/v1 acceptance\\n" || relationship id || "\\n" || genesis entry (65 bytes)

with its own Ed25519 key. The server checks the signature against the
customer's registered key and the genesis entry it holds; the customer's
monitor checks it against its own key before following, so neither a provider
nor a server can make a customer follow a relationship it did not accept.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .seal import ENTRY_SIZE

SIGNATURE_SIZE = 64


def acceptance_message(relationship: str, genesis_entry: bytes) -> bytes:
    if len(genesis_entry) != ENTRY_SIZE:
        raise ValueError(f"a genesis entry is {ENTRY_SIZE} bytes")
    return b"pacspace/v1 acceptance\n" + relationship.encode() + b"\n" + genesis_entry


def sign_acceptance(key: Ed25519PrivateKey, relationship: str, genesis_entry: bytes) -> bytes:
    return key.sign(acceptance_message(relationship, genesis_entry))


def acceptance_valid(key: Ed25519PublicKey, relationship: str, genesis_entry: bytes, signature: bytes) -> bool:
    if len(signature) != SIGNATURE_SIZE:
        return False
    try:
        key.verify(signature, acceptance_message(relationship, genesis_entry))
    except InvalidSignature:
        return False
    return True
