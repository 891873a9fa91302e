"""A prefix index: nothing handed to it is lost, whatever interleaves with a flush."""

from __future__ import annotations

import threading

from pacspace.merkle import leaf_hash
from pacspace.storage.prefixindex import PrefixIndex, key_prefix, key_prefixes


def hashes(start, stop):
    return [leaf_hash(i.to_bytes(8, "big")) for i in range(start, stop)]


def test_rows_added_during_a_flush_are_kept(tmp_path, monkeypatch):
    index = PrefixIndex(tmp_path)
    index.add(0, hashes(0, 10))
    real_execute = index._conn.execute
    added = threading.Event()

    def execute_then_add(sql, *args):
        # The commit thread adds a batch while the maintenance thread is writing.
        if sql.startswith("INSERT OR IGNORE INTO leaves") and not added.is_set():
            added.set()
            index.add(10, hashes(10, 20))
        return real_execute(sql, *args)

    monkeypatch.setattr(index, "_conn", _Proxy(index._conn, execute_then_add))
    index.flush()
    monkeypatch.undo()
    assert added.is_set()
    for i, h in enumerate(hashes(0, 20)):
        assert i in index.candidates(h), i
    index.flush()
    assert index.stored_size_and_rows() == (20, 20)
    index.close()
    reopened = PrefixIndex(tmp_path)
    assert reopened.size == 20
    assert all(i in reopened.candidates(h) for i, h in enumerate(hashes(0, 20)))
    reopened.close()


def test_catch_up_rebuilds_an_index_ahead_of_the_log(tmp_path):
    index = PrefixIndex(tmp_path)
    index.add(0, hashes(0, 50))
    index.flush()
    # A log restored from an older backup: 30 leaves, whose hashes differ from the index's.
    other = [leaf_hash(b"other %d" % i) for i in range(30)]
    assert index.catch_up(30, lambda lo, hi: other[lo:hi]) == 30
    assert index.size == 30
    assert index.candidates(other[7]) == [7]
    assert 7 not in index.candidates(hashes(0, 50)[7])
    index.close()


class _Proxy:
    def __init__(self, conn, execute):
        self._conn = conn
        self.execute = execute

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_leaves_without_a_key_advance_the_index_and_a_flush_records_how_far(tmp_path):
    index = PrefixIndex(tmp_path, name="tags.db")
    keys = hashes(0, 6)
    index.add(0, [keys[0], None, keys[2], None, None, keys[5]])
    assert index.size == 6
    assert index.candidates_many([keys[0], keys[1], keys[2], keys[5]]) == {0: [0], 2: [2], 3: [5]}
    index.flush()
    assert index.stored_size_and_rows() == (6, 3)
    index.add(6, [None, None])
    index.flush()  # nothing keyed to write, but the index now reaches size 8
    assert index.stored_size_and_rows() == (8, 3)
    index.close()
    reopened = PrefixIndex(tmp_path, name="tags.db")
    assert reopened.size == 8
    assert reopened.candidates_many([keys[2], keys[3]]) == {0: [2]}
    reopened.close()
    assert not (tmp_path / "leaves.db").exists()


def test_a_salted_index_keeps_its_salt_and_chosen_keys_do_not_share_a_prefix(tmp_path):
    """Keys a client chooses (tags) with equal first 8 bytes land on different stored prefixes."""
    chosen = [b"\x00" * 8 + i.to_bytes(24, "big") for i in range(50)]
    index = PrefixIndex(tmp_path, name="tags.db", salted=True)
    index.add(0, chosen)
    index.flush()
    stored = {row[0] for row in index._conn.execute("SELECT prefix FROM leaves")}
    assert len(stored) == 50
    assert all(index.candidates(k) == [i] for i, k in enumerate(chosen))
    index.close()
    reopened = PrefixIndex(tmp_path, name="tags.db", salted=True, readonly=True)
    assert reopened.candidates_many(chosen[:3]) == {0: [0], 1: [1], 2: [2]}
    reopened.close()
    other = tmp_path / "other"
    other.mkdir()
    elsewhere = PrefixIndex(other, name="tags.db", salted=True)
    again = PrefixIndex(tmp_path, name="tags.db", salted=True)
    assert elsewhere._prefix(chosen[0]) != again._prefix(chosen[0])
    elsewhere.close()
    again.close()


def test_keys_sharing_a_prefix_are_all_candidates_pending_and_flushed(tmp_path):
    """Unsalted keys with equal first 8 bytes: within one batch, across batches, and after a flush."""
    same = [b"\x07" * 8 + i.to_bytes(24, "big") for i in range(4)]
    other = hashes(0, 2)
    index = PrefixIndex(tmp_path)
    index.add(0, [same[0], other[0], same[1]])  # a repeat inside one batch
    index.add(3, [same[2]])  # a repeat of a pending prefix
    index.add(4, [other[1], same[3]])
    assert index.candidates(same[0]) == [0, 2, 3, 5]
    assert index.candidates_many([other[1], same[3]]) == {0: [4], 1: [0, 2, 3, 5]}
    index.flush(limit=2)  # part of the pending rows on disk, the rest still in memory
    assert index.candidates(same[1]) == [0, 2, 3, 5]
    index.flush()
    assert index.candidates(same[2]) == [0, 2, 3, 5]
    assert index.candidates(other[0]) == [1]
    index.close()


def test_prefixes_of_many_keys_are_those_of_each_key():
    keys = hashes(0, 40) + [b"\x01" * 40]
    assert key_prefixes(keys) == [key_prefix(k) for k in keys]
    assert key_prefixes(keys, b"salt") == [key_prefix(k, b"salt") for k in keys]
    assert key_prefixes([]) == []


def test_a_commit_reuses_the_prefixes_its_lookup_computed_and_finds_the_same(tmp_path):
    """The tag index hashes each key once: admission's lookup leaves its salted prefixes for the commit."""
    index = PrefixIndex(tmp_path, name="tags.db", salted=True)
    looked_up = [bytes([i]) * 32 for i in range(1, 6)]
    assert index.candidates_many(looked_up) == {}
    assert len(index._looked_up) == 5
    # The commit holds three of the looked-up keys and one never looked up.
    fresh = b"\xee" * 32
    index.add(0, [looked_up[0], None, looked_up[2], fresh, looked_up[4]])
    assert set(index._looked_up) == {looked_up[1], looked_up[3]}  # consumed by the commit
    for i, key in [(0, looked_up[0]), (2, looked_up[2]), (3, fresh), (4, looked_up[4])]:
        assert i in index.candidates(key)
    index.flush()
    reopened = PrefixIndex(tmp_path, name="tags.db", salted=True, readonly=True)
    assert reopened.candidates(looked_up[2]) == [2] and reopened.candidates(fresh) == [3]
    assert reopened._looked_up == {}  # nothing commits through a read-only index: it keeps no memo
    reopened.close()
    index.close()
