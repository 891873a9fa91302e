"""The leaf index: nothing handed to it is lost, whatever interleaves with a flush."""

from __future__ import annotations

import threading

from pacspace.merkle import leaf_hash
from pacspace.storage.leafindex import LeafIndex


def hashes(start, stop):
    return [leaf_hash(i.to_bytes(8, "big")) for i in range(start, stop)]


def test_rows_added_during_a_flush_are_kept(tmp_path, monkeypatch):
    index = LeafIndex(tmp_path)
    index.add(0, hashes(0, 10))
    real_executemany = index._conn.executemany
    added = threading.Event()

    def executemany_then_add(sql, rows):
        # The commit thread adds a batch while the maintenance thread is writing.
        if not added.is_set():
            added.set()
            index.add(10, hashes(10, 20))
        return real_executemany(sql, rows)

    monkeypatch.setattr(index, "_conn", _Proxy(index._conn, executemany_then_add))
    index.flush()
    monkeypatch.undo()
    for i, h in enumerate(hashes(0, 20)):
        assert i in index.candidates(h), i
    index.flush()
    assert index.stored_size_and_rows() == (20, 20)
    index.close()
    reopened = LeafIndex(tmp_path)
    assert reopened.size == 20
    assert all(i in reopened.candidates(h) for i, h in enumerate(hashes(0, 20)))
    reopened.close()


def test_catch_up_rebuilds_an_index_ahead_of_the_log(tmp_path):
    index = LeafIndex(tmp_path)
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
    def __init__(self, conn, executemany):
        self._conn = conn
        self.executemany = executemany

    def __getattr__(self, name):
        return getattr(self._conn, name)
