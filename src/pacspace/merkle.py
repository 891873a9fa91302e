"""RFC 9162 Merkle tree hashing, proof generation and proof verification. Pure: no I/O.

Nodes are addressed as ``(level, n)``: the complete subtree of ``2**level`` leaves
covering ``D[n * 2**level : (n + 1) * 2**level]``. Storage answers for complete
nodes only, through the one-method :class:`HashReader`; every hash over a range
that is not a complete node (the right edge of a tree) is folded here from the
complete nodes that tile it.

As in Go's ``sumdb/tlog``, each proof is planned first (``*_plan``: the nodes to
read, so storage can answer with one batched read) and computed second.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NewType, Protocol

from .errors import InvalidRange, ProofError

Hash = NewType("Hash", bytes)
Node = tuple[int, int]

HASH_SIZE = 32
# RFC 9162 §2.1.1: MTH({}) = SHA-256().
EMPTY_ROOT = Hash(hashlib.sha256(b"").digest())

_sha256 = hashlib.sha256


class HashReader(Protocol):
    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        """Return exactly ``len(nodes)`` hashes, in order, or raise."""
        ...


class ListHashReader:
    """A HashReader over leaf hashes held in a list (tests, fsck, small trees)."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self._levels: list[list[bytes]] = [list(leaf_hashes)]
        while len(self._levels[-1]) > 1:
            below = self._levels[-1]
            self._levels.append(
                [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            )

    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        out = []
        for level, n in nodes:
            if level >= len(self._levels) or n >= len(self._levels[level]):
                raise InvalidRange(f"node ({level}, {n}) is not stored")
            out.append(self._levels[level][n])
        return out


def leaf_hash(entry: bytes) -> Hash:
    """RFC 9162 §2.1.1: MTH({d}) = SHA-256(0x00 || d)."""
    return Hash(_sha256(b"\x00" + entry).digest())


def node_hash(left: bytes, right: bytes) -> Hash:
    """RFC 9162 §2.1.1: SHA-256(0x01 || left || right)."""
    return Hash(_sha256(b"\x01" + left + right).digest())


def _largest_power_of_two_below(n: int) -> int:
    """k such that k < n <= 2k (RFC 9162 §2.1.1); n must be >= 2."""
    return 1 << ((n - 1).bit_length() - 1)


def range_nodes(start: int, end: int) -> list[Node]:
    """The complete nodes, left to right, whose hashes fold into MTH(D[start:end]).

    ``start`` must be a multiple of the power of two at or above ``end - start``
    (it always is for ranges that RFC 9162's recursion produces). Reads
    popcount(end - start) hashes.
    """
    nodes: list[Node] = []
    size = end - start
    offset = start
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            nodes.append((level, offset >> level))
            offset += 1 << level
    return nodes


def fold_range(hashes: Sequence[bytes]) -> Hash:
    """Combine the hashes of :func:`range_nodes` into the range's MTH (right to left)."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return Hash(acc)


def tree_hash_plan(size: int) -> list[Node]:
    """The nodes :func:`tree_hash` reads: one per set bit of ``size``."""
    if size < 0:
        raise InvalidRange(f"tree size {size} is negative")
    return range_nodes(0, size)


def tree_hash(size: int, reader: HashReader) -> Hash:
    """MTH(D[0:size]) from stored complete nodes; reads popcount(size) hashes."""
    nodes = tree_hash_plan(size)
    if not nodes:
        return EMPTY_ROOT
    return fold_range(reader.read_hashes(nodes))


def _path_ranges(index: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """RFC 9162 §2.1.3.1 PATH(m, D[lo:hi]) as ranges whose MTHs form the path, leaf sibling first."""
    ranges: list[tuple[int, int]] = []
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo = lo + k
    ranges.reverse()
    return ranges


def _consistency_ranges(old: int, size: int) -> list[tuple[int, int]]:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], true) as ranges whose MTHs form the proof."""
    ranges: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, size, old, True
    while m != hi - lo:
        k = _largest_power_of_two_below(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            m -= k
            lo = lo + k
            complete = False
    if not complete:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def _plan(ranges: list[tuple[int, int]]) -> list[Node]:
    return [node for start, end in ranges for node in range_nodes(start, end)]


def _fold_ranges(ranges: list[tuple[int, int]], hashes: list[bytes]) -> list[Hash]:
    out: list[Hash] = []
    at = 0
    for start, end in ranges:
        count = (end - start).bit_count()
        out.append(fold_range(hashes[at : at + count]))
        at += count
    return out


def inclusion_proof_plan(index: int, size: int) -> list[Node]:
    """The nodes :func:`inclusion_proof` reads: O(log size) of them."""
    if not 0 <= index < size:
        raise InvalidRange(f"leaf index {index} is not in a tree of size {size}")
    return _plan(_path_ranges(index, 0, size))


def inclusion_proof(index: int, size: int, reader: HashReader) -> list[Hash]:
    """RFC 9162 §2.1.3.1 inclusion path of leaf ``index`` in the tree of ``size``, leaf sibling first."""
    if not 0 <= index < size:
        raise InvalidRange(f"leaf index {index} is not in a tree of size {size}")
    ranges = _path_ranges(index, 0, size)
    nodes = _plan(ranges)
    return _fold_ranges(ranges, reader.read_hashes(nodes) if nodes else [])


def fold_inclusion_proof(index: int, size: int, hashes: Sequence[bytes]) -> list[Hash]:
    """:func:`inclusion_proof` from the hashes of :func:`inclusion_proof_plan`'s nodes, read beforehand."""
    return _fold_ranges(_path_ranges(index, 0, size), list(hashes))


class RangeHashes:
    """A bounded memo of MTH(D[start:end]) by (start, end), for many inclusion proofs in the same few trees.

    The hash of a range of leaves never changes once the leaves exist, so proofs of
    neighbouring leaves (the receipts of one batch) share all but their lowest
    ranges. Cleared when full: a memo, never a store.
    """

    def __init__(self, limit: int = 65536) -> None:
        self.limit = limit
        self.hashes: dict[tuple[int, int], Hash] = {}

    def inclusion_proof(self, index: int, size: int, reader: HashReader) -> list[Hash]:
        """As :func:`inclusion_proof`, reading only the ranges this memo does not hold."""
        if not 0 <= index < size:
            raise InvalidRange(f"leaf index {index} is not in a tree of size {size}")
        ranges = _path_ranges(index, 0, size)
        missing = [r for r in ranges if r not in self.hashes]
        if missing:
            if len(self.hashes) + len(missing) > self.limit:
                self.hashes.clear()
                missing = ranges
            nodes = _plan(missing)
            for r, h in zip(missing, _fold_ranges(missing, reader.read_hashes(nodes) if nodes else [])):
                self.hashes[r] = h
        return [self.hashes[r] for r in ranges]


def consistency_proof_plan(old: int, size: int) -> list[Node]:
    """The nodes :func:`consistency_proof` reads: O(log size) of them."""
    _check_consistency_sizes(old, size)
    if old == 0 or old == size:
        return []
    return _plan(_consistency_ranges(old, size))


def consistency_proof(old: int, size: int, reader: HashReader) -> list[Hash]:
    """RFC 9162 §2.1.4.1 PROOF(old, D[size]); empty for old == 0 or old == size."""
    _check_consistency_sizes(old, size)
    if old == 0 or old == size:
        return []
    ranges = _consistency_ranges(old, size)
    return _fold_ranges(ranges, reader.read_hashes(_plan(ranges)))


def _check_consistency_sizes(old: int, size: int) -> None:
    if not 0 <= old <= size:
        raise InvalidRange(f"cannot prove consistency from size {old} to size {size}")


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2. Raises ProofError unless ``proof`` shows ``leaf`` at ``index`` under ``root``."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != HASH_SIZE:
            raise ProofError("proof hash is not 32 bytes")
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # The inner loop careless ports drop: climb past levels where this
            # node is the right edge's lone child.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    if r != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    old: int, size: int, old_root: bytes, root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2. Raises ProofError unless ``proof`` shows tree ``old`` is a prefix of tree ``size``."""
    if not 0 <= old <= size:
        raise ProofError(f"no consistency from size {old} to size {size}")
    if old == size:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != root:
            raise ProofError("equal sizes with different roots")
        return
    if old == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        if old_root != EMPTY_ROOT:
            raise ProofError("the empty tree's root is SHA-256 of nothing")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    fr, sr = consistency_roots(old, size, path)
    if fr != old_root:
        raise ProofError("consistency proof does not lead to the old root")
    if sr != root:
        raise ProofError("consistency proof does not lead to the new root")


def consistency_roots(old: int, size: int, path: Sequence[bytes]) -> tuple[Hash, Hash]:
    """The roots a consistency path implies for the first ``old`` leaves and for all ``size`` (0 < old < size).

    ``path`` is RFC 9162's proof with its first hash explicit: where ``old`` is a
    power of two, it starts with the hash of the complete subtree ``[0, old)``,
    which the RFC's proof leaves out because a verifier holds it as the old root.
    """
    if not 0 < old < size:
        raise ProofError(f"no consistency path from size {old} to size {size}")
    if not path:
        raise ProofError("consistency proof is empty")
    if any(len(p) != HASH_SIZE for p in path):
        raise ProofError("proof hash is not 32 bytes")
    fn, sn = old - 1, size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    return Hash(fr), Hash(sr)


def consistency_path(old: int, size: int, reader: HashReader) -> list[Hash]:
    """The path :func:`consistency_roots` takes (0 < old < size): the RFC proof, its first hash explicit."""
    proof = consistency_proof(old, size, reader)
    if old & (old - 1) == 0:
        proof.insert(0, Hash(reader.read_hashes([(old.bit_length() - 1, 0)])[0]))
    return proof


def proves_fork(old: int, size: int, old_root: bytes, root: bytes, path: Sequence[bytes]) -> bool:
    """Whether two roots, both signed by a log, cannot describe one append-only tree.

    True when the sizes are equal and the roots differ; when ``old`` is 0 and
    ``old_root`` is not the empty tree's; or when ``path`` (as
    :func:`consistency_roots` takes it) leads to ``root`` (so its hashes are the
    tree's own) and to a root for the first ``old`` leaves other than
    ``old_root``. A path that does not lead to ``root`` proves nothing.
    """
    if not 0 <= old <= size:
        return False
    if old == size:
        return old_root != root
    if old == 0:
        return old_root != EMPTY_ROOT
    try:
        fr, sr = consistency_roots(old, size, path)
    except ProofError:
        return False
    return sr == root and fr != old_root
