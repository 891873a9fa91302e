"""The monitor's inclusion paths from tiles: the same paths RFC 9162 gives, and refused when a tile lies."""

from __future__ import annotations

import hashlib

import pytest

from pacspace.client.tile_reader import TileReader
from pacspace.errors import ProofError
from pacspace.merkle import HASH_SIZE, inclusion_proof, leaf_hash, tree_hash
from pacspace.tiles import TILE_HEIGHT, TILE_WIDTH


class Tree:
    """Every complete node of a tree of ``len(leaves)`` leaves, and its tiles as a log serves them."""

    def __init__(self, size: int) -> None:
        self.leaves = [leaf_hash(hashlib.sha256(str(i).encode()).digest()) for i in range(size)]
        self.levels = [list(self.leaves)]
        while len(self.levels[-1]) > 1:
            below = self.levels[-1]
            self.levels.append([hashlib.sha256(b"\x01" + below[i] + below[i + 1]).digest()
                                for i in range(0, len(below) - 1, 2)])
        self.size = size
        self.served: dict[str, bytes] = {}
        self.lie: tuple[str, int] | None = None  # (tile path, hash position) to flip

    def read_hashes(self, nodes):  # type: ignore[no-untyped-def]
        return [self.levels[level][n] for level, n in nodes]

    async def tile(self, path: str) -> bytes:
        level_text, rest = path.removeprefix("tile/").split("/", 1)
        level, width = int(level_text), TILE_WIDTH
        if ".p/" in rest:
            rest, width_text = rest.split(".p/")
            width = int(width_text)
        n = int(rest.replace("x", "").replace("/", ""))
        row = self.levels[level * TILE_HEIGHT]
        data = bytearray(b"".join(row[n * TILE_WIDTH : n * TILE_WIDTH + width]))
        if self.lie and self.lie[0] == path:
            data[self.lie[1] * HASH_SIZE] ^= 1
        self.served[path] = bytes(data)
        return bytes(data)


@pytest.mark.parametrize("size", [1, 255, 256, 257, 300, 511, 512, 70_000])
async def test_paths_from_tiles_are_rfc_9162s_paths(size):
    tree = Tree(size)
    root = tree_hash(size, tree)
    reader = TileReader(tree, size)
    picks = sorted({0, size - 1, size // 2, min(size - 1, 255), min(size - 1, 256), *range(0, size, max(1, size // 40))})
    await reader.fetch(reader.plan(picks))
    for i in picks:
        assert reader.inclusion_path(i, tree.leaves[i], root) == inclusion_proof(i, size, tree)


async def test_a_leaf_the_tile_does_not_hold_is_refused():
    tree = Tree(1000)
    root = tree_hash(1000, tree)
    reader = TileReader(tree, 1000)
    await reader.fetch(reader.plan([10, 11]))
    assert reader.inclusion_path(10, tree.leaves[10], root)
    with pytest.raises(ProofError):
        reader.inclusion_path(11, tree.leaves[12], root)  # another leaf's hash at index 11


async def test_a_tile_that_lies_leads_to_no_path():
    tree = Tree(1000)
    root = tree_hash(1000, tree)
    tree.lie = ("tile/0/000", 200)  # one hash of the first tile flipped
    reader = TileReader(tree, 1000)
    await reader.fetch(reader.plan([5, 200]))
    for i in (5, 200):
        with pytest.raises(ProofError):
            reader.inclusion_path(i, tree.leaves[i], root)
    assert not reader.new_full_tiles()  # nothing from the lying tile is kept


async def test_a_lie_where_a_path_reads_nothing_is_never_kept_nor_used():
    """A verified path reads every hash of its tiles but its own ancestor's: a tile lying exactly there (the
    leaf's own place at level 0, the lower tile's root at level 1) must not become "the log's own"."""
    from pacspace.merkle import verify_inclusion

    for size, lie, index, later in ((600, ("tile/0/001", 0), 256, (300, 400)),
                                     (65_546, ("tile/1/000", 5), 1280, (1539,))):
        tree = Tree(size)
        root = tree_hash(size, tree)
        tree.lie = lie
        reader = TileReader(tree, size)
        await reader.fetch(reader.plan([index, *later]))
        path = reader.inclusion_path(index, tree.leaves[index], root)  # the record's own hash: it verifies
        verify_inclusion(index, size, tree.leaves[index], path, root)
        for i in later:
            try:
                path = reader.inclusion_path(i, tree.leaves[i], root)
            except ProofError:
                continue  # the monitor then asks the log's proof endpoint
            verify_inclusion(i, size, tree.leaves[i], path, root)  # whatever is returned verifies
        truth = {key: await Tree(size).tile(key) for key in [lie[0]]}
        for level, n, data in reader.new_full_tiles():
            path_of = f"tile/{level}/{n:03d}"
            assert path_of not in truth or data == truth[path_of], f"kept the lying tile {path_of}"
