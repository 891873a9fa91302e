"""Hashes of the log's tree read from its public tiles (C2SP tlog-tiles), for proofs the client computes itself.

Tiles come from the server and prove nothing alone: whatever is computed from
them must lead to a root the log signed (merkle.proves_fork, verify_consistency)
before it is believed.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import MalformedInput
from ..merkle import HASH_SIZE, Node
from ..tiles import TileRef, node_in_tile, tile_of_node
from .http import PacspaceClient


class TileReader:
    """A HashReader over the tiles of one tree size: ``await fetch(nodes)`` first, then ``read_hashes``."""

    def __init__(self, client: PacspaceClient, size: int) -> None:
        self._client = client
        self._size = size
        self._tiles: dict[TileRef, bytes] = {}

    async def fetch(self, nodes: Sequence[Node]) -> None:
        for ref in {tile_of_node(node, self._size) for node in nodes} - self._tiles.keys():
            data = await self._client.tile(ref.path())
            if len(data) != ref.width * HASH_SIZE:
                raise MalformedInput(f"{ref.path()} has {len(data)} bytes, not {ref.width * HASH_SIZE}")
            self._tiles[ref] = data

    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        return [node_in_tile(self._tiles[tile_of_node(node, self._size)], node) for node in nodes]
