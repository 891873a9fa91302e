"""C2SP tlog-tiles: tile coordinates, paths, tile contents and entry bundles. Pure: no I/O.

A tile at level ``L`` holds up to 256 consecutive hashes of tree level ``8L``.
pacspace also keeps, per tile, its *interior*: the complete hashes at tree
levels ``8L+1 .. 8L+7`` that lie inside it, so a proof never rehashes a tile.
The served bytes are the C2SP tile; the interior is ours alone.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .errors import EntryTooLarge, InvalidRange, MalformedTilePath
from .merkle import EMPTY_ROOT, HASH_SIZE, Hash, Node, fold_range, node_hash, range_nodes

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
FULL_TILE_BYTES = TILE_WIDTH * HASH_SIZE
# C2SP tlog-tiles: L is between 0 and 63.
MAX_TILE_LEVEL = 63
# C2SP tlog-tiles "Log entries": a big-endian uint16 length prefix.
MAX_ENTRY_SIZE = 0xFFFF


@dataclass(frozen=True)
class TileRef:
    """One tile resource. ``level`` is None for an entry bundle; ``width`` is 256 for a full tile."""

    level: int | None
    n: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        if self.level is not None and not 0 <= self.level <= MAX_TILE_LEVEL:
            raise InvalidRange(f"tile level {self.level} is outside 0..{MAX_TILE_LEVEL}")
        if self.n < 0:
            raise InvalidRange(f"tile index {self.n} is negative")
        if not 1 <= self.width <= TILE_WIDTH:
            raise InvalidRange(f"tile width {self.width} is outside 1..256")

    @property
    def is_partial(self) -> bool:
        return self.width < TILE_WIDTH

    @property
    def hash_level(self) -> int:
        """Tree level of the hashes in this tile (level 0 for entry bundles)."""
        return TILE_HEIGHT * (self.level or 0)

    def path(self) -> str:
        """The C2SP path, e.g. ``tile/0/x001/x234/067.p/5``."""
        kind = "entries" if self.level is None else str(self.level)
        suffix = f".p/{self.width}" if self.is_partial else ""
        return f"tile/{kind}/{format_index(self.n)}{suffix}"

    def min_tree_size(self) -> int:
        """The smallest tree size whose tiles include this one (C2SP: start index + width hashes)."""
        return (self.n * TILE_WIDTH + self.width) << self.hash_level

    def sizes_that_imply(self) -> tuple[int, int]:
        """Half-open range of tree sizes whose partial tile at this level is exactly this one."""
        lo = self.min_tree_size()
        return lo, lo + (1 << self.hash_level)


def format_index(n: int) -> str:
    """C2SP tile index: 3-digit groups, all but the last prefixed with ``x`` (1234067 -> x001/x234/067)."""
    digits = str(n)
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


# Bounded digit counts: a level below 64, an index below 10**24, a width below 1000
# (range checks follow); nothing unbounded reaches int().
_PATH = re.compile(r"tile/(entries|[0-9]{1,2})/((?:x[0-9]{3}/){0,7}[0-9]{3})(?:\.p/([0-9]{1,3}))?")


def parse_tile_path(path: str) -> TileRef:
    """Parse a C2SP tile path (without the prefix); reject anything not byte-identical when re-formatted."""
    match = _PATH.fullmatch(path)
    if match is None:
        raise MalformedTilePath(f"not a tile path: {path!r}")
    kind, index, width = match.groups()
    try:
        ref = TileRef(
            level=None if kind == "entries" else int(kind),
            n=int(index.replace("x", "").replace("/", "")),
            width=TILE_WIDTH if width is None else int(width),
        )
    except InvalidRange as exc:
        raise MalformedTilePath(f"not a tile path: {path!r} ({exc})") from None
    if ref.path() != path:
        raise MalformedTilePath(f"not a canonical tile path: {path!r}")
    return ref


def partial_width(size: int, level: int) -> int:
    """C2SP: the level-``level`` partial tile of a tree of ``size`` has floor(s / 256**l) mod 256 hashes."""
    return (size >> (TILE_HEIGHT * level)) & (TILE_WIDTH - 1)


def full_tile_count(size: int, level: int) -> int:
    return size >> (TILE_HEIGHT * (level + 1))


def tile_levels(size: int) -> int:
    """How many tile levels a tree of ``size`` has (the last one holds at least one hash)."""
    levels = 0
    while size >> (TILE_HEIGHT * levels):
        levels += 1
    return levels


def tiles_for_size(size: int) -> list[TileRef]:
    """The partial tiles a tree of ``size`` implies, one per level with a non-zero width."""
    return [
        TileRef(level, full_tile_count(size, level), partial_width(size, level))
        for level in range(tile_levels(size))
        if partial_width(size, level)
    ]


def implied_by(ref: TileRef, size: int) -> bool:
    """Whether a tree of ``size`` contains this full tile, or has exactly this partial tile."""
    if not ref.is_partial:
        return size >= ref.min_tree_size()
    lo, hi = ref.sizes_that_imply()
    return lo <= size < hi


class NodeLocation(NamedTuple):
    """Where a complete node lives: tile (level, n), sub-level k in 0..7, position in that sub-level."""

    tile_level: int
    tile_n: int
    sublevel: int
    position: int


def locate(node: Node) -> NodeLocation:
    level, n = node
    tile_level, sublevel = divmod(level, TILE_HEIGHT)
    shift = TILE_HEIGHT - sublevel
    return NodeLocation(tile_level, n >> shift, sublevel, n & ((1 << shift) - 1))


def tile_of_node(node: Node, size: int) -> TileRef:
    """The tile of a tree of ``size`` that holds complete node ``node`` (full, or the right edge's partial one)."""
    loc = locate(node)
    if loc.tile_n < full_tile_count(size, loc.tile_level):
        return TileRef(loc.tile_level, loc.tile_n)
    width = partial_width(size, loc.tile_level)
    if loc.tile_n != full_tile_count(size, loc.tile_level) or (loc.position + 1) << loc.sublevel > width:
        raise InvalidRange(f"node {node} is not complete in a tree of size {size}")
    return TileRef(loc.tile_level, loc.tile_n, width)


def node_in_tile(tile: bytes, node: Node) -> bytes:
    """The hash of complete node ``node`` from the served bytes of the tile that holds it."""
    loc = locate(node)
    span = 1 << loc.sublevel
    first = loc.position * span
    hashes = split_hashes(tile[first * HASH_SIZE : (first + span) * HASH_SIZE])
    if len(hashes) != span or any(len(h) != HASH_SIZE for h in hashes):
        raise InvalidRange(f"node {node} is not complete in a tile of {len(tile) // HASH_SIZE} hashes")
    while len(hashes) > 1:
        hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]


def expand(hashes: Sequence[bytes]) -> list[list[bytes]]:
    """All complete sub-levels of a tile: ``[hashes, level 1, ..., level 8]``; level 8 is the tile root if full."""
    levels = [list(hashes)]
    for _ in range(TILE_HEIGHT):
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
    return levels


def pack_interior(levels: Sequence[Sequence[bytes]]) -> bytes:
    """Sub-levels 1..7 of an expanded tile, concatenated (the tile root is stored a level up)."""
    return b"".join(b"".join(level) for level in levels[1:TILE_HEIGHT])


def interior_offset(width: int, sublevel: int, position: int) -> int:
    """Byte offset of a hash in a packed interior of a tile ``width`` hashes wide."""
    if width == TILE_WIDTH:
        before = _FULL_TILE_LEVEL_STARTS[sublevel]
    else:
        before = sum(width >> k for k in range(1, sublevel))
    return (before + position) * HASH_SIZE


# Hashes before sub-level k in a full tile's packed interior: 0, 0, 128, 192, 224, ...
_FULL_TILE_LEVEL_STARTS = tuple(sum(TILE_WIDTH >> k for k in range(1, sub)) for sub in range(TILE_HEIGHT + 1))


def read_tile_hash(hashes: bytes, interior: bytes, sublevel: int, position: int) -> bytes:
    """One complete hash out of a stored tile; raises InvalidRange if it is not complete there."""
    width = len(hashes) // HASH_SIZE
    if position >= width >> sublevel:
        raise InvalidRange(f"hash {position} at sub-level {sublevel} is not complete in a tile of width {width}")
    if sublevel == 0:
        return hashes[position * HASH_SIZE : (position + 1) * HASH_SIZE]
    at = interior_offset(width, sublevel, position)
    return interior[at : at + HASH_SIZE]


def split_hashes(data: bytes) -> list[bytes]:
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


@dataclass(frozen=True)
class TileUpdate:
    """The tiles an append writes, and the new tree's right edge and root.

    ``tiles`` maps (tile level, tile index) to the tile's full hash list after
    the append; ``edge`` maps each tile level to its partial tile (possibly empty).
    """

    size: int
    tiles: dict[tuple[int, int], list[bytes]]
    expanded: dict[tuple[int, int], list[list[bytes]]]
    edge: dict[int, list[bytes]]
    root: Hash


def extend(size: int, edge: dict[int, list[bytes]], new_leaf_hashes: Sequence[bytes]) -> TileUpdate:
    """Append leaf hashes to a tree of ``size`` whose partial tiles are ``edge``.

    Reads nothing but ``edge`` (at most 255 hashes per level): every full tile
    below the edge is final and never touched again. Costs about one SHA-256
    per new leaf plus at most 255 per touched partial tile.
    """
    _check_edge(size, edge)
    tiles: dict[tuple[int, int], list[bytes]] = {}
    expanded: dict[tuple[int, int], list[list[bytes]]] = {}
    new_edge: dict[int, list[bytes]] = {}
    incoming: list[bytes] = list(new_leaf_hashes)
    new_size = size + len(incoming)
    level = 0
    first_tile = size >> TILE_HEIGHT
    while incoming or level < tile_levels(new_size):
        combined = list(edge.get(level, [])) + incoming
        roots: list[bytes] = []
        for i in range(0, len(combined), TILE_WIDTH):
            chunk = combined[i : i + TILE_WIDTH]
            key = (level, first_tile + i // TILE_WIDTH)
            if incoming:
                tiles[key] = chunk
                expanded[key] = expand(chunk)
            if len(chunk) == TILE_WIDTH:
                roots.append(expanded[key][TILE_HEIGHT][0])
            else:
                new_edge[level] = chunk
        new_edge.setdefault(level, [])
        incoming = roots
        level += 1
        first_tile >>= TILE_HEIGHT
    root = _root_from_edge(new_size, new_edge, expanded)
    return TileUpdate(new_size, tiles, expanded, new_edge, root)


def _check_edge(size: int, edge: dict[int, list[bytes]]) -> None:
    for level in set(edge) | set(range(tile_levels(size) + 1)):
        if level < 0:
            raise InvalidRange(f"edge tile level {level} is negative")
        if len(edge.get(level, [])) != partial_width(size, level):
            raise InvalidRange(f"edge tile at level {level} does not match tree size {size}")


def _root_from_edge(size: int, edge: dict[int, list[bytes]], expanded: dict[tuple[int, int], list[list[bytes]]]) -> Hash:
    """MTH of the whole tree: its peaks all lie in the partial tiles of the right edge."""
    if size == 0:
        return EMPTY_ROOT
    peaks = []
    for level, n in range_nodes(0, size):
        loc = locate((level, n))
        key = (loc.tile_level, loc.tile_n)
        levels = expanded.get(key) or expand(edge[loc.tile_level])
        peaks.append(levels[loc.sublevel][loc.position])
    return fold_range(peaks)


def root_from_edge(size: int, edge: dict[int, list[bytes]]) -> Hash:
    """MTH(D[0:size]) from the right edge alone (startup check: O(log n) hashes read)."""
    _check_edge(size, edge)
    return _root_from_edge(size, edge, {})


def encode_bundle(entries: Iterable[bytes]) -> bytes:
    """C2SP entry bundle: each entry prefixed by its big-endian uint16 length."""
    out = bytearray()
    for entry in entries:
        if len(entry) > MAX_ENTRY_SIZE:
            raise EntryTooLarge(f"entry of {len(entry)} bytes exceeds {MAX_ENTRY_SIZE}")
        out += struct.pack(">H", len(entry))
        out += entry
    return bytes(out)


def iter_bundle(data: bytes) -> Iterator[bytes]:
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise InvalidRange("entry bundle ends inside a length prefix")
        (length,) = struct.unpack_from(">H", data, at)
        at += 2
        if at + length > len(data):
            raise InvalidRange("entry bundle ends inside an entry")
        yield data[at : at + length]
        at += length


def bundle_prefix(data: bytes, width: int) -> bytes:
    """The first ``width`` entries of a bundle, as a bundle (a partial bundle of a grown one)."""
    at = 0
    for _ in range(width):
        if at + 2 > len(data):
            raise InvalidRange(f"entry bundle holds fewer than {width} entries")
        (length,) = struct.unpack_from(">H", data, at)
        at += 2 + length
    if at > len(data):
        raise InvalidRange(f"entry bundle holds fewer than {width} entries")
    return data[:at]
