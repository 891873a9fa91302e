"""Records opened in worker processes open, and fail, exactly as they do in the monitor's own process."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pacspace.client.opening import MIN_POOLED, Opener, open_batch
from pacspace.records.body import GENESIS_PREV, Common, Delta, Line
from pacspace.records.seal import CiphertextError, Opened, ProviderSignatureError, RelationshipKeys, TagMismatch, seal


def _records(keys: RelationshipKeys, signer: Ed25519PrivateKey, count: int) -> list[tuple[int, bytes, bytes]]:
    out = []
    for seq in range(1, count + 1):
        body = Delta(Common("acme:r1", seq, GENESIS_PREV, f"r{seq}", "2026-11-01T00:00:00Z"), "2026-11",
                     "2026-11-01T00:00:00Z", "2026-11-01T00:59:59Z",
                     (Line("llm.input.uncached_tokens", "token", str(seq)),))
        sealed = seal(body, keys, signer)
        out.append((seq, sealed.tag, sealed.blob))
    return out


async def test_pooled_results_are_the_in_process_results_failures_included():
    keys, signer, other = RelationshipKeys.generate(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    items = _records(keys, signer, MIN_POOLED + 10)
    seq, tag, blob = items[3]
    items[3] = (seq, tag, blob[:-1] + bytes([blob[-1] ^ 1]))  # one byte of a ciphertext flipped
    items[7] = (items[7][0], items[8][1], items[7][2])  # another record's tag
    items[9] = (items[9][0], *_records(keys, other, 10)[9][1:])  # signed by another key
    provider = signer.public_key().public_bytes_raw()
    opener = Opener(2)
    try:
        pooled = await opener.open_all(keys, provider, items)
    finally:
        opener.close()
    here = open_batch(keys.secret, keys.epoch, provider, items)
    assert len(pooled) == len(here) == len(items)
    assert [type(r) for r in pooled] == [type(r) for r in here]
    assert isinstance(pooled[3], CiphertextError) and isinstance(pooled[7], TagMismatch)
    assert isinstance(pooled[9], ProviderSignatureError)
    assert [str(r) for r in pooled if not isinstance(r, Opened)] == [str(r) for r in here if not isinstance(r, Opened)]
    good = [(a, b) for a, b in zip(pooled, here) if isinstance(a, Opened)]
    assert len(good) == len(items) - 3
    assert all(a.encoded == b.encoded and a.signature == b.signature and a.body == b.body for a, b in good)


async def test_few_records_open_in_process_without_workers():
    keys, signer = RelationshipKeys.generate(), Ed25519PrivateKey.generate()
    opener = Opener(2)
    results = await opener.open_all(keys, signer.public_key().public_bytes_raw(), _records(keys, signer, 5))
    assert all(isinstance(r, Opened) for r in results) and opener._pool is None
