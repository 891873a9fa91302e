"""The sequencer and the start-up trust check, on real SQLite files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time

import pytest
from helpers import entry, new_log

from pacspace.checkpoint import Checkpoint, sign_checkpoint
from pacspace.datadir import WriteLock, init_log, load_signer, load_state
from pacspace.errors import (
    CheckpointConflict,
    EntryTooLarge,
    LogExists,
    MalformedInput,
    LogLocked,
    PoolFull,
    SequencerStopped,
    UntrustedState,
)
from pacspace.fsck import fsck
from pacspace.merkle import ListHashReader, leaf_hash, tree_hash, verify_inclusion
from pacspace.sequencer import Sequencer, SequencerConfig
from pacspace.storage.sqlite import SqliteLog


class Running:
    """A sequencer task over a real data directory, for one test."""

    def __init__(self, path, config=SequencerConfig(pool_interval=0.01), clock=time.time):
        self.signer = load_signer(path)
        self.store = SqliteLog.open(path)
        self.sequencer = Sequencer(self.store, self.signer, load_state(self.store, self.signer), config, clock=clock)

    async def __aenter__(self):
        self.task = asyncio.create_task(self.sequencer.run())
        return self.sequencer

    async def __aexit__(self, *exc):
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass
        self.store.close()


async def test_concurrent_submissions_get_consecutive_indexes_and_valid_proofs(tmp_path):
    new_log(tmp_path)
    async with Running(tmp_path) as seq:
        results = await asyncio.gather(*(seq.submit(entry(i)) for i in range(500)))
        assert sorted(r.index for r in results) == list(range(500))
        latest = seq.latest
        assert latest.size == 500
        for r in results:
            assert r.checkpoint.size >= r.index + 1
            proof = r.inclusion_proof()
            assert proof == seq.inclusion_proof(r.index, r.checkpoint.size)
            verify_inclusion(r.index, r.checkpoint.size, r.leaf_hash, proof, r.checkpoint.root_hash)
        by_index = {r.index: r.leaf_hash for r in results}
        hashes = [by_index[i] for i in range(500)]
        assert latest.root_hash == tree_hash(500, ListHashReader(hashes))


async def test_every_checkpoint_carries_a_signed_time_from_the_clock(tmp_path):
    new_log(tmp_path)
    async with Running(tmp_path, clock=lambda: 1_900_000_000.7) as seq:
        result = await seq.submit(entry(1))
    assert result.checkpoint.timestamp == 1_900_000_000


async def test_restart_continues_the_same_tree(tmp_path):
    new_log(tmp_path)
    async with Running(tmp_path) as seq:
        first = await seq.submit_many([entry(i) for i in range(300)])
    async with Running(tmp_path) as seq:
        assert seq.latest.size == 300
        second = await seq.submit_many([entry(i) for i in range(300, 700)])
    assert second[0].index == 300
    hashes = [r.leaf_hash for r in first + second]
    assert second[-1].checkpoint.root_hash == tree_hash(700, ListHashReader(hashes))


async def test_full_pool_is_refused_with_retry_after(tmp_path):
    new_log(tmp_path)
    config = SequencerConfig(pool_interval=0.5, batch_size=10, pool_capacity=10)
    runner = Running(tmp_path, config)
    seq = runner.sequencer
    # Not running yet: submissions wait in the pool.
    waiting = [asyncio.create_task(seq.submit(entry(i))) for i in range(10)]
    await asyncio.sleep(0)
    with pytest.raises(PoolFull) as info:
        await seq.submit(entry(99))
    assert info.value.retry_after >= 1
    assert seq.metrics.pool_rejections_total == 1
    async with runner:
        results = await asyncio.gather(*waiting)
    assert sorted(r.index for r in results) == list(range(10))


async def test_oversized_entry_is_refused_and_nothing_appended(tmp_path):
    new_log(tmp_path)
    async with Running(tmp_path) as seq:
        with pytest.raises(EntryTooLarge):
            await seq.submit_many([entry(0), b"x" * 65536])
        with pytest.raises(MalformedInput):
            await seq.submit_many([entry(0), "not bytes"])
        assert seq.latest.size == 0
        assert (await seq.submit(entry(0))).index == 0


async def test_a_cancelled_submitter_does_not_stop_its_entry_being_committed(tmp_path):
    new_log(tmp_path)
    async with Running(tmp_path, SequencerConfig(pool_interval=0.2)) as seq:
        task = asyncio.create_task(seq.submit(entry(0)))
        await asyncio.sleep(0.01)
        task.cancel()
        other = await seq.submit(entry(1))
    assert other.index == 1 and other.checkpoint.size == 2


async def test_a_failed_commit_stops_the_sequencer_and_fails_waiters(tmp_path):
    new_log(tmp_path)
    runner = Running(tmp_path)
    async with runner as seq:
        await seq.submit(entry(0))
        # Another writer sneaks a checkpoint in behind the sequencer's back.
        conn = sqlite3.connect(tmp_path / "log.db")
        conn.execute("INSERT INTO checkpoints VALUES (5, x'00')")
        conn.commit()
        conn.close()
        with pytest.raises(SequencerStopped):
            await seq.submit(entry(1))
        with pytest.raises(CheckpointConflict):
            await runner.task
        with pytest.raises(SequencerStopped):
            await seq.submit(entry(2))
    assert seq.latest.size == 1


async def test_refuses_to_sign_a_tree_inconsistent_with_the_last_checkpoint(tmp_path):
    new_log(tmp_path)
    runner = Running(tmp_path)
    async with runner as seq:
        await seq.submit_many([entry(i) for i in range(10)])
        # Corrupt the in-memory right edge: the next tree would not extend the signed one.
        edge = seq.state.edge
        edge[0][3] = leaf_hash(b"rewritten history")
        with pytest.raises(SequencerStopped):
            await seq.submit(entry(10))
        with pytest.raises(UntrustedState, match="not consistent"):
            await runner.task
    store = SqliteLog.open(tmp_path)
    assert load_state(store, load_signer(tmp_path)).size == 10
    store.close()


def _tamper(path, sql, *params):
    conn = sqlite3.connect(path / "log.db")
    conn.execute(sql, params)
    conn.commit()
    conn.close()


async def _grow(path, n):
    async with Running(path) as seq:
        await seq.submit_many([entry(i) for i in range(n)])


@pytest.mark.parametrize(
    "sql",
    [
        # A right-edge tile that no longer hashes to the checkpoint's root.
        "UPDATE tiles SET hashes = zeroblob(length(hashes)) WHERE level = 0 AND n = 1",
        # A right-edge tile of the wrong width.
        "UPDATE tiles SET hashes = substr(hashes, 1, 32) WHERE level = 0 AND n = 1",
        # An entry bundle past the checkpoint.
        "INSERT INTO bundles VALUES (9, x'0000')",
        # A latest checkpoint whose signature does not verify.
        "UPDATE checkpoints SET note = replace(note, 'example.com', 'example.org') WHERE size = 300",
    ],
)
async def test_refuses_to_start_on_untrusted_state(tmp_path, sql):
    new_log(tmp_path)
    await _grow(tmp_path, 300)
    _tamper(tmp_path, sql)
    store = SqliteLog.open(tmp_path)
    with pytest.raises(UntrustedState):
        load_state(store, load_signer(tmp_path))
    store.close()


async def test_refuses_a_checkpoint_signed_by_another_key(tmp_path):
    new_log(tmp_path)
    other = tmp_path / "other"
    signer = init_log(other, "example.com/test-log", 1)
    forged = sign_checkpoint(Checkpoint("example.com/test-log", 0, tree_hash(0, ListHashReader([]))), signer, 2)
    _tamper(tmp_path, "UPDATE checkpoints SET note = ? WHERE size = 0", forged.format())
    store = SqliteLog.open(tmp_path)
    with pytest.raises(UntrustedState):
        load_state(store, load_signer(tmp_path))
    store.close()


async def test_fsck_passes_a_sound_log_and_finds_each_fault(tmp_path):
    new_log(tmp_path)
    async with Running(tmp_path) as seq:
        for n in (1, 255, 256, 257, 1000, 70000):
            await seq.submit_many([entry(i) for i in range(seq.latest.size, n)])
    signer = load_signer(tmp_path)
    store = SqliteLog.open(tmp_path, readonly=True)
    report = fsck(store, signer.verifier)
    store.close()
    assert report.ok, report.faults
    assert report.entries == 70000 and report.checkpoints == 7
    for case, (sql, expect) in enumerate([
        ("UPDATE bundles SET data = CAST(substr(data, 1, 10) || x'ff' || substr(data, 12) AS BLOB) WHERE n = 5", "tile 0/5"),
        ("UPDATE tiles SET interior = zeroblob(length(interior)) WHERE level = 0 AND n = 7", "interior"),
        ("UPDATE checkpoints SET note = replace(note, 'example.com', 'example.org') WHERE size = 256", "checkpoint"),
        ("leaves.db: DELETE FROM leaves WHERE idx = 77", "leaf index"),
    ]):
        copy = tmp_path / f"copy{case}"
        copy.mkdir()
        for name in ("log.db", "log.key", "leaves.db"):
            (copy / name).write_bytes((tmp_path / name).read_bytes())
        os.chmod(copy / "log.key", 0o600)
        if sql.startswith("leaves.db: "):
            conn = sqlite3.connect(copy / "leaves.db")
            conn.execute(sql.removeprefix("leaves.db: "))
            conn.commit()
            conn.close()
        else:
            _tamper(copy, sql)
        store = SqliteLog.open(copy, readonly=True)
        report = fsck(store, signer.verifier)
        store.close()
        assert not report.ok, sql
        assert any(expect in fault for fault in report.faults), (sql, report.faults)


async def test_fsck_finds_a_repeated_record_tag_and_a_tag_index_that_misses_one(tmp_path):
    """The sequencer takes any entries (admission is the records layer's): a log that repeats a tag is a fault."""
    from pacspace.records.seal import entry_from_ct_hash

    new_log(tmp_path)
    tags = [os.urandom(32) for _ in range(300)]
    records = [entry_from_ct_hash(t, os.urandom(32)) for t in tags]
    async with Running(tmp_path) as seq:
        await seq.submit_many(records)
        seq.store.maintain()  # flush the indexes to leaves.db and tags.db
    signer = load_signer(tmp_path)

    def check(directory):
        store = SqliteLog.open(directory, readonly=True)
        try:
            return fsck(store, signer.verifier)
        finally:
            store.close()

    assert check(tmp_path).ok
    copy = tmp_path / "lost-row"
    copy.mkdir()
    for name in ("log.db", "log.key", "leaves.db", "tags.db"):
        (copy / name).write_bytes((tmp_path / name).read_bytes())
    conn = sqlite3.connect(copy / "tags.db")
    conn.execute("DELETE FROM leaves WHERE idx = 41")
    conn.commit()
    conn.close()
    report = check(copy)
    assert report.faults == ["tag index: entry 41 is not found by its tag"]
    async with Running(tmp_path) as seq:
        await seq.submit_many([entry_from_ct_hash(tags[7], os.urandom(32))])
        seq.store.maintain()
    report = check(tmp_path)
    assert report.faults == ["entry 300 repeats the tag of entry 7: a tag must be in the log once"]


def test_init_refuses_an_existing_log_and_key_is_private(tmp_path):
    new_log(tmp_path)
    assert (tmp_path / "log.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(LogExists):
        init_log(tmp_path, "example.com/other", 1)


def test_a_readable_key_file_is_refused(tmp_path):
    new_log(tmp_path)
    os.chmod(tmp_path / "log.key", 0o644)
    with pytest.raises(UntrustedState, match="chmod 600"):
        load_signer(tmp_path)


def test_one_writer_per_data_directory(tmp_path):
    new_log(tmp_path)
    lock = WriteLock(tmp_path)
    with pytest.raises(LogLocked):
        WriteLock(tmp_path)
    lock.close()
    WriteLock(tmp_path).close()


async def test_leaf_index_is_rebuilt_after_loss_and_finds_every_leaf(tmp_path):
    new_log(tmp_path)
    async with Running(tmp_path) as seq:
        results = await seq.submit_many([entry(i) for i in range(3000)])
        # Found at once, before any flush to leaves.db.
        assert seq.store.find_leaf(results[2999].leaf_hash, 3000) == 2999
    # Lose the derived index entirely (as a crash before any flush could).
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / ("leaves.db" + suffix)).unlink(missing_ok=True)
    store = SqliteLog.open(tmp_path)
    assert store.find_leaf(results[5].leaf_hash, 3000) is None
    load_state(store, load_signer(tmp_path))
    for r in results[::97]:
        assert store.find_leaf(r.leaf_hash, 3000) == r.index
    assert store.find_leaf(leaf_hash(b"never appended"), 3000) is None
    store.close()
    # After a clean close everything is flushed: a read-only open sees the full index.
    store = SqliteLog.open(tmp_path, readonly=True)
    assert store.index.stored_size_and_rows() == (3000, 3000)
    store.close()


async def test_a_repeated_entry_is_found_at_its_first_index(tmp_path):
    new_log(tmp_path)
    async with Running(tmp_path) as seq:
        await seq.submit_many([entry(1), entry(2), entry(1)])
        assert seq.store.find_leaf(leaf_hash(entry(1)), 3) == 0


def test_an_interrupted_init_is_completed_with_its_key(tmp_path):
    vkey = new_log(tmp_path)
    # As if the process died after writing the key, before the database existed.
    for name in ("log.db", "log.db-wal", "log.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(LogExists, match="unfinished"):
        init_log(tmp_path, "example.com/another-name", 1)
    signer = init_log(tmp_path, "example.com/test-log", 1)
    assert signer.verifier.vkey() == vkey
    store = SqliteLog.open(tmp_path)
    assert load_state(store, signer).size == 0
    store.close()


async def test_a_tampered_partial_bundle_is_refused_at_start(tmp_path):
    new_log(tmp_path)
    await _grow(tmp_path, 300)
    # Same entry count, different bytes: the next batch would rewrite it from the bad entries.
    _tamper(tmp_path, "UPDATE bundles SET data = CAST(substr(data, 1, 10) || x'ee' || substr(data, 12) AS BLOB) WHERE n = 1")
    store = SqliteLog.open(tmp_path)
    with pytest.raises(UntrustedState, match="partial entry bundle"):
        load_state(store, load_signer(tmp_path))
    store.close()


async def test_signed_time_never_goes_backwards(tmp_path):
    new_log(tmp_path)
    async with Running(tmp_path, clock=lambda: 2_000_000_000) as seq:
        first = await seq.submit(entry(0))
    async with Running(tmp_path, clock=lambda: 1_000) as seq:
        second = await seq.submit(entry(1))
    assert second.checkpoint.timestamp == first.checkpoint.timestamp == 2_000_000_000


async def test_group_commit_signs_nothing_when_idle_and_at_most_one_batch_an_interval_under_load(tmp_path):
    """Issue 20: a batch starts as soon as the pool holds something and the last one started at least
    pool_interval ago; idle, nothing is signed; under load, batches start at least pool_interval apart."""
    new_log(tmp_path)
    interval = 0.05
    async with Running(tmp_path, SequencerConfig(pool_interval=interval)) as seq:
        await seq.submit(entry(0))
        idle = seq.latest
        await asyncio.sleep(4 * interval)
        assert seq.latest == idle  # no checkpoint without a submission

        sizes: list[int] = []
        started = time.monotonic()

        async def one(i: int) -> None:
            sizes.append((await seq.submit(entry(i))).checkpoint.size)

        waves = []
        for wave in range(8):  # a submission every few milliseconds, for about 0.2 s
            waves += [asyncio.create_task(one(1000 * wave + k)) for k in range(20)]
            await asyncio.sleep(0.025)
        await asyncio.gather(*waves)
        elapsed = time.monotonic() - started
    batches = len(set(sizes))  # each batch is one checkpoint, answered with its size
    assert sorted(set(sizes))[-1] == 161
    assert batches <= elapsed / interval + 1, (batches, elapsed)


@pytest.mark.parametrize("path", ["batch", "republish"])
async def test_a_cosigned_checkpoint_that_cannot_be_stored_stops_the_sequencer_not_counted_as_a_witness_failure(
        tmp_path, path, monkeypatch):
    """The storage fails (here: the log's database turned read-only) as the witnesses' cosignatures are stored,
    after the batch's commit, or at a later retry of an unpublished checkpoint: the sequencer stops with the
    storage's error, as when a commit fails; it is not counted as a witness failure, and nothing goes on without
    the storage."""
    import pacspace.sequencer as sequencer_module
    from pacspace.sequencer import StorageFailed
    from pacspace.server.witnessing import WitnessQuorumFailed

    monkeypatch.setattr(sequencer_module, "REPUBLISH_INTERVAL", 0.05)
    new_log(tmp_path)
    runner = Running(tmp_path)
    calls = []

    async def witness(checkpoint):  # a witness that answers (with no cosignature) after the storage broke
        calls.append(checkpoint.size)
        if path == "republish" and len(calls) == 1:
            raise WitnessQuorumFailed("the witness is down")  # the batch stays unpublished: the retry stores
        runner.store._write.execute("PRAGMA query_only = 1")
        return checkpoint

    runner.sequencer.witness = witness
    async with runner as seq:
        # Committed, but not published: "may be in the log", or, without the witnesses' quorum, their failure.
        with pytest.raises(SequencerStopped if path == "batch" else WitnessQuorumFailed):
            await seq.submit(entry(0))
        with pytest.raises(StorageFailed, match="storing the cosigned checkpoint 1 failed"):
            await asyncio.wait_for(asyncio.shield(runner.task), 10)
        with pytest.raises(SequencerStopped):
            await seq.submit(entry(1))
        assert seq.metrics.witness_failures_total == (1 if path == "republish" else 0)
