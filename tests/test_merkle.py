"""The Merkle core against RFC 6962 vectors, a naive recursive reference, pymerkle, and itself."""

import functools
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacspace import merkle
from pacspace.errors import InvalidRange, ProofError
from pacspace.merkle import (
    EMPTY_ROOT,
    ListHashReader,
    RangeHashes,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)

EXHAUSTIVE = 300


def mth(hashes):
    """RFC 9162 §2.1.1 MTH, written straight from the definition (remembered: the exhaustive tests ask for the
    same subtrees tens of thousands of times)."""
    return _mth(tuple(hashes))


@functools.cache
def _mth(hashes: tuple[bytes, ...]) -> bytes:
    if not hashes:
        return EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return node_hash(_mth(hashes[:k]), _mth(hashes[k:]))


def path(m, hashes):
    """RFC 9162 §2.1.3.1 PATH, from the definition."""
    if len(hashes) <= 1:
        return []
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    if m < k:
        return path(m, hashes[:k]) + [mth(hashes[k:])]
    return path(m - k, hashes[k:]) + [mth(hashes[:k])]


def subproof(m, hashes, complete):
    """RFC 9162 §2.1.4.1 SUBPROOF, from the definition."""
    n = len(hashes)
    if m == n:
        return [] if complete else [mth(hashes)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return subproof(m, hashes[:k], complete) + [mth(hashes[k:])]
    return subproof(m - k, hashes[k:], False) + [mth(hashes[:k])]


LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(EXHAUSTIVE)]
READER = ListHashReader(LEAVES)
ROOTS = [mth(LEAVES[:n]) for n in range(EXHAUSTIVE + 1)]


def test_vectors_roots(rfc6962):
    leaves = [bytes.fromhex(x) for x in rfc6962["leaves_hex"]]
    hashes = [leaf_hash(x) for x in leaves]
    assert [h.hex() for h in hashes] == rfc6962["leaf_hashes_hex"]
    reader = ListHashReader(hashes)
    for size, root in rfc6962["roots_hex"].items():
        assert tree_hash(int(size), reader).hex() == root


def test_vectors_inclusion(rfc6962):
    hashes = [bytes.fromhex(x) for x in rfc6962["leaf_hashes_hex"]]
    reader = ListHashReader(hashes)
    for case in rfc6962["inclusion"]:
        i, n = case["index"], case["size"]
        got = inclusion_proof(i, n, reader)
        assert [h.hex() for h in got] == case["path_hex"]
        verify_inclusion(i, n, hashes[i], got, bytes.fromhex(rfc6962["roots_hex"][str(n)]))


def test_vectors_consistency(rfc6962):
    hashes = [bytes.fromhex(x) for x in rfc6962["leaf_hashes_hex"]]
    reader = ListHashReader(hashes)
    roots = {int(k): bytes.fromhex(v) for k, v in rfc6962["roots_hex"].items()}
    assert rfc6962["consistency"]
    for case in rfc6962["consistency"]:
        m, n = case["old"], case["size"]
        got = consistency_proof(m, n, reader)
        assert [h.hex() for h in got] == case["proof_hex"]
        verify_consistency(m, n, roots[m], roots[n], got)


def test_tree_hash_every_size():
    for n in range(EXHAUSTIVE + 1):
        assert tree_hash(n, READER) == ROOTS[n]


def test_inclusion_every_index_and_size():
    for n in range(1, EXHAUSTIVE + 1):
        for i in range(n):
            proof = inclusion_proof(i, n, READER)
            assert proof == path(i, LEAVES[:n])
            verify_inclusion(i, n, LEAVES[i], proof, ROOTS[n])


def test_consistency_every_pair():
    for n in range(1, 130):
        for m in range(0, n + 1):
            proof = consistency_proof(m, n, READER)
            if 0 < m < n:
                assert proof == subproof(m, LEAVES[:n], True)
            else:
                assert proof == []
            verify_consistency(m, n, ROOTS[m], ROOTS[n], proof)


def test_consistency_larger_pairs_sampled():
    for n in range(130, EXHAUSTIVE + 1, 7):
        for m in range(1, n, 3):
            proof = consistency_proof(m, n, READER)
            assert proof == subproof(m, LEAVES[:n], True)
            verify_consistency(m, n, ROOTS[m], ROOTS[n], proof)


def flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


def test_inclusion_rejects_every_tamper():
    for n in (1, 2, 3, 5, 7, 8, 9, 31, 64, 65, 100, 255, 256, 257):
        for i in range(n):
            proof = inclusion_proof(i, n, READER)
            with pytest.raises(ProofError):
                verify_inclusion(i, n, flip(LEAVES[i]), proof, ROOTS[n])
            with pytest.raises(ProofError):
                verify_inclusion(i, n, LEAVES[i], proof, flip(ROOTS[n]))
            for j in range(len(proof)):
                bad = list(proof)
                bad[j] = flip(bad[j])
                with pytest.raises(ProofError):
                    verify_inclusion(i, n, LEAVES[i], bad, ROOTS[n])
            with pytest.raises(ProofError):
                verify_inclusion(i, n, LEAVES[i], proof + [LEAVES[0]], ROOTS[n])
            if proof:
                with pytest.raises(ProofError):
                    verify_inclusion(i, n, LEAVES[i], proof[:-1], ROOTS[n])
            # The same proof must not verify another index or a size it was not made for.
            if i + 1 < n:
                with pytest.raises(ProofError):
                    verify_inclusion(i + 1, n, LEAVES[i], proof, ROOTS[n])
            with pytest.raises(ProofError):
                verify_inclusion(i, n + 1, LEAVES[i], proof, ROOTS[n + 1])


def test_consistency_rejects_every_tamper():
    for n in (2, 3, 4, 5, 7, 8, 9, 17, 64, 100, 257):
        for m in range(1, n):
            proof = consistency_proof(m, n, READER)
            for j in range(len(proof)):
                bad = list(proof)
                bad[j] = flip(bad[j])
                with pytest.raises(ProofError):
                    verify_consistency(m, n, ROOTS[m], ROOTS[n], bad)
            with pytest.raises(ProofError):
                verify_consistency(m, n, flip(ROOTS[m]), ROOTS[n], proof)
            with pytest.raises(ProofError):
                verify_consistency(m, n, ROOTS[m], flip(ROOTS[n]), proof)
            with pytest.raises(ProofError):
                verify_consistency(m, n, ROOTS[m], ROOTS[n], proof + [LEAVES[0]])
            with pytest.raises(ProofError):
                verify_consistency(m, n, ROOTS[m], ROOTS[n], proof[:-1])


def test_consistency_edge_cases():
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [])
    verify_consistency(5, 5, ROOTS[5], ROOTS[5], [])
    with pytest.raises(ProofError):
        verify_consistency(0, 5, ROOTS[1], ROOTS[5], [])
    with pytest.raises(ProofError):
        verify_consistency(5, 5, ROOTS[5], ROOTS[4], [])
    with pytest.raises(ProofError):
        verify_consistency(5, 5, ROOTS[5], ROOTS[5], [ROOTS[5]])
    with pytest.raises(ProofError):
        verify_consistency(6, 5, ROOTS[6], ROOTS[5], [])
    with pytest.raises(ProofError):
        verify_consistency(3, 5, ROOTS[3], ROOTS[5], [])
    with pytest.raises(ProofError):
        verify_inclusion(0, 0, LEAVES[0], [], EMPTY_ROOT)
    with pytest.raises(ProofError):
        verify_inclusion(0, 1, LEAVES[0], [b"short"], ROOTS[1])


def test_invalid_ranges_raise():
    with pytest.raises(InvalidRange):
        inclusion_proof(5, 5, READER)
    with pytest.raises(InvalidRange):
        inclusion_proof(-1, 5, READER)
    with pytest.raises(InvalidRange):
        consistency_proof(6, 5, READER)
    with pytest.raises(InvalidRange):
        tree_hash(-1, READER)


def test_empty_root_is_sha256_of_nothing():
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert tree_hash(0, READER) == EMPTY_ROOT


def test_plans_read_only_what_they_need():
    class Counting:
        def __init__(self):
            self.reads = []

        def read_hashes(self, nodes):
            self.reads.append(list(nodes))
            return READER.read_hashes(nodes)

    reader = Counting()
    inclusion_proof(77, 299, reader)
    assert len(reader.reads) == 1
    assert reader.reads[0] == merkle.inclusion_proof_plan(77, 299)
    assert len(reader.reads[0]) <= 2 * 299 .bit_length()


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_property_large_trees(data):
    """Sizes beyond the exhaustive range: proofs verify, and verify only for the right leaf and root."""
    n = data.draw(st.integers(min_value=1, max_value=3000))
    leaves = [leaf_hash(b"p" + i.to_bytes(4, "big")) for i in range(n)]
    reader = ListHashReader(leaves)
    root = tree_hash(n, reader)
    assert root == mth(leaves)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    proof = inclusion_proof(i, n, reader)
    verify_inclusion(i, n, leaves[i], proof, root)
    m = data.draw(st.integers(min_value=0, max_value=n))
    old_root = tree_hash(m, reader)
    cproof = consistency_proof(m, n, reader)
    verify_consistency(m, n, old_root, root, cproof)
    if 0 < m < n:
        with pytest.raises(ProofError):
            verify_consistency(m, n, old_root, flip(root), cproof)


def test_cross_check_with_pymerkle():
    """pymerkle (GPL, test-time only) agrees on roots and inclusion paths. It counts leaves from 1."""
    from pymerkle import InmemoryTree

    tree = InmemoryTree(algorithm="sha256")
    entries = [b"leaf-%d" % i for i in range(200)]
    for e in entries:
        tree.append_entry(e)
    ours = ListHashReader([leaf_hash(e) for e in entries])
    for n in range(1, 201):
        assert tree.get_root(n) == tree_hash(n, ours)
    for n in (1, 2, 3, 7, 64, 100, 129, 200):
        for i in range(n):
            theirs = tree.prove_inclusion(i + 1, n)
            assert theirs.path[0] == leaf_hash(entries[i])
            assert list(theirs.path[1:]) == inclusion_proof(i, n, ours)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=600), st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=2**32))
def test_range_hashes_memo_gives_the_same_inclusion_proofs(size, limit, seed):
    """Memoised ranges (across many trees, with the memo cleared when full) never change a proof."""
    import random

    rng = random.Random(seed)
    reader = ListHashReader([hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(size)])
    memo = RangeHashes(limit=limit)
    for _ in range(30):
        n = rng.randint(1, size)
        index = rng.randrange(n)
        assert memo.inclusion_proof(index, n, reader) == inclusion_proof(index, n, reader)
    assert len(memo.hashes) <= max(limit, 40)
