"""The append protocol on its own (appending.py): its decisions and outcomes, over records.db and fake sequencers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from pacspace.storage import record_ops
from pacspace.appending import Appended, Appender, Commit, Fate, Group, Refused, Sequencing, Submission, TagGuard, settle_op
from pacspace.errors import PoolFull, SequencerStopped
from pacspace.records.seal import entry_from_ct_hash
from pacspace.server.writer import GroupWriter
from pacspace.storage.records import InFlight, RecordStore, Relationship, TagConflict

RIDS = [f"acme:r{i}" for i in range(3)]


def submission(seq: int, tag: bytes | None = None) -> Submission:
    blob = os.urandom(200)
    tag = tag or os.urandom(32)
    ct_hash = hashlib.sha256(blob).digest()
    return Submission(seq, tag, ct_hash, blob, entry_from_ct_hash(tag, ct_hash))


def rel(rid: str) -> Relationship:
    return Relationship(rid, "acme", "bob", "daily", "monthly", 1)


@pytest.fixture
async def rows(tmp_path):
    store = RecordStore(tmp_path)
    store.add_party("acme", "provider", "t1", 1)
    store.add_party("bob", "customer", "t2", 1)
    for rid in RIDS:
        store.add_relationship(rel(rid), {"acme": b"w", "bob": b"w"})
    writer = GroupWriter(store, inline=lambda ops: True)
    task = asyncio.create_task(writer.run())
    yield store, writer
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    store.close()


class Link:
    """A SequencerLink that places entries at consecutive indexes from ``next`` (or does what ``answer`` says)."""

    def __init__(self, answer=None) -> None:
        self.next = 0
        self.calls: list[list[tuple[str, int]]] = []
        self.answer = answer
        self.latest = SimpleNamespace(size=0)

    async def commit(self, entries, rows):
        self.calls.append(list(rows))
        if self.answer is not None:
            return self.answer(entries, rows)
        first, self.next = self.next, self.next + len(entries)
        self.latest = SimpleNamespace(size=self.next)
        return Commit(list(range(first, self.next)), self.latest)

    async def find_leaves(self, hashes, size):
        return [None] * len(hashes)

    async def settled(self, timeout: float) -> None:
        pass


def indexes_of(store: RecordStore, rid: str) -> list[tuple[int, int | None]]:
    return [(r.seq, r.index) for r in store.records(rid, -1, 100)]


def test_the_settle_decision_settles_a_run_by_tag_and_anything_else_row_by_row(tmp_path, monkeypatch):
    store = RecordStore(tmp_path)
    store.add_party("acme", "provider", "t1", 1)
    store.add_party("bob", "customer", "t2", 1)
    for rid in RIDS:
        store.add_relationship(rel(rid), {"acme": b"w", "bob": b"w"})
    subs = {rid: [submission(0), submission(1)] for rid in RIDS}
    for rid, group in subs.items():
        store.write([record_ops.Reserve(rid, [s[:4] for s in group])])
    chosen: list[str] = []
    real = store.write

    def spy(ops):
        chosen.extend(type(op).__name__ for op in ops)
        return real(ops)

    monkeypatch.setattr(store, "write", spy)
    # r0 placed at 0-1 and r1 refused by admission: a run, found by tag.
    rows = [(rid, s.seq) for rid in RIDS[:2] for s in subs[rid]]
    tags = [s.tag for rid in RIDS[:2] for s in subs[rid]]
    store.write([settle_op(rows, tags, [0, 1, None, None], 2)])
    # r1 and r2 placed apart (not one run): row by row.
    rows = [(rid, s.seq) for rid in RIDS[1:] for s in subs[rid]]
    tags = [s.tag for rid in RIDS[1:] for s in subs[rid]]
    store.write([settle_op(rows, tags, [2, 3, 7, 8], 9)])
    assert chosen == ["SettleRun", "SettleRows"]
    assert indexes_of(store, "acme:r0") == [(0, 0), (1, 1)]
    assert indexes_of(store, "acme:r1") == [(0, 2), (1, 3)]
    assert indexes_of(store, "acme:r2") == [(0, 7), (1, 8)]
    assert settle_op(rows, tags, [None] * 4, 9) is None
    # An entry without a record's tag is settled by its row too.
    assert isinstance(settle_op([("acme:r0", 5)], [None], [4], 5), record_ops.SettleRows)
    store.close()


async def test_new_records_are_appended_and_a_retry_is_answered_from_their_rows(rows):
    store, writer = rows
    link = Link()
    appender = Appender(store, writer, link)
    group = Group(rel("acme:r0"), [submission(0), submission(1)])
    (outcome,) = await appender.append([group])
    assert outcome == Appended(Fate.NEW, [(0, 2), (1, 2)])
    # Until their settle is written, a retry is told to wait; after it, it gets the same places.
    (again,) = await appender.append([group])
    assert isinstance(again, Refused) and isinstance(again.reason, InFlight)
    await writer.write([settle_op([("acme:r0", 0), ("acme:r0", 1)], [s.tag for s in group.subs], [0, 1], 2)])
    (again,) = await appender.append([group])
    assert again == Appended(Fate.REPEATED, [(0, 2), (1, 2)])
    assert len(link.calls) == 1


async def test_a_call_refused_before_the_pool_forgets_its_rows_and_the_relationship_they_would_make(rows):
    store, writer = rows
    full = PoolFull("full", retry_after=1)

    def refuse(entries, rows):
        raise full

    appender = Appender(store, writer, Link(refuse))
    new = rel("acme:new")
    create = record_ops.AddRelationship(new, {"acme": b"w", "bob": b"w"})
    outcomes = await appender.append([Group(new, [submission(0)], create), Group(rel("acme:r0"), [submission(0)])])
    assert outcomes == [Refused(full), Refused(full)]
    assert store.unsettled() == [] and store.relationship("acme:new") is None


async def test_admission_refuses_a_relationship_whole_and_only_its_rows_are_forgotten(rows):
    store, writer = rows

    def refuse_r1(entries, rows):
        return Commit([None if rid == "acme:r1" else 10 + i for i, (rid, _) in enumerate(rows)], SimpleNamespace(size=20))

    appender = Appender(store, writer, Link(refuse_r1))
    groups = [Group(rel("acme:r0"), [submission(0)]), Group(rel("acme:r1"), [submission(0), submission(1)])]
    first, second = await appender.append(groups)
    assert first == Appended(Fate.NEW, [(10, 20)])
    assert isinstance(second, Refused) and isinstance(second.reason, TagConflict)
    assert [(r.relationship, r.seq) for r in store.unsettled()] == [("acme:r0", 0)]  # its settle is the link's to write


async def test_an_unknown_fate_keeps_the_rows_for_the_log_to_settle(rows):
    store, writer = rows

    def lost(entries, rows):
        raise SequencerStopped("lost the sequencing process")

    appender = Appender(store, writer, Link(lost))
    with pytest.raises(SequencerStopped):
        await appender.append([Group(rel("acme:r0"), [submission(0)])])
    assert [(r.relationship, r.seq) for r in store.unsettled()] == [("acme:r0", 0)]


async def test_in_process_sequencing_admits_sequences_and_settles_behind_the_answer(rows):
    store, writer = rows
    in_log = {os.urandom(32)}
    checkpoint = SimpleNamespace(size=7)

    class Sequencer:
        latest = checkpoint
        submitted: list[list[bytes]] = []

        async def submit_many(self, entries):
            self.submitted.append(list(entries))
            return [SimpleNamespace(index=5 + i, checkpoint=checkpoint) for i in range(len(entries))]

    guard = TagGuard(lambda tags: [t in in_log for t in tags])
    sequencing = Sequencing(Sequencer(), guard, leaves=None, writer=writer)
    appender = Appender(store, writer, sequencing)
    taken = next(iter(in_log))
    groups = [Group(rel("acme:r0"), [submission(0), submission(1)]), Group(rel("acme:r1"), [submission(0, tag=taken)])]
    first, second = await appender.append(groups)
    assert first == Appended(Fate.NEW, [(5, 7), (6, 7)])
    assert isinstance(second, Refused) and isinstance(second.reason, TagConflict)
    assert Sequencer.submitted == [[s.entry for s in groups[0].subs]] and guard.claimed == 0
    await appender.settled()
    assert sequencing.settling == set() and store.unsettled() == []
    assert indexes_of(store, "acme:r0") == [(0, 5), (1, 6)]


def test_the_append_protocol_speaks_no_http():
    code = "import sys, pacspace.appending; assert 'aiohttp' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
