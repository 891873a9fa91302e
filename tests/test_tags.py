"""TagGuard: which records the process that sequences admits, so no tag enters the log twice."""

from __future__ import annotations

import os

from pacspace.records.seal import entry_from_ct_hash, record_tag
from pacspace.appending import TagGuard


def admit(guard: TagGuard, entries, rows):
    """The three steps as appending.Sequencing.commit takes them, with the lookup inline."""
    claim = guard.claim(entries, rows)
    try:
        found = guard.in_log(claim.claimed) if claim.claimed else []
    except BaseException:
        guard.abandon(claim)
        raise
    return guard.decide(claim, found)


def entry(tag: bytes | None = None) -> bytes:
    return entry_from_ct_hash(tag or os.urandom(32), os.urandom(32))


class Log:
    """The tags the log holds, and every lookup asked of it."""

    def __init__(self, *tags: bytes) -> None:
        self.tags = set(tags)
        self.asked: list[list[bytes]] = []

    def __call__(self, tags):
        self.asked.append(list(tags))
        return [t in self.tags for t in tags]


def test_new_tags_are_admitted_and_claimed_until_released():
    guard = TagGuard(Log())
    entries = [entry(), entry(), entry()]
    rows = [("a", 1), ("a", 2), ("b", 0)]
    assert admit(guard, entries, rows) == [0, 1, 2]
    assert guard.claimed == 3
    # While they wait for the log, their tags are taken.
    again = [entry_from_ct_hash(record_tag(entries[2]), os.urandom(32))]
    assert admit(guard, again, [("c", 0)]) == []
    guard.release(entries)
    assert guard.claimed == 0
    assert admit(guard, again, [("c", 0)]) == [0]


def test_a_tag_in_the_log_refuses_all_of_its_relationships_records():
    taken = os.urandom(32)
    log = Log(taken)
    guard = TagGuard(log)
    entries = [entry(), entry(taken), entry(), entry()]
    rows = [("a", 1), ("a", 2), ("b", 0), ("c", 4)]
    assert admit(guard, entries, rows) == [2, 3]
    # Only the admitted entries are claimed: the refused relationship can try again at once.
    assert guard.claimed == 2
    assert log.asked == [[record_tag(e) for e in entries]]


def test_a_tag_repeated_in_one_call_admits_only_the_first():
    tag = os.urandom(32)
    guard = TagGuard(Log())
    entries = [entry(tag), entry(), entry(tag)]
    rows = [("a", 0), ("b", 0), ("b", 1)]
    assert admit(guard, entries, rows) == [0]


def test_entries_that_are_not_records_pass_without_a_lookup():
    log = Log()
    guard = TagGuard(log)
    assert admit(guard, [b"not a record entry"], [("a", 0)]) == [0]
    assert log.asked == [] and guard.claimed == 0


def test_a_tag_of_a_refused_relationship_is_free_for_another_in_the_same_call():
    taken, shared = os.urandom(32), os.urandom(32)
    guard = TagGuard(Log(taken))
    entries = [entry(taken), entry(shared), entry(shared)]
    rows = [("a", 1), ("a", 2), ("b", 0)]
    assert admit(guard, entries, rows) == [2]


def test_a_failed_lookup_claims_nothing():
    def broken(tags):
        raise OSError("disk gone")

    guard = TagGuard(broken)
    try:
        admit(guard, [entry()], [("a", 0)])
    except OSError:
        pass
    else:
        raise AssertionError("the lookup's failure must reach the caller")
    assert guard.claimed == 0


def test_a_tag_claimed_while_another_call_looks_it_up_is_refused_to_the_second():
    """Step one claims at once, so a call arriving during another's log lookup cannot take the same tag."""
    log = Log()
    guard = TagGuard(log)
    tag = os.urandom(32)
    first = guard.claim([entry(tag), entry()], [("a", 0), ("a", 1)])
    # Meanwhile, before the first call's lookup answers:
    assert admit(guard, [entry(tag)], [("b", 0)]) == []
    assert guard.decide(first, [False, False]) == [0, 1]
    assert guard.claimed == 2
    # A lookup that finds one of the tags drops the claims of the whole relationship.
    other = os.urandom(32)
    second = guard.claim([entry(other), entry()], [("c", 0), ("c", 1)])
    assert guard.claimed == 4
    assert guard.decide(second, [True, False]) == []
    assert guard.claimed == 2
