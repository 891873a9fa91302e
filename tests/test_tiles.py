"""C2SP tlog-tiles: paths, tile arithmetic, incremental tile building, interiors and entry bundles.

Tile contents are checked against the C2SP definition written out directly
(hash i of tile n at level l is MTH(D[(n*256+i)*256**l : (n*256+i+1)*256**l]),
with MTH computed by a naive memoised RFC 9162 recursion), and against
``merkle.ListHashReader``.
"""

import copy
import hashlib
import random
import struct
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacspace.errors import EntryTooLarge, InvalidRange, MalformedInput, MalformedTilePath
from pacspace.merkle import EMPTY_ROOT, HASH_SIZE, ListHashReader, node_hash, tree_hash
from pacspace.tiles import (
    FULL_TILE_BYTES,
    MAX_ENTRY_SIZE,
    MAX_TILE_LEVEL,
    TILE_WIDTH,
    NodeLocation,
    TileRef,
    bundle_prefix,
    encode_bundle,
    expand,
    extend,
    format_index,
    full_tile_count,
    implied_by,
    interior_offset,
    iter_bundle,
    locate,
    pack_interior,
    parse_tile_path,
    partial_width,
    read_tile_hash,
    root_from_edge,
    split_hashes,
    tile_levels,
    tiles_for_size,
)

# ---------------------------------------------------------------------------
# Shared leaves and references
# ---------------------------------------------------------------------------

N_MAX = 70_000
# Cheap leaf hashes: SHA-256 of the index (any 32-byte values will do for the tree shape).
LEAVES = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(N_MAX)]


@lru_cache(maxsize=None)
def _reader() -> ListHashReader:
    """ListHashReader over all N_MAX leaves. A complete node's hash does not depend on
    later leaves, so it answers for every complete node of every prefix tree."""
    return ListHashReader(LEAVES)


@lru_cache(maxsize=None)
def mth(start: int, end: int) -> bytes:
    """RFC 9162 MTH(D[start:end]) from the definition (memoised; independent of pacspace.merkle)."""
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return LEAVES[start]
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + mth(start, start + k) + mth(start + k, end)).digest()


def c2sp_tile_hash(level: int, n: int, i: int) -> bytes:
    """C2SP: hash i of tile n at level l is MTH(D[(n*256+i)*256**l : (n*256+i+1)*256**l])."""
    span = TILE_WIDTH**level
    return mth((n * TILE_WIDTH + i) * span, (n * TILE_WIDTH + i + 1) * span)


def reader_node(node, size):
    level, n = node
    assert (n + 1) << level <= size, f"node {node} is not complete in a tree of {size}"
    return _reader().read_hashes([node])[0]


def tile_width_at(size: int, level: int, n: int) -> int:
    """Width of tile (level, n) in the tree of ``size`` (0 if it does not exist yet)."""
    return max(0, min(TILE_WIDTH, (size >> (8 * level)) - n * TILE_WIDTH))


def complete_nodes(size: int):
    level = 0
    while (1 << level) <= size:
        for n in range(size >> level):
            yield (level, n)
        level += 1


# ---------------------------------------------------------------------------
# 1. Paths
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, "000"),
        (1, "001"),
        (67, "067"),
        (999, "999"),
        (1000, "x001/000"),
        (1234, "x001/234"),
        (999_999, "x999/999"),
        (1_000_000, "x001/x000/000"),
        (1_234_067, "x001/x234/067"),
        (2**64 - 1, "x018/x446/x744/x073/x709/x551/615"),
    ],
)
def test_format_index(n, expected):
    assert format_index(n) == expected


@pytest.mark.parametrize(
    "ref, path",
    [
        (TileRef(0, 1_234_067), "tile/0/x001/x234/067"),
        (TileRef(None, 0, 5), "tile/entries/000.p/5"),
        (TileRef(2, 0, 1), "tile/2/000.p/1"),
        (TileRef(0, 1000), "tile/0/x001/000"),
        (TileRef(1, 0), "tile/1/000"),
        (TileRef(None, 1_234_067, 255), "tile/entries/x001/x234/067.p/255"),
        (TileRef(63, 7, 128), "tile/63/007.p/128"),
        (TileRef(None, 0), "tile/entries/000"),
    ],
)
def test_path_and_parse_round_trip(ref, path):
    assert ref.path() == path
    assert parse_tile_path(path) == ref
    assert ref.is_partial == (".p/" in path)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "tile",
        "tile/",
        "tile/0",
        "tile/0/",
        "tile//000",
        "tile/01/000",  # leading zero in level
        "tile/00/000",
        "tile/64/000",  # level > 63
        "tile/100/000",
        "tile/-1/000",  # negative level
        "tile/0/-01",
        "tile/0/-001",
        "tile/0/000.p/0",  # width 0
        "tile/0/000.p/256",  # width 256 is a full tile, not a partial one
        "tile/0/000.p/300",
        "tile/0/000.p/05",  # leading zero in width
        "tile/0/000.p/005",
        "tile/0/000.p/",  # no width
        "tile/0/000.p",
        "tile/0/000.p/-5",
        "tile/0/000.p/5/6",
        "tile/0/x000/001",  # non-canonical index (leading x000 group)
        "tile/0/x000/000",
        "tile/0/x000/x001/234",
        "tile/0/01",  # 2-digit group
        "tile/0/1",
        "tile/0/0001",  # 4-digit group
        "tile/0/x01/000",
        "tile/0/x0001/000",
        "tile/0/x001",  # last group must not carry x
        "tile/0/x001/",
        "tile/0/000/",  # trailing slash
        "tile/0/x001/000/",
        "tile/0/000/extra",  # extra parts
        "tile/0/000.p/5/",
        "x/tile/0/000",
        "/tile/0/000",
        "tile/0/000 ",
        " tile/0/000",
        "tile/0/000\n",
        "tile/0/001/002",  # group without x
        "tile/0/abc",
        "tile/0/000.p/1x",
        "tile/0/000.p/+5",
        "tile/+0/000",
        "tile/0/\u0660\u0660\u0660",  # non-ASCII digits
        "tile/\u0661/000",
        "tile/data/000",  # Go sumdb's old name for bundles
        "tile/Entries/000",
        "tile/entries/000.p/256",
        "tile/entries/000.p/0",
        "tile/entries/x000/000",
        "tile/entries/000.p/05",
        "TILE/0/000",
    ],
)
def test_parse_rejects_non_canonical(path):
    with pytest.raises(MalformedTilePath):
        parse_tile_path(path)


def test_malformed_tile_path_is_a_malformed_input():
    with pytest.raises(MalformedInput):
        parse_tile_path("tile/01/000")


@pytest.mark.parametrize(
    "path",
    [
        # Absurdly long numbers must be rejected as malformed paths, not crash with
        # ValueError (Python's 4300-digit int-conversion limit) -> HTTP 500.
        "tile/" + "1" * 5000 + "/000",
        "tile/0/000.p/" + "1" * 5000,
        "tile/0/" + "x123/" * 1500 + "000",
    ],
    ids=["huge-level", "huge-width", "huge-index"],
)
def test_parse_rejects_huge_numbers_as_malformed(path):
    with pytest.raises(MalformedTilePath):
        parse_tile_path(path)


def test_parse_accepts_boundaries():
    assert parse_tile_path("tile/63/000") == TileRef(63, 0)
    assert parse_tile_path("tile/0/000.p/255") == TileRef(0, 0, 255)
    assert parse_tile_path("tile/0/000.p/1") == TileRef(0, 0, 1)
    assert parse_tile_path("tile/0/x001/x000/000") == TileRef(0, 1_000_000)
    assert parse_tile_path("tile/entries/x999/999.p/17") == TileRef(None, 999_999, 17)


@given(
    level=st.one_of(st.none(), st.integers(0, MAX_TILE_LEVEL)),
    n=st.one_of(st.integers(0, 2000), st.integers(0, 2**64)),
    width=st.integers(1, TILE_WIDTH),
)
def test_path_round_trip_property(level, n, width):
    ref = TileRef(level, n, width)
    path = ref.path()
    assert parse_tile_path(path) == ref
    # Every non-final group is x + 3 digits, the final one 3 digits; no leading x000 group.
    index = path.split("/", 2)[2].split(".p/")[0]
    groups = index.split("/")
    assert all(len(g) == 4 and g[0] == "x" and g[1:].isdigit() for g in groups[:-1])
    assert len(groups[-1]) == 3 and groups[-1].isdigit()
    assert groups[0] != "x000"
    assert int("".join(g.lstrip("x") for g in groups)) == n


@given(st.text(alphabet="tile/entrisx0123456789.p-", max_size=30))
def test_parse_only_accepts_canonical_paths(path):
    try:
        ref = parse_tile_path(path)
    except MalformedTilePath:
        return
    assert ref.path() == path


@pytest.mark.parametrize(
    "kwargs",
    [
        {"level": -1, "n": 0},
        {"level": 64, "n": 0},
        {"level": 0, "n": -1},
        {"level": 0, "n": 0, "width": 0},
        {"level": 0, "n": 0, "width": 257},
        {"level": None, "n": 0, "width": 0},
    ],
)
def test_tileref_rejects_out_of_range(kwargs):
    with pytest.raises(InvalidRange):
        TileRef(**kwargs)


# ---------------------------------------------------------------------------
# 2. Tile arithmetic: the C2SP worked example, implied tiles
# ---------------------------------------------------------------------------


def test_c2sp_worked_example_70000():
    size = 70_000
    assert full_tile_count(size, 0) == 273
    assert partial_width(size, 0) == 112
    assert full_tile_count(size, 1) == 1
    assert partial_width(size, 1) == 17
    assert full_tile_count(size, 2) == 0
    assert partial_width(size, 2) == 1
    assert partial_width(size, 3) == 0
    assert tile_levels(size) == 3
    assert tiles_for_size(size) == [TileRef(0, 273, 112), TileRef(1, 1, 17), TileRef(2, 0, 1)]
    assert [r.path() for r in tiles_for_size(size)] == [
        "tile/0/273.p/112",
        "tile/1/001.p/17",
        "tile/2/000.p/1",
    ]
    # Every full tile is implied; the tile just past the last full one is not.
    for n in (0, 272):
        assert implied_by(TileRef(0, n), size)
    assert not implied_by(TileRef(0, 273), size)
    assert implied_by(TileRef(1, 0), size)
    assert not implied_by(TileRef(1, 1), size)
    assert not implied_by(TileRef(2, 0), size)
    for ref in tiles_for_size(size):
        assert implied_by(ref, size)
    assert not implied_by(TileRef(0, 273, 111), size)
    assert not implied_by(TileRef(0, 273, 113), size)
    assert not implied_by(TileRef(1, 1, 16), size)
    assert not implied_by(TileRef(2, 0, 2), size)
    # The entry bundles mirror the level-0 tiles.
    assert implied_by(TileRef(None, 272), size)
    assert implied_by(TileRef(None, 273, 112), size)
    assert not implied_by(TileRef(None, 273), size)


def test_size_256():
    assert full_tile_count(256, 0) == 1
    assert partial_width(256, 0) == 0
    assert full_tile_count(256, 1) == 0
    assert partial_width(256, 1) == 1
    assert tile_levels(256) == 2
    assert tiles_for_size(256) == [TileRef(1, 0, 1)]
    assert implied_by(TileRef(0, 0), 256)
    assert not implied_by(TileRef(0, 0), 255)
    assert implied_by(TileRef(1, 0, 1), 256)
    assert not implied_by(TileRef(0, 1, 1), 256)


@pytest.mark.parametrize(
    "size, levels, partials",
    [
        (0, 0, []),
        (1, 1, [TileRef(0, 0, 1)]),
        (255, 1, [TileRef(0, 0, 255)]),
        (257, 2, [TileRef(0, 1, 1), TileRef(1, 0, 1)]),
        (65535, 2, [TileRef(0, 255, 255), TileRef(1, 0, 255)]),
        (65536, 3, [TileRef(2, 0, 1)]),
        (65537, 3, [TileRef(0, 256, 1), TileRef(2, 0, 1)]),
        (2**24, 4, [TileRef(3, 0, 1)]),
    ],
)
def test_tiles_for_size_examples(size, levels, partials):
    assert tile_levels(size) == levels
    assert tiles_for_size(size) == partials


def test_sizes_that_imply_examples():
    assert TileRef(0, 273, 112).sizes_that_imply() == (70_000, 70_001)
    assert TileRef(1, 1, 17).sizes_that_imply() == (69_888, 70_144)
    assert TileRef(2, 0, 1).sizes_that_imply() == (65_536, 131_072)
    assert TileRef(None, 3, 5).sizes_that_imply() == (773, 774)
    # Full tiles: the range starts at the first size that contains them.
    assert TileRef(0, 0).min_tree_size() == 256
    assert TileRef(0, 0).sizes_that_imply()[0] == 256
    assert TileRef(1, 2).min_tree_size() == 3 * 65536
    assert TileRef(1, 2).sizes_that_imply()[0] == 3 * 65536


def _partial_is_implied_bruteforce(ref: TileRef, size: int) -> bool:
    level = ref.level or 0
    return full_tile_count(size, level) == ref.n and partial_width(size, level) == ref.width


def _full_is_implied_bruteforce(ref: TileRef, size: int) -> bool:
    return full_tile_count(size, ref.level or 0) > ref.n


@given(
    level=st.one_of(st.none(), st.integers(0, 3)),
    n=st.integers(0, 300),
    width=st.integers(1, TILE_WIDTH),
    data=st.data(),
)
def test_implied_by_matches_definition(level, n, width, data):
    ref = TileRef(level, n, width)
    hl = 8 * (level or 0)
    lo_guess = (n * TILE_WIDTH + width) << hl
    size = data.draw(
        st.one_of(
            st.integers(0, 2**40),
            st.integers(max(0, lo_guess - 3), lo_guess + 3),
            st.integers(max(0, lo_guess + (1 << hl) - 3), lo_guess + (1 << hl) + 3),
        )
    )
    if ref.is_partial:
        expected = _partial_is_implied_bruteforce(ref, size)
        assert implied_by(ref, size) == expected
        lo, hi = ref.sizes_that_imply()
        assert (lo <= size < hi) == expected
        assert _partial_is_implied_bruteforce(ref, lo)
        assert _partial_is_implied_bruteforce(ref, hi - 1)
        assert not _partial_is_implied_bruteforce(ref, lo - 1)
        assert not _partial_is_implied_bruteforce(ref, hi)
        if level is not None and expected:
            assert ref in tiles_for_size(size)
    else:
        assert implied_by(ref, size) == _full_is_implied_bruteforce(ref, size)
        assert implied_by(ref, ref.min_tree_size())
        assert not implied_by(ref, ref.min_tree_size() - 1)


@given(st.integers(0, 2**64))
def test_tiles_for_size_property(size):
    refs = tiles_for_size(size)
    assert len(refs) == sum(1 for lvl in range(9) if partial_width(size, lvl))
    for ref in refs:
        assert ref.is_partial
        assert implied_by(ref, size)
        assert ref.min_tree_size() <= size
        # Reassembling the size from the partial widths: sum(w * 256**l) == size mod 256**levels.
    assert sum(r.width << (8 * r.level) for r in refs) == size
    assert (size >> (8 * tile_levels(size))) == 0
    if size:
        assert (size >> (8 * (tile_levels(size) - 1))) > 0


# ---------------------------------------------------------------------------
# locate / expand / pack_interior / interior_offset / read_tile_hash
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "node, loc",
    [
        ((0, 0), NodeLocation(0, 0, 0, 0)),
        ((0, 300), NodeLocation(0, 1, 0, 44)),
        ((3, 40), NodeLocation(0, 1, 3, 8)),
        ((7, 5), NodeLocation(0, 2, 7, 1)),
        ((8, 5), NodeLocation(1, 0, 0, 5)),
        ((8, 273), NodeLocation(1, 1, 0, 17)),
        ((15, 3), NodeLocation(1, 1, 7, 1)),
        ((16, 0), NodeLocation(2, 0, 0, 0)),
    ],
)
def test_locate_examples(node, loc):
    assert locate(node) == loc


@given(level=st.integers(0, 40), n=st.integers(0, 2**30))
def test_locate_property(level, n):
    loc = locate((level, n))
    assert 0 <= loc.sublevel < 8
    assert loc.tile_level * 8 + loc.sublevel == level
    per_tile = TILE_WIDTH >> loc.sublevel
    assert 0 <= loc.position < per_tile
    assert loc.tile_n * per_tile + loc.position == n


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 100, 128, 255, 256])
def test_expand_pack_interior_and_offsets(width):
    hashes = LEAVES[:width]
    levels = expand(hashes)
    assert len(levels) == 9
    for k in range(9):
        span = 1 << k
        assert levels[k] == [mth(j * span, (j + 1) * span) for j in range(width >> k)]
    interior = pack_interior(levels)
    assert len(interior) == sum(width >> k for k in range(1, 8)) * HASH_SIZE
    if width == TILE_WIDTH:
        assert len(interior) == 254 * HASH_SIZE
        assert levels[8] == [mth(0, 256)]
    stored = b"".join(hashes)
    for k in range(8):
        for p in range(width >> k):
            if k:
                at = interior_offset(width, k, p)
                assert interior[at : at + HASH_SIZE] == levels[k][p]
            assert read_tile_hash(stored, interior, k, p) == levels[k][p]
        with pytest.raises(InvalidRange):
            read_tile_hash(stored, interior, k, width >> k)


# ---------------------------------------------------------------------------
# 6. read_tile_hash rejects hashes that are not complete in a partial tile
# ---------------------------------------------------------------------------


def test_read_tile_hash_rejects_incomplete_in_partial_tile():
    width = 5
    hashes = LEAVES[:width]
    stored = b"".join(hashes)
    interior = pack_interior(expand(hashes))
    # Complete: 5 at sub-level 0, 2 at sub-level 1, 1 at sub-level 2, none above.
    for k, complete in [(0, 5), (1, 2), (2, 1), (3, 0), (4, 0), (7, 0)]:
        for p in range(complete):
            assert read_tile_hash(stored, interior, k, p) == mth(p << k, (p + 1) << k)
        for p in (complete, complete + 1, 200 >> k):
            if p >= complete:
                with pytest.raises(InvalidRange):
                    read_tile_hash(stored, interior, k, p)
    # A node of a size-5 tree that is not complete there (leaves 4..5) is not readable.
    loc = locate((1, 2))
    with pytest.raises(InvalidRange):
        read_tile_hash(stored, interior, loc.sublevel, loc.position)
    # Nor is anything beyond the width of a one-hash tile.
    one = LEAVES[0]
    with pytest.raises(InvalidRange):
        read_tile_hash(one, pack_interior(expand([one])), 0, 1)
    with pytest.raises(InvalidRange):
        read_tile_hash(one, pack_interior(expand([one])), 1, 0)


# ---------------------------------------------------------------------------
# 3. extend: incremental tile building
# ---------------------------------------------------------------------------


class Log:
    """Simulated storage: tiles and packed interiors, as written by each TileUpdate."""

    def __init__(self):
        self.size = 0
        self.edge: dict[int, list[bytes]] = {}
        self.stored: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        self.root = EMPTY_ROOT

    def edge_from_storage(self) -> dict[int, list[bytes]]:
        edge = {}
        for level in range(tile_levels(self.size) + 1):
            if partial_width(self.size, level):
                key = (level, full_tile_count(self.size, level))
                edge[level] = split_hashes(self.stored[key][0])
            else:
                edge[level] = []
        return edge

    def append(self, count: int, *, from_storage: bool = False):
        old = self.size
        new = old + count
        assert new <= N_MAX
        edge_in = self.edge_from_storage() if from_storage else self.edge
        edge_before = copy.deepcopy(edge_in)
        update = extend(old, edge_in, LEAVES[old:new])
        assert edge_in == edge_before, "extend mutated its input edge"
        check_update(old, new, update)
        for key, hashes in update.tiles.items():
            self.stored[key] = (b"".join(hashes), pack_interior(update.expanded[key]))
        self.size, self.edge, self.root = new, update.edge, update.root
        return update

    def read_node(self, node) -> bytes:
        loc = locate(node)
        hashes, interior = self.stored[(loc.tile_level, loc.tile_n)]
        return read_tile_hash(hashes, interior, loc.sublevel, loc.position)

    def check_nodes(self, nodes):
        for node in nodes:
            assert self.read_node(node) == reader_node(node, self.size), node


def check_update(old: int, new: int, update) -> None:
    assert update.size == new
    # (a) root: pacspace.merkle over ListHashReader, and the naive definition.
    assert update.root == tree_hash(new, _reader())
    assert update.root == mth(0, new)
    # (c) the root is recomputable from the new edge alone.
    assert root_from_edge(new, update.edge) == update.root
    # Exactly the tiles whose contents changed are written.
    expected_keys = set()
    for level in range(tile_levels(new)):
        first = full_tile_count(old, level)
        last = (new >> (8 * level)) // TILE_WIDTH  # last tile index that may exist
        for n in range(first, last + 1):
            if tile_width_at(new, level, n) != tile_width_at(old, level, n):
                expected_keys.add((level, n))
    assert set(update.tiles) == expected_keys
    assert set(update.expanded) == expected_keys
    # (b) every tile written is the C2SP tile.
    for (level, n), hashes in update.tiles.items():
        width = tile_width_at(new, level, n)
        assert len(hashes) == width
        assert all(len(h) == HASH_SIZE for h in hashes)
        assert hashes == [c2sp_tile_hash(level, n, i) for i in range(width)], (level, n)
        levels = update.expanded[(level, n)]
        assert len(levels) == 9
        assert levels[0] == hashes
        for k in range(1, 9):
            per = TILE_WIDTH >> k
            want = [reader_node((8 * level + k, n * per + j), new) for j in range(width >> k)]
            assert levels[k] == want, (level, n, k)
    # The new edge: the partial tile at every level, empty where there is none.
    for level in range(tile_levels(new) + 1):
        width = partial_width(new, level)
        n = full_tile_count(new, level)
        assert update.edge.get(level, []) == [c2sp_tile_hash(level, n, i) for i in range(width)]
    assert all(not hashes for level, hashes in update.edge.items() if level > tile_levels(new))


def check_all_nodes(log: Log, sample: int | None = None, seed: int = 0) -> None:
    """(d) every complete node (or a sample, plus every node at level >= 6 and the right edge)."""
    size = log.size
    if sample is None:
        log.check_nodes(complete_nodes(size))
        return
    rng = random.Random(seed)
    nodes = set()
    for level in range(size.bit_length()):
        count = size >> level
        if level >= 6 or count <= sample // 8:
            nodes.update((level, n) for n in range(count))
        else:
            nodes.update((level, rng.randrange(count)) for _ in range(sample // 8))
            nodes.update((level, n) for n in range(max(0, count - 300), count))
    log.check_nodes(sorted(nodes))


def run_batches(batches, *, from_storage_every: int = 0, full_check_limit: int = 5000):
    log = Log()
    for step, count in enumerate(batches):
        from_storage = bool(from_storage_every) and step % from_storage_every == 1
        update = log.append(count, from_storage=from_storage)
        # (d) immediately, for every node held in the tiles this append wrote.
        touched = set(update.tiles)
        if log.size <= 1024:
            log.check_nodes(
                node for node in complete_nodes(log.size) if (locate(node).tile_level, locate(node).tile_n) in touched
            )
    total = sum(batches)
    assert log.size == total
    # (a) against a fresh ListHashReader over exactly these leaves.
    assert log.root == tree_hash(total, ListHashReader(LEAVES[:total]))
    if total <= full_check_limit:
        check_all_nodes(log)
    else:
        check_all_nodes(log, sample=2000, seed=total)
    return log


SMALL_SEQUENCES = [
    [0],
    [1],
    [0, 1, 0],
    [1, 1, 1],
    [255],
    [1] * 255,
    [128, 127],
    [254, 1],
    [256],
    [255, 1],
    [1, 255],
    [128, 128],
    [1] * 256,
    [257],
    [256, 1],
    [1, 256],
    [255, 2],
    [100, 100, 57],
    [1] * 300,
    [511],
    [512],
    [255, 257],
    [513],
    [256, 256, 1],
    [3, 250, 3, 1, 255, 1, 2],
    [1000, 24, 1],
    [4097],
]


@pytest.mark.parametrize("batches", SMALL_SEQUENCES, ids=lambda b: f"{sum(b)}:{len(b)}x")
def test_extend_small_sequences(batches):
    run_batches(batches)


LARGE_SEQUENCES = [
    [65535],
    [65280, 255],
    [255, 65280],
    [65536],
    [65535, 1],
    [1, 65535],
    [32768, 32768],
    [256] * 256,
    [65537],
    [65536, 1],
    [1, 65536],
    [65535, 2],
    [257, 65280],
    [70_000],
    [69_999, 1],
]


@pytest.mark.parametrize("batches", LARGE_SEQUENCES, ids=lambda b: f"{sum(b)}:{b[:3]}{'...' if len(b) > 3 else ''}")
def test_extend_large_sequences(batches):
    log = run_batches(batches)
    # A level-2 tile exists from 65,536 leaves on, holding the root of the first 65,536.
    assert ((2, 0) in log.stored) == (log.size >= 65536)
    if log.size >= 65536:
        assert log.stored[(2, 0)][0] == mth(0, 65536)
    else:
        assert len(log.stored[(1, 0)][0]) == 255 * HASH_SIZE


def test_extend_worked_example_tiles():
    log = run_batches([70_000])
    widths = {key: len(hashes) // HASH_SIZE for key, (hashes, _) in log.stored.items()}
    assert widths[(0, 273)] == 112
    assert widths[(1, 1)] == 17
    assert widths[(2, 0)] == 1
    assert all(widths[(0, n)] == TILE_WIDTH for n in range(273))
    assert widths[(1, 0)] == TILE_WIDTH
    assert len(log.stored) == 274 + 2 + 1
    assert [len(log.edge[level]) for level in range(3)] == [112, 17, 1]
    assert log.stored[(1, 0)][0] == b"".join(mth(i * 256, (i + 1) * 256) for i in range(256))
    assert len(log.stored[(1, 0)][0]) == FULL_TILE_BYTES


def test_extend_with_edge_read_back_from_storage():
    """Rebuilding the edge from stored tile bytes (a restart) gives the same results."""
    run_batches([1, 254, 1, 256, 300, 44, 255, 1, 1000, 3], from_storage_every=2)
    run_batches([65535, 1, 256, 1], from_storage_every=2, full_check_limit=0)


def test_extend_empty_append_changes_nothing():
    log = Log()
    log.append(300)
    before = (log.size, copy.deepcopy(log.edge), log.root)
    update = log.append(0)
    assert update.tiles == {}
    assert update.expanded == {}
    assert update.size == before[0]
    assert update.root == before[2]
    assert {k: v for k, v in update.edge.items() if v} == {k: v for k, v in before[1].items() if v}
    empty = extend(0, {}, [])
    assert empty.root == EMPTY_ROOT
    assert empty.tiles == {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(st.integers(0, 3), st.integers(250, 260), st.integers(0, 700)),
        min_size=1,
        max_size=12,
    ).filter(lambda b: sum(b) <= 3000)
)
def test_extend_hypothesis_batches(batches):
    run_batches(batches, from_storage_every=3)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=5).map(lambda parts: sorted(set(parts))))
def test_extend_root_is_split_independent(cuts):
    """Any batch split of the same leaves produces the same tiles and root."""
    total = cuts[-1]
    batches = [b - a for a, b in zip([0] + cuts[:-1], cuts)]
    one = Log()
    one.append(total)
    many = Log()
    for count in batches:
        many.append(count)
    assert many.root == one.root
    assert {k: v for k, v in many.edge.items() if v} == {k: v for k, v in one.edge.items() if v}
    assert many.stored == one.stored


# ---------------------------------------------------------------------------
# 4. extend and root_from_edge reject an edge that does not match the size
# ---------------------------------------------------------------------------


def _good_edge(size):
    log = Log()
    if size:
        log.append(size)
    return log.edge


@pytest.mark.parametrize(
    "size, edge",
    [
        (0, {0: [LEAVES[0]]}),
        (5, {0: LEAVES[:4]}),
        (5, {0: LEAVES[:6]}),
        (5, {}),
        (5, {0: LEAVES[:5], 1: [LEAVES[0]]}),
        (255, {0: LEAVES[:254]}),
        (256, {0: LEAVES[:256], 1: [mth(0, 256)]}),  # a full tile is not part of the edge
        (256, {0: []}),  # missing the level-1 partial
        (256, {0: [], 1: []}),
        (256, {0: [], 1: [mth(0, 256)] * 2}),
        (300, {0: LEAVES[256:300], 1: []}),
        (300, {0: LEAVES[256:299], 1: [mth(0, 256)]}),
        (65536, {0: [], 1: [], 2: []}),
        (65536, {0: [], 1: [mth(0, 256)] * 255, 2: [mth(0, 65536)]}),
    ],
)
def test_extend_rejects_mismatched_edge(size, edge):
    with pytest.raises(InvalidRange):
        extend(size, edge, LEAVES[size : size + 1] if size < N_MAX else [])
    with pytest.raises(InvalidRange):
        extend(size, edge, [])
    with pytest.raises(InvalidRange):
        root_from_edge(size, edge)


JUNK = b"\xee" * HASH_SIZE


@pytest.mark.parametrize(
    "size, edge",
    [
        (0, {1: [JUNK]}),
        (0, {0: [], 2: [JUNK]}),
        (5, {0: LEAVES[:5], 2: [JUNK]}),
        (300, {0: LEAVES[256:300], 1: [mth(0, 256)], 3: [JUNK]}),
    ],
    ids=["0+L1", "0+L2", "5+L2", "300+L3"],
)
def test_extend_rejects_edge_with_hashes_above_the_tree(size, edge):
    """An edge holding a partial tile at a level the tree does not reach does not match the size.

    Left unchecked, the stray hash is prepended to that level's tile once the tree
    grows to it: e.g. extend(0, {1: [junk]}, 256 leaves) writes tile (1, 0) as
    [junk, MTH(D[0:256])] and returns root == junk.
    """
    with pytest.raises(InvalidRange):
        extend(size, edge, LEAVES[size : size + 256])
    with pytest.raises(InvalidRange):
        root_from_edge(size, edge)


def test_extend_accepts_good_edges():
    for size in (0, 1, 255, 256, 257, 300, 65535):
        edge = _good_edge(size)
        assert root_from_edge(size, edge) == mth(0, size)
        update = extend(size, edge, LEAVES[size : size + 1])
        assert update.root == mth(0, size + 1)


# ---------------------------------------------------------------------------
# 5. Entry bundles
# ---------------------------------------------------------------------------


def test_bundle_encoding_bytes():
    assert encode_bundle([]) == b""
    assert encode_bundle([b""]) == b"\x00\x00"
    assert encode_bundle([b"ab", b""]) == b"\x00\x02ab\x00\x00"
    big = b"\x07" * MAX_ENTRY_SIZE
    assert encode_bundle([big]) == b"\xff\xff" + big
    assert encode_bundle([b"x" * 256]) == b"\x01\x00" + b"x" * 256


def test_bundle_round_trip_with_empty_and_max_entries():
    entries = [b"", b"a", b"", b"\x00\x01\x02", b"z" * MAX_ENTRY_SIZE, b"", b"last"]
    data = encode_bundle(entries)
    assert len(data) == sum(2 + len(e) for e in entries)
    assert list(iter_bundle(data)) == entries
    assert list(iter_bundle(encode_bundle(e for e in entries))) == entries  # any iterable
    assert list(iter_bundle(b"")) == []
    assert list(iter_bundle(encode_bundle([b""] * 256))) == [b""] * 256


def test_bundle_rejects_oversized_entry():
    assert MAX_ENTRY_SIZE == 65_535
    with pytest.raises(EntryTooLarge):
        encode_bundle([b"x" * 65_536])
    with pytest.raises(EntryTooLarge):
        encode_bundle([b"ok", b"x" * 100_000])


@given(st.lists(st.binary(max_size=300), max_size=40))
def test_bundle_round_trip_property(entries):
    data = encode_bundle(entries)
    assert list(iter_bundle(data)) == entries
    for w in range(len(entries) + 1):
        assert bundle_prefix(data, w) == encode_bundle(entries[:w])
    with pytest.raises(InvalidRange):
        bundle_prefix(data, len(entries) + 1)


def test_bundle_prefix_exact():
    entries = [b"", b"one", b"x" * MAX_ENTRY_SIZE, b"", b"three"]
    data = encode_bundle(entries)
    for w in range(len(entries) + 1):
        prefix = bundle_prefix(data, w)
        assert prefix == encode_bundle(entries[:w])
        assert list(iter_bundle(prefix)) == entries[:w]
    assert bundle_prefix(data, len(entries)) == data
    for w in (len(entries) + 1, 256):
        with pytest.raises(InvalidRange):
            bundle_prefix(data, w)
    assert bundle_prefix(b"", 0) == b""
    with pytest.raises(InvalidRange):
        bundle_prefix(b"", 1)


def test_truncated_bundles_raise():
    entries = [b"abc", b"", b"\xff" * 300, b"z"]
    data = encode_bundle(entries)
    boundaries = {0}
    at = 0
    for e in entries:
        at += 2 + len(e)
        boundaries.add(at)
    for cut in range(len(data)):
        truncated = data[:cut]
        if cut in boundaries:
            whole = sorted(boundaries).index(cut)
            assert list(iter_bundle(truncated)) == entries[:whole]
        else:
            with pytest.raises(InvalidRange):
                list(iter_bundle(truncated))
            with pytest.raises(InvalidRange):
                bundle_prefix(truncated, len(entries))
    # A length prefix promising more than there is.
    with pytest.raises(InvalidRange):
        list(iter_bundle(struct.pack(">H", 10) + b"short"))
    with pytest.raises(InvalidRange):
        bundle_prefix(struct.pack(">H", 10) + b"short", 1)
    with pytest.raises(InvalidRange):
        list(iter_bundle(b"\x00"))
    with pytest.raises(InvalidRange):
        bundle_prefix(b"\x00", 1)
    with pytest.raises(InvalidRange):
        bundle_prefix(encode_bundle([b"ok"]) + b"\x00", 2)


def test_node_hash_reference_agrees():
    """Sanity: the naive reference used above agrees with pacspace.merkle on a few trees."""
    for size in (1, 2, 3, 7, 256, 257, 1000):
        assert mth(0, size) == tree_hash(size, ListHashReader(LEAVES[:size]))
    assert mth(0, 2) == node_hash(LEAVES[0], LEAVES[1])
