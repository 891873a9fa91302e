"""pacspace's own known answers (tests/vectors/pacspace-log.json), and that docs/protocol.md quotes them."""

from __future__ import annotations

import json
import pathlib

from pacspace.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from pacspace.merkle import (
    ListHashReader,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)
from pacspace.note import NoteSigner, parse_vkey
from pacspace.tiles import encode_bundle

ROOT = pathlib.Path(__file__).parent.parent
V = json.loads((ROOT / "tests" / "vectors" / "pacspace-log.json").read_text())


def test_log_vectors():
    signer = NoteSigner.from_seed(V["origin"], bytes.fromhex(V["seed_hex"]))
    assert signer.verifier.vkey() == V["vkey"]
    assert signer.cosignature_verifier.vkey() == V["timestamp_vkey"]
    entries = [bytes.fromhex(e) for e in V["entries_hex"]]
    assert all(len(e) == 65 for e in entries)
    hashes = [leaf_hash(e) for e in entries]
    assert [h.hex() for h in hashes] == V["leaf_hashes_hex"]
    reader = ListHashReader(hashes)
    root = tree_hash(5, reader)
    assert root.hex() == V["root_5_hex"]
    assert [h.hex() for h in inclusion_proof(2, 5, reader)] == V["inclusion_2_5_hex"]
    assert [h.hex() for h in consistency_proof(3, 5, reader)] == V["consistency_3_5_hex"]
    verify_inclusion(2, 5, hashes[2], [bytes.fromhex(h) for h in V["inclusion_2_5_hex"]], root)
    verify_consistency(3, 5, tree_hash(3, reader), root, [bytes.fromhex(h) for h in V["consistency_3_5_hex"]])
    assert b"".join(hashes).hex() == V["tile_0_000_p_5_hex"]
    assert encode_bundle(entries).hex() == V["entries_000_p_5_hex"]
    signed = sign_checkpoint(Checkpoint(V["origin"], 5, root), signer, V["timestamp"])
    assert signed.format().decode() == V["checkpoint_5"]
    opened = open_checkpoint(V["checkpoint_5"].encode(), parse_vkey(V["vkey"]))
    assert opened.timestamp == V["timestamp"] and opened.root_hash == root


def test_protocol_doc_quotes_the_vectors():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    for key in ("vkey", "timestamp_vkey", "root_5_hex", "checkpoint_5"):
        assert V[key] in doc, key
    for h in V["inclusion_2_5_hex"] + V["consistency_3_5_hex"] + V["leaf_hashes_hex"]:
        assert h in doc
