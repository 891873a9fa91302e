"""Hashes of the log's tree read from its public tiles (C2SP tlog-tiles), for proofs the client computes itself.

Tiles come from the server and prove nothing alone: whatever is computed from
them must lead to a root the log signed (verify_inclusion, merkle.proves_fork)
before it is believed. A proof that does lead there commits to every hash of
every tile it read but one: the leaf's own ancestor in each tile, which the
proof computes instead of reading. So a full tile that also holds that
ancestor, folded from the leaf, is the log's own, and stays so: a full tile
never changes. Those are kept (``TileCache``) and never fetched again; the right edge's partial
tiles are fetched for each tree size.

Tiles are fetched concurrently, ``parallel`` at a time, and each is expanded
once (all eight sub-levels) so that many proofs through one tile fold nothing
twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Protocol

from ..errors import MalformedInput, ProofError
from ..merkle import HASH_SIZE, Hash, Node, RangeHashes, inclusion_proof_plan, node_hash, verify_inclusion
from ..tiles import MAX_TILE_LEVEL, TILE_HEIGHT, TILE_WIDTH, TileRef, expand, tile_of_node

Key = tuple[int, int]  # (tile level, tile index): in a tree of one size, one tile (full or its partial one)


class TileCache(Protocol):
    """Full tiles verified before: ``(level, n) -> the tile's 256 hashes``."""

    def tiles(self, keys: Iterable[Key]) -> dict[Key, bytes]: ...


class TileSource(Protocol):
    async def tile(self, path: str) -> bytes: ...


def _key(node: Node) -> Key:
    level, n = node
    return level // TILE_HEIGHT, n >> (TILE_HEIGHT - level % TILE_HEIGHT)


class TileReader:
    """A HashReader over the tiles of one tree size: ``await fetch(nodes)`` first, then ``read_hashes``."""

    def __init__(self, client: TileSource, size: int, cache: TileCache | None = None, parallel: int = 16) -> None:
        self._client = client
        self._size = size
        self._cache = cache
        self._parallel = parallel
        self._tiles: dict[Key, bytes] = {}
        self._expanded: dict[Key, list[bytes]] = {}
        self._cached: set[Key] = set()
        self._proven: set[Key] = set()
        # Proofs in one tree share their upper ranges (the right edge above all, the same for every leaf):
        # each is folded once. A wrong tile makes every path through it fail its root, never pass.
        self._ranges = RangeHashes()
        self._above: dict[int, list[Hash]] = {}  # a full level-0 tile's path above it, checked against the root
        # A leaf's plan, by leaf: the relationships of one customer have records in the same tiles, and each
        # relationship's pages plan them again.
        self._plans: dict[int, list[Node]] = {}

    async def fetch(self, nodes: Iterable[Node]) -> None:
        """Have every tile these nodes lie in: from the cache if it holds the (full) tile, else from the log."""
        refs = {_key(node): node for node in nodes}
        wanted = {key: tile_of_node(node, self._size) for key, node in refs.items() if key not in self._tiles}
        full = [key for key, ref in wanted.items() if not ref.is_partial]
        if self._cache is not None and full:
            for key, data in self._cache.tiles(full).items():
                self._tiles[key] = data
                self._cached.add(key)
        missing = [(key, ref) for key, ref in sorted(wanted.items()) if key not in self._tiles]
        gate = asyncio.Semaphore(self._parallel)

        async def one(key: Key, ref: TileRef) -> None:
            async with gate:
                data = await self._client.tile(ref.path())
            if len(data) != ref.width * HASH_SIZE:
                raise MalformedInput(f"{ref.path()} has {len(data)} bytes, not {ref.width * HASH_SIZE}")
            self._tiles[key] = data

        await asyncio.gather(*(one(key, ref) for key, ref in missing))

    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        out = []
        for node in nodes:
            level, n = node
            levels = self._levels(_key(node))
            sublevel = level % TILE_HEIGHT
            at = (n & ((1 << (TILE_HEIGHT - sublevel)) - 1)) * HASH_SIZE
            hashed = levels[sublevel][at : at + HASH_SIZE]
            if len(hashed) != HASH_SIZE:
                raise MalformedInput(f"node {node} is not complete in the tiles of size {self._size}")
            out.append(hashed)
        return out

    def _levels(self, key: Key) -> list[bytes]:
        """A fetched tile's eight sub-levels, each its hashes concatenated (computed once)."""
        levels = self._expanded.get(key)
        if levels is None:
            data = self._tiles[key]
            hashes = [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
            levels = self._expanded[key] = [b"".join(level) for level in expand(hashes)[:TILE_HEIGHT]]
        return levels

    def plan(self, indexes: Iterable[int]) -> set[Node]:
        """The nodes to fetch for these leaves' inclusion paths: for a leaf in a full tile, the tile's first
        leaf's path (one a tile is all ``inclusion_path`` folds), else the leaf's own."""
        leaves = {index if first < 0 else first for index in indexes for first in (self._first(index),)}
        nodes: set[Node] = set()
        for leaf in leaves:
            plan = self._plans.get(leaf)
            if plan is None:
                plan = self._plans[leaf] = inclusion_proof_plan(leaf, self._size)
            nodes.update(plan)
        return nodes

    def inclusion_path(self, index: int, leaf: bytes, root: bytes) -> list[Hash]:
        """Leaf ``index``'s inclusion path, checked to lead from ``leaf`` to ``root``: raises ProofError if not
        (KeyError, MalformedInput if the tiles fetched lack it).

        In a full level-0 tile, the path of the tile's first leaf is folded and checked once, and the tile must
        hold that leaf's hash: that proves every leaf hash the tile holds (the tile's levels are computed from
        them). Any
        other leaf of the tile then only has to be the hash the tile holds at its place; its path is its eight
        siblings in the tile, then the first leaf's path above the tile (the same for every leaf below it).
        """
        first = self._first(index)
        if first == index or first < 0:
            path = self._ranges.inclusion_proof(index, self._size, self)
            verify_inclusion(index, self._size, leaf, path, root)
            if self._prove_ancestors(index, leaf, path) and first == index:
                self._above[index >> TILE_HEIGHT] = path[TILE_HEIGHT:]
            return path
        levels = self._levels((0, index >> TILE_HEIGHT))
        above = self._above.get(index >> TILE_HEIGHT)
        if above is None:
            self.inclusion_path(first, levels[0][:HASH_SIZE], root)
            above = self._above[index >> TILE_HEIGHT]
        at = index & (TILE_WIDTH - 1)
        if levels[0][at * HASH_SIZE : (at + 1) * HASH_SIZE] != leaf:
            raise ProofError(f"leaf {index} is not the hash the log's tile holds")
        below = [Hash(levels[k][((at >> k) ^ 1) * HASH_SIZE : (((at >> k) ^ 1) + 1) * HASH_SIZE])
                 for k in range(TILE_HEIGHT)]
        return below + above

    def _first(self, index: int) -> int:
        """The first leaf of ``index``'s level-0 tile if that tile is full in this tree, else -1."""
        first = index & ~(TILE_WIDTH - 1)
        return first if first + TILE_WIDTH <= self._size else -1

    def _prove_ancestors(self, index: int, leaf: bytes, path: Sequence[bytes]) -> bool:
        """After ``path`` led ``leaf`` to a signed root: which full tiles on the way are now the log's own.

        A verified path pins every hash of a tile it read but one: the leaf's own ancestor in it (the leaf
        itself in the level-0 tile), which the path computes instead of reading. So a tile is proven only
        if it holds that ancestor, folded from the leaf and the path's siblings. Returns whether the
        leaf's level-0 tile was.
        """
        node, level, proven_level0 = leaf, 0, False
        for tile_level in range(MAX_TILE_LEVEL + 1):
            height = tile_level * TILE_HEIGHT
            while level < height:
                if level >= len(path) or ((index >> (level + 1)) + 1) << (level + 1) > self._size:
                    return proven_level0  # the parent is not complete: no full tile above holds an ancestor
                node = node_hash(path[level], node) if (index >> level) & 1 else node_hash(node, path[level])
                level += 1
            key = (tile_level, index >> (height + TILE_HEIGHT))
            data = self._tiles.get(key)
            if data is None or len(data) != TILE_WIDTH * HASH_SIZE:
                return proven_level0
            at = (index >> height) & (TILE_WIDTH - 1)
            if data[at * HASH_SIZE : (at + 1) * HASH_SIZE] != node:
                return proven_level0
            self._proven.add(key)
            proven_level0 = proven_level0 or tile_level == 0
        return proven_level0

    def new_full_tiles(self) -> list[tuple[int, int, bytes]]:
        """Full tiles proven in this reader's life and not cached before: (level, n, hashes), to keep."""
        return [(level, n, self._tiles[(level, n)]) for level, n in sorted(self._proven - self._cached)
                if len(self._tiles.get((level, n), b"")) == TILE_WIDTH * HASH_SIZE]

    @property
    def fetched(self) -> int:
        """Tiles fetched from the log (not from the cache)."""
        return len(self._tiles) - len(self._cached)
