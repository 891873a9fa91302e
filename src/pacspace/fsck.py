"""Full offline check of a log's storage: every tile recomputed from the entries, every checkpoint re-verified.

Unlike the start-up check (O(log n)), this reads everything once. It works on a
read-only connection and can run beside a live server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from .checkpoint import SignedCheckpoint, open_checkpoint
from .errors import ObjectCorrupt, PacspaceError
from .merkle import HASH_SIZE, consistency_proof, leaf_hash, tree_hash, verify_consistency
from .note import Ed25519Verifier
from .records.seal import record_tag
from .storage.base import RecordTables
from .storage.logtables import LogTables
from .tiles import TILE_WIDTH, extend, iter_bundle, pack_interior, tiles_for_size

# Recompute the tree this many bundles at a time: bounded memory, few calls.
BUNDLES_PER_STEP = 16

Progress = Callable[[str, int, int], None]


@dataclass
class FsckReport:
    size: int = 0
    entries: int = 0
    tiles: int = 0
    checkpoints: int = 0
    records: int = 0
    objects: str | None = None  # the object store checked too, if the log has one
    faults: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults


def fsck(store: LogTables, log_key: Ed25519Verifier, progress: Progress | None = None) -> FsckReport:
    report = FsckReport()
    # One snapshot for the whole check: a live server may append while we read.
    with store.snapshot():
        try:
            latest = open_checkpoint(store.latest_checkpoint(), log_key)
        except PacspaceError as exc:
            report.faults.append(f"latest checkpoint: {exc}")
            return report
        report.size = latest.size
        # A store that cannot be read (down, no credentials here) raises: that proves nothing about the log.
        _check_tree(store, latest.size, report, progress)
        faults, warnings = store.check_objects(latest.size, lambda note: open_checkpoint(note, log_key).size)
        report.faults += faults
        report.warnings += warnings
        report.objects = store.object_store()
        if report.ok:
            _check_checkpoints(store, log_key, report, progress)
    return report


def _check_tree(store: LogTables, size: int, report: FsckReport, progress: Progress | None) -> None:
    """Rebuild every tile from the entry bundles and compare with what is stored."""
    bundles = (size + TILE_WIDTH - 1) // TILE_WIDTH
    indexed, rows, tags_indexed = store.index_coverage()
    edge: dict[int, list[bytes]] = {}
    built = 0
    for start in range(0, bundles, BUNDLES_PER_STEP):
        hashes: list[bytes] = []
        for n in range(start, min(start + BUNDLES_PER_STEP, bundles)):
            expected = min(TILE_WIDTH, size - n * TILE_WIDTH)
            try:
                data = store.read_bundle(n)
            except ObjectCorrupt as exc:
                report.faults.append(f"entry bundle {n}: {exc}")
                return
            entries = [] if data is None else list(iter_bundle(data))
            if len(entries) != expected:
                report.faults.append(f"entry bundle {n}: {len(entries)} entries stored, {expected} expected")
                return
            for i, entry in enumerate(entries):
                h = leaf_hash(entry)
                hashes.append(h)
                if n * TILE_WIDTH + i < indexed:
                    _check_leaf_index(store, h, n * TILE_WIDTH + i, report)
                tag = record_tag(entry)
                if tag is not None and n * TILE_WIDTH + i < tags_indexed:
                    _check_tag(store, tag, n * TILE_WIDTH + i, report)
        update = extend(built, edge, hashes)
        built, edge = update.size, update.edge
        report.entries = built
        for (level, n), tile in update.tiles.items():
            if len(tile) == TILE_WIDTH or built == size:
                _compare_tile(store, level, n, b"".join(tile), pack_interior(update.expanded[(level, n)]), report)
        if report.faults:
            return
        if progress:
            progress("entries", built, size)
    expected_tiles = sum(
        (size >> (8 * (level + 1))) for level in range(8) if size >> (8 * (level + 1))
    ) + len(tiles_for_size(size))
    stored_tiles = sum(1 for _ in store.tile_rows())
    if stored_tiles != expected_tiles:
        report.faults.append(f"{stored_tiles} tiles stored, the tree of size {size} has {expected_tiles}")
    report.tiles = stored_tiles
    if rows != indexed:
        report.faults.append(f"the leaf index holds {rows} rows but claims {indexed} leaves")
    if indexed > size:
        report.warnings.append("the leaf index is ahead of the log (a restored log.db?); the server rebuilds it when it starts")
    elif indexed < size:
        report.warnings.append(
            f"the leaf index covers {indexed:,} of {size:,} leaves; the server re-indexes the rest when it starts"
        )
    if tags_indexed > size:
        report.warnings.append("the tag index is ahead of the log (a restored log.db?); the server rebuilds it when it starts")
    elif tags_indexed < size:
        report.warnings.append(
            f"the tag index covers {tags_indexed:,} of {size:,} leaves; the server re-indexes the rest when it starts"
        )


def _check_leaf_index(store: LogTables, h: bytes, index: int, report: FsckReport) -> None:
    found = store.find_leaf(h, index + 1)
    # find_leaf answers with the first index of a repeated entry.
    if found is None or found > index or (found != index and store.read_hashes([(0, found)])[0] != h):
        report.faults.append(f"leaf index: entry {index} is not found by its hash")


def _check_tag(store: LogTables, tag: bytes, index: int, report: FsckReport) -> None:
    """The tag index finds the record entry at ``index`` by its tag, and no earlier entry holds that tag."""
    candidates = store.tag_candidates([tag]).get(0, [])
    holders = [i for i in candidates if i == index or record_tag(store.read_entries(i, i + 1)[0]) == tag]
    if index not in holders:
        report.faults.append(f"tag index: entry {index} is not found by its tag")
    elif holders[0] != index:
        report.faults.append(f"entry {index} repeats the tag of entry {holders[0]}: a tag must be in the log once")


def _compare_tile(store: LogTables, level: int, n: int, hashes: bytes, interior: bytes, report: FsckReport) -> None:
    row = store.read_tile_row(level, n)
    width = len(hashes) // HASH_SIZE
    if row is None:
        report.faults.append(f"tile {level}/{n} (width {width}) is missing")
    elif row[0] != hashes:
        report.faults.append(f"tile {level}/{n}: stored hashes differ from those of the entries (width {width})")
    elif row[1] != interior:
        report.faults.append(f"tile {level}/{n}: stored interior hashes differ from those of the entries")


def _check_checkpoints(store: LogTables, log_key: Ed25519Verifier, report: FsckReport, progress: Progress | None) -> None:
    """Each checkpoint: valid signature, root reproduced by the tiles, consistent with the one before."""
    total = store.checkpoint_count()
    previous: SignedCheckpoint | None = None
    for i, note in enumerate(store.checkpoints()):
        try:
            checkpoint = open_checkpoint(note, log_key)
        except PacspaceError as exc:
            report.faults.append(f"checkpoint #{i}: {exc}")
            continue
        if tree_hash(checkpoint.size, store) != checkpoint.root_hash:
            report.faults.append(f"checkpoint at size {checkpoint.size}: root does not match the stored tiles")
        if previous is not None:
            try:
                proof = consistency_proof(previous.size, checkpoint.size, store)
                verify_consistency(previous.size, checkpoint.size, previous.root_hash, checkpoint.root_hash, proof)
            except PacspaceError as exc:
                report.faults.append(
                    f"checkpoints at sizes {previous.size} and {checkpoint.size} are not consistent: {exc}"
                )
            if checkpoint.timestamp < previous.timestamp:
                report.warnings.append(
                    f"checkpoint at size {checkpoint.size} has an earlier signed time than the one before"
                )
        previous = checkpoint
        report.checkpoints += 1
        if progress and (i % 1000 == 0 or i + 1 == total):
            progress("checkpoints", i + 1, total)


def fsck_records(store: LogTables, records: RecordTables, report: FsckReport) -> None:
    """Every stored record: its blob hashes to its ct_hash, its entry is the leaf at its index, and each
    relationship's seqs run gapless from 0. Unsettled rows are a warning: the server settles them at start."""
    relationship = None
    expected = 0
    unsettled = newer = 0
    for rec in records.iter_records():
        if rec.relationship != relationship:
            relationship, expected = rec.relationship, 0
        if rec.seq != expected:
            report.faults.append(f"relationship {rec.relationship}: seq {rec.seq} follows {expected - 1}")
        expected = rec.seq + 1
        name = f"relationship {rec.relationship} seq {rec.seq}"
        if rec.blob is None:
            report.faults.append(f"{name}: its blob is missing")
        elif hashlib.sha256(rec.blob).digest() != rec.ct_hash:
            report.faults.append(f"{name}: the blob does not match its ct_hash")
        if rec.index is None:
            unsettled += 1
        elif rec.checkpoint_size is None or rec.index >= rec.checkpoint_size:
            report.faults.append(f"{name}: its checkpoint (size {rec.checkpoint_size}) does not cover its index {rec.index}")
        elif rec.checkpoint_size > report.size:
            newer += 1  # settled by a live server after the log was read: nothing to check it against
        elif not store.checkpoint_in(rec.checkpoint_size, rec.checkpoint_size + 1):
            report.faults.append(f"{name}: the log has no checkpoint of size {rec.checkpoint_size}, which it names")
        elif store.read_hashes([(0, rec.index)])[0] != leaf_hash(rec.entry):
            report.faults.append(f"{name}: its entry is not the leaf at index {rec.index}")
        report.records += 1
    if unsettled:
        report.warnings.append(f"{unsettled} record(s) await settling; the server settles or drops them when it starts")
    if newer:
        report.warnings.append(
            f"{newer} record(s) were committed after the log was read and were not checked against it "
            "(the server is running); run fsck again to check them"
        )
