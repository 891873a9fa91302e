"""The append protocol: how a provider's sealed record gets from a request into the log, and back out of a crash.

Every record goes through these steps, in this order. Steps 1, 5 and 6 run in
whichever process serves the request (:class:`Appender`); steps 2 to 4 in the
one process that holds the sequencer (:class:`Sequencing`), which an HTTP
worker of ``serve --workers`` reaches over its private channel
(server/remote.py, server/ipc.py) through the same :class:`SequencerLink` port;
step 7 runs once, in that process, before it serves anything:

1. **Reserve.** Each relationship's new rows (seq, tag, ct_hash, blob) are
   stored in records.db, all groups of a request in one durable transaction,
   each group all or nothing; a relationship's creation goes in with its
   genesis record. A retry of committed records finds their rows (answered
   from them); an earlier record of the relationship still without its log
   index refuses the new ones (InFlight) until step 6 repairs it.
2. **Admit by tag.** No tag enters the log twice (:class:`TagGuard`): the
   call's new tags are claimed at once, looked up in the log's tag index off
   the event loop, and a relationship whose tag repeats (in the log, in a
   claim of another call, earlier in the same call) is refused whole.
3. **Sequence.** The admitted entries go to the sequencer as one submission
   (consecutive indexes); it returns once the checkpoint covering them is
   durable and published. Only then is anything acknowledged.
4. **Settle.** Each sequenced row's log index goes to records.db, decided
   once (:func:`settle_op`). In process the answer does not wait for it (the
   log holds the index durably already); over the channel the parent waits
   for it, bounded, before it answers, so any worker then reads it.
5. **Forget.** Rows whose entries are certainly not in the log (admission
   refused them, or the sequencer refused the call before taking it:
   :data:`NOT_APPENDED`) are dropped, with a relationship their genesis
   would have made. Any other failure (the witnesses' quorum, a stopped
   sequencer, a lost channel) leaves them: their entries may be in the log.
6. **Repair from the log.** A request that meets unsettled rows (a retry, a
   conflicting seq, a reader) looks their entries up below the published
   size: found, they are settled; found at an index another record holds (a
   provider's copy of its own record, refused by admission), dropped; not
   found, left alone (still on its way, or refused; step 7 decides).
7. **Reconcile at start** (:func:`reconcile`): the same decision over the
   whole committed log, except that a row not found is dropped (nothing is on
   its way at start) and one committed beyond the published checkpoint is
   kept for a later one.

What a crash at each point leaves, and who mends it:

- before 1 commits: nothing stored; the client got no answer and retries.
- between 1 and 3's commit: rows without an index and no entry in the log;
  step 7 drops them, and the client's retry stores them anew.
- between 3's commit and 4: entries in the log, rows without an index, the
  client perhaps without its answer; step 7 settles them (or keeps them for
  a checkpoint the witnesses have yet to cosign), and a retry then gets the
  same receipt (200).
- 4 written but not yet fsynced (a settle-only transaction has no fsync of
  its own): as the previous case.
- during 5: rows stay unsettled (their relationship answers
  previous_in_flight) until step 7 drops them.

Nothing here speaks HTTP: results are :class:`Appended` or :class:`Refused`
values, and the HTTP handlers (server/records_api.py) map them to statuses.
The ports below state what each step relies on of records.db, the log and
the sequencer; storage/base.py does the same for the log's own storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .checkpoint import SignedCheckpoint
from .errors import AdmissionFailed, EntryTooLarge, MalformedInput, PacspaceError, PoolFull
from .merkle import leaf_hash
from .records.seal import record_tag
from .sequencer import Sequenced
from .storage import record_ops
from .storage.record_ops import RecordOp
from .storage.records import InFlight, RecordConflict, Relationship, StoredRecord, TagConflict

if TYPE_CHECKING:
    from .sequencer import Sequencer
    from .storage.base import RecordTables
    from .server.writer import GroupWriter
    from .storage.logtables import LogTables

log = logging.getLogger("pacspace.server")

# One record's row in records.db: (relationship id, seq).
Row = tuple[str, int]
# A write op of the records' tables (storage/record_ops.py): run inside one transaction, all or nothing.
Op = RecordOp

# Refusals of a whole call that the sequencer raises before taking any of it: nothing was appended.
NOT_APPENDED = (PoolFull, MalformedInput, EntryTooLarge, AdmissionFailed)
# How long a reader waits for the settles queued before it.
SETTLE_WAIT = 30.0


# --- ports -------------------------------------------------------------------------------------


class RecordRows(Protocol):
    """The records' tables as the append path reads them (storage/records.py, storage/pg_records.py).

    Reads see committed transactions only. Unsettled rows are always their
    relationship's last ones (reserve refuses a record behind one), so
    dropping them never leaves a gap in a relationship's seqs.
    """

    def unsettled(self) -> list[StoredRecord]:
        """Every row still without its log index, by relationship and seq."""
        ...

    def unsettled_of(self, rid: str) -> list[StoredRecord]:
        """One relationship's rows still without their log index, by seq."""
        ...

    def has_unsettled(self, rid: str) -> bool:
        """Whether the relationship has a row still without its log index (one indexed lookup)."""
        ...

    def settled_indexes(self, indexes: Sequence[int]) -> set[int]:
        """Which of these log indexes a settled row already holds."""
        ...

    def write(self, ops: Sequence[Op]) -> list[Any]:
        """Run ops in one transaction, here and now (start-up only, before the RowWriter runs); as RowWriter.write."""
        ...


class RowWriter(Protocol):
    """records.db's writes while serving, by group commit (server/writer.py GroupWriter)."""

    async def write(self, ops: Sequence[Op]) -> list[Any]:
        """Run ops in one transaction, each all or nothing; each result is the op's value or its exception.

        Durable (fsynced) once it returns, except a transaction of settles only,
        which commits without an fsync of its own: a crash may lose it, and what
        it recorded the log holds durably (step 7 settles it again). A caller
        cancelled while it waits does not stop its ops.
        """
        ...

    def enqueue(self, ops: Sequence[Op]) -> asyncio.Future[list[Any]]:
        """Queue ops now, ahead of any queued later (so a later write to the same rows follows them); the
        future gives write's answer."""
        ...


class LeafIndex(Protocol):
    """The log's leaf index (storage/sqlite.py SqliteLog, a storage.base.LogReader)."""

    def find_leaf(self, leaf_hash: bytes, size: int) -> int | None:
        """The first index below ``size`` whose leaf hash is ``leaf_hash``, or None.

        A leaf is findable as soon as the commit that appended it returned; the
        index file catches up later and start-up re-indexes what a crash lost.
        """
        ...


class LogSequencer(Protocol):
    """The one sequencer (sequencer.py Sequencer), in the process that sequences."""

    @property
    def latest(self) -> SignedCheckpoint:
        """The latest published checkpoint: durably committed (and, with witnesses, cosigned by their quorum)."""
        ...

    async def submit_many(self, entries: Sequence[bytes]) -> list[Sequenced]:
        """Append entries at consecutive indexes, all in one checkpoint; returns once that checkpoint is durable
        and published. Raises PoolFull, MalformedInput or EntryTooLarge before taking any of them; any other
        error (SequencerStopped, WitnessQuorumFailed) leaves it unknown whether they were committed."""
        ...


class SequencerLink(Protocol):
    """Steps 2 to 4 as a serving process reaches them: :class:`Sequencing` in the process that sequences,
    server/remote.py's RemoteSequencer in an HTTP worker (which reaches the parent's Sequencing)."""

    @property
    def latest(self) -> SignedCheckpoint:
        """The latest published checkpoint; never older than one any process of the server answered with."""
        ...

    async def commit(self, entries: list[bytes], rows: list[Row]) -> Commit:
        """Admit, sequence and settle records' entries (``rows[i]`` is ``entries[i]``'s row).

        Returns once every entry it places is in a durable published checkpoint.
        An entry whose relationship admission refused is not placed, and nothing
        of that relationship was appended. Raises one of :data:`NOT_APPENDED`
        only if nothing was appended; any other error leaves the entries' fate
        unknown (their rows are repaired from the log later).
        """
        ...

    async def find_leaves(self, hashes: list[bytes], size: int) -> list[int | None]:
        """The first index below ``size`` of each leaf hash, or None (LeafIndex.find_leaf, wherever the complete index is)."""
        ...

    async def settled(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for every settle queued so far: then readers see each acknowledged record's index."""
        ...


# --- values ------------------------------------------------------------------------------------


class Submission(NamedTuple):
    """One record as its provider sent it, checked, with the entry the server derives from it."""

    seq: int
    tag: bytes
    ct_hash: bytes
    blob: bytes
    entry: bytes
    # In this order so that ``sub[:4]`` is what records.db stores: (seq, tag, ct_hash, blob).


@dataclass
class Group:
    """One relationship's records in a request: stored, sequenced and settled together or not at all."""

    rel: Relationship
    subs: list[Submission]
    # The relationship's creation, stored with its genesis record or not at all.
    create: record_ops.AddRelationship | None = None


class Fate(Enum):
    """What became of records that were appended."""

    NEW = "new"  # sequenced by this call
    REPEATED = "repeated"  # these very records were committed before (a retry): their places as stored


@dataclass(frozen=True)
class Appended:
    """A group's records are in the log: each one's (log index, size of the published checkpoint covering it)."""

    fate: Fate
    placed: list[tuple[int, int]]


@dataclass(frozen=True)
class Refused:
    """A group's records are not appended by this call; ``reason`` says why (its ``code`` names it to clients)."""

    reason: PacspaceError


Outcome = Appended | Refused


@dataclass(frozen=True)
class Commit:
    """What the log did with one call's entries (SequencerLink.commit)."""

    # Each entry's log index; None where admission refused its relationship.
    indexes: list[int | None]
    # The published checkpoint covering every placed entry; None when the call placed none.
    checkpoint: SignedCheckpoint | None
    # The settle of the placed rows, when it is queued behind the answer (in process); None if it is done.
    settling: asyncio.Future[None] | None = None


# --- step 2: admission by tag ------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A call's entries between the claim and the decision."""

    tags: list[bytes | None]
    rows: Sequence[Row]
    # Relationships refused at once: a tag of theirs was claimed by another call.
    refused: frozenset[str]
    # The tags this call claimed, to be looked up in the log.
    claimed: list[bytes]


@dataclass
class TagGuard:
    """One tag per record in the log: admission of record entries, in the process that sequences.

    A record's tag is its public handle (a customer's monitor finds its records by
    tag), so the log never takes a tag twice. records.db does not enforce this: a
    unique index on random 32-byte tags dirtied a random page per record inside
    every write transaction that every writer waits on (docs/performance.md).

    Admission is three steps, so the log lookup (disk reads) can leave the event
    loop: :meth:`claim` claims the call's new tags at once, the lookup runs
    anywhere, and :meth:`decide` keeps the claims of the admitted entries only. A
    tag the log gains after the claim must have been admitted by another call
    meanwhile, which the claim forbids; one it gained before is in the tag index
    by then, because a claim is released only after its entries' commit added
    them there.
    """

    # Whether each tag is a committed entry's (SqliteLog.tags_in_log): true from the moment the commit that
    # appended it returned; raises (UntrustedState) rather than answer when the index cannot tell.
    in_log: Callable[[Sequence[bytes]], list[bool]]
    _claimed: set[bytes] = field(default_factory=set)

    def claim(self, entries: Sequence[bytes], rows: Sequence[Row]) -> Claim:
        """Step one: refuse relationships with a tag another call claimed; claim every other new tag."""
        tags = [record_tag(e) for e in entries]
        refused = frozenset(rid for tag, (rid, _) in zip(tags, rows) if tag is not None and tag in self._claimed)
        claimed = list(dict.fromkeys(t for t, (rid, _) in zip(tags, rows) if t is not None and rid not in refused))
        self._claimed.update(claimed)
        return Claim(tags, rows, refused, claimed)

    def decide(self, claim: Claim, in_log: Sequence[bool]) -> list[int]:
        """Step three, given whether each claimed tag is in the log: the positions admitted, in order.

        Every entry of a relationship with a repeated tag is refused, so each
        relationship's records are sequenced all together or not at all. The
        claims of everything refused are dropped.
        """
        taken = {tag for tag, found in zip(claim.claimed, in_log) if found}
        refused = set(claim.refused)
        refused.update(rid for tag, (rid, _) in zip(claim.tags, claim.rows) if tag in taken)
        # A tag repeated within the call: the first relationship to use it keeps it. Only the tags of
        # relationships still admitted count, so refusing one may free a tag for another: repeat.
        while True:
            seen: set[bytes] = set()
            repeats: set[str] = set()
            for tag, (rid, _) in zip(claim.tags, claim.rows):
                if tag is None or rid in refused:
                    continue
                if tag in seen:
                    repeats.add(rid)
                seen.add(tag)
            if not repeats:
                break
            refused |= repeats
        admitted = [i for i, (rid, _) in enumerate(claim.rows) if rid not in refused]
        kept = {claim.tags[i] for i in admitted}
        self._claimed.difference_update(t for t in claim.claimed if t not in kept)
        return admitted

    def abandon(self, claim: Claim) -> None:
        """Drop a claim whose lookup failed: nothing of it is admitted."""
        self._claimed.difference_update(claim.claimed)

    def release(self, entries: Sequence[bytes]) -> None:
        """Drop the claims of entries the sequencer is done with (committed, or refused as a whole)."""
        for entry in entries:
            tag = record_tag(entry)
            if tag is not None:
                self._claimed.discard(tag)

    @property
    def claimed(self) -> int:
        return len(self._claimed)


# --- step 4: the settle decision ---------------------------------------------------------------


def settle_op(rows: Sequence[Row], tags: Sequence[bytes | None], indexes: Sequence[int | None], size: int) -> Op | None:
    """The op recording each placed row's log index and checkpoint ``size``; None if nothing was placed.

    The placed entries of one call were one submission, so their indexes run on
    (LogSequencer.submit_many): then their rows are found by tag, with one
    statement for all (settle_run_op); otherwise (an entry that is not a
    record's) each by its relationship and seq (settle_rows_op). Settling twice
    is harmless.
    """
    placed = [(row, tag, index) for row, tag, index in zip(rows, tags, indexes) if index is not None]
    if not placed:
        return None
    first, last = placed[0][2], placed[-1][2]
    run = [tag for _, tag, _ in placed if tag is not None]
    if last - first + 1 == len(placed) == len(run):
        return record_ops.SettleRun(run, first, size)
    return record_ops.SettleRows([(rid, seq, index) for (rid, seq), _, index in placed], size)


def leaves_below(leaves: LeafIndex, hashes: Sequence[bytes], size: int) -> list[int | None]:
    """Each leaf hash's first index below ``size``, or None."""
    return [leaves.find_leaf(h, size) for h in hashes]


# --- steps 2 to 4, in the process that sequences -----------------------------------------------


class Sequencing:
    """Steps 2 to 4 where the sequencer runs (the single process, or ``serve --workers``' parent): a SequencerLink."""

    def __init__(self, sequencer: LogSequencer, tags: TagGuard, leaves: LeafIndex, writer: RowWriter) -> None:
        self.sequencer = sequencer
        self.tags = tags
        self.leaves = leaves
        self.writer = writer
        # Settle writes queued after their records were acknowledged; see settle_later.
        self.settling: set[asyncio.Task[None]] = set()

    @property
    def latest(self) -> SignedCheckpoint:
        return self.sequencer.latest

    async def commit(self, entries: list[bytes], rows: list[Row]) -> Commit:
        """Admit (step 2), sequence (3) and queue the settle (4) of records' entries; see SequencerLink.commit."""
        guard = self.tags
        claim = guard.claim(entries, rows)
        try:
            # Off the event loop: on a cold cache the lookup reads the disk. The claim keeps the tags ours meanwhile.
            found = await asyncio.to_thread(guard.in_log, claim.claimed) if claim.claimed else []
        except Exception as exc:
            guard.abandon(claim)
            # Typed as "nothing appended", so the callers drop their rows rather than wait for the log.
            log.error("could not check records' tags against the log: %s", exc)
            raise AdmissionFailed("could not check the records' tags against the log; nothing was appended") from None
        except BaseException:
            guard.abandon(claim)
            raise
        admitted = guard.decide(claim, found)
        indexes: list[int | None] = [None] * len(entries)
        if not admitted:
            return Commit(indexes, None)
        claimed = [entries[i] for i in admitted]
        try:
            task = asyncio.ensure_future(self.sequencer.submit_many(claimed))
        except BaseException:
            guard.release(claimed)
            raise

        def release(done: asyncio.Future[Any]) -> None:
            # Held until the sequencer is done with the entries, even if our caller stopped
            # waiting: a committed entry's tag is in the tag index by then.
            guard.release(claimed)
            if not done.cancelled():
                done.exception()  # retrieved here too, in case nobody awaits it any more

        task.add_done_callback(release)
        sequenced = await asyncio.shield(task)
        for i, placed in zip(admitted, sequenced):
            indexes[i] = placed.index
        checkpoint = sequenced[0].checkpoint  # one submission: one checkpoint covers all of it
        settle = settle_op(rows, claim.tags, indexes, checkpoint.size)
        return Commit(indexes, checkpoint, None if settle is None else self.settle_later([settle]))

    def settle_later(self, ops: list[Op]) -> asyncio.Task[None]:
        """Queue settle ops now, without waiting for their write.

        The records they settle are already durable twice over: the row and blob
        in records.db (step 1) and the entry in the log (step 3). If the process
        dies before this write, start-up settles the rows from the log (step 7),
        so an acknowledgement never waits on it. The ops are queued before this
        returns and the writer runs its queue in order, so any later write to
        the same relationship comes after them. A failed write (a locked or full
        disk) is retried until it succeeds: until then readers wait (settled).
        """
        task = asyncio.ensure_future(self._settle(ops, self.writer.enqueue(ops)))
        self.settling.add(task)
        task.add_done_callback(self.settling.discard)
        return task

    async def _settle(self, ops: list[Op], first: asyncio.Future[list[Any]]) -> None:
        attempt, delay = first, 0.1
        while True:
            try:
                for result in await attempt:
                    if isinstance(result, BaseException):
                        # One op refused (a constraint): retrying cannot help; start-up settles from the log.
                        log.error("a settle write was refused: %s", result)
                return
            except Exception as exc:  # the whole transaction failed; the rows stay unsettled meanwhile
                log.error("settling records failed, retrying in %.1f s: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            attempt = self.writer.enqueue(ops)

    async def find_leaves(self, hashes: list[bytes], size: int) -> list[int | None]:
        return leaves_below(self.leaves, hashes, size)

    async def settled(self, timeout: float) -> None:
        if self.settling:
            await asyncio.wait(list(self.settling), timeout=timeout)

    def abandon_settles(self) -> None:
        """At shutdown, after ``settled``: stop retrying settles records.db will not take (step 7 redoes them)."""
        for stuck in list(self.settling):
            stuck.cancel()


# --- steps 1, 5 and 6, in any process that serves requests -------------------------------------


class Appender:
    """The append path as the HTTP handlers call it: reserve, then commit through the link, then answer."""

    def __init__(self, rows: RecordRows, writer: RowWriter, link: SequencerLink) -> None:
        self.rows = rows
        self.writer = writer
        self.link = link

    async def append(self, groups: list[Group]) -> list[Outcome]:
        """Store every group's rows in one transaction, sequence all new entries in one batch, settle in one;
        each group's outcome, in order.

        Runs shielded: once rows are stored, a client that goes away cannot stop
        their entries being sequenced and the rows settled. Raises what leaves
        the new entries' fate unknown (see SequencerLink.commit): their rows stay.
        """
        return await asyncio.shield(self._append(groups))

    async def _append(self, groups: list[Group]) -> list[Outcome]:
        results = await self._reserve(groups)
        # Rows without their log index: a record still in flight, or one whose settle was lost (a failed
        # write, or a checkpoint the witnesses cosigned late). The retry of such a record lands here too.
        stuck = [i for i, r in enumerate(results) if _unsettled(r)]
        # Another record at a seq whose row is unsettled: a client that lost our answer (a witness outage)
        # sealed that seq again. Settled (once its entry is published), the row shows in the client's refetch.
        conflicted = [groups[i].rel.id for i, r in enumerate(results) if isinstance(r, RecordConflict)]
        if stuck or conflicted:
            # A row can outlive its request unsettled (a settle write failed): if its entry is in the
            # log, settle it now rather than blocking the relationship until the next start. If that
            # fails, the other groups' rows are stored already and must still be sequenced: the stuck
            # ones keep their in-flight answer, to be repaired on a later retry.
            repaired = await self.repair([groups[i].rel.id for i in stuck] + conflicted)
            if repaired and stuck:
                retried = await self._reserve([groups[i] for i in stuck])
                for i, r in zip(stuck, retried):
                    results[i] = r
        outcomes: list[Outcome | None] = [None] * len(groups)
        new: list[int] = []
        for i, result in enumerate(results):
            if isinstance(result, PacspaceError):
                outcomes[i] = Refused(result)
            elif isinstance(result, BaseException):
                raise result
            elif result is not None:
                if any(r.index is None for r in result):
                    outcomes[i] = Refused(InFlight("this record is still being committed; retry for its receipt"))
                else:
                    outcomes[i] = Appended(Fate.REPEATED, [(r.index, r.checkpoint_size) for r in result])
            else:
                new.append(i)
        if new:
            await self._commit([groups[i] for i in new], new, outcomes)
        filled = [o for o in outcomes if o is not None]
        assert len(filled) == len(groups)  # every group has its outcome
        return filled

    async def _commit(self, groups: list[Group], positions: list[int], outcomes: list[Outcome | None]) -> None:
        """Steps 2 to 4 for the groups whose rows were just stored, then 5 for those not appended."""
        entries = [s.entry for g in groups for s in g.subs]
        rows = [(g.rel.id, s.seq) for g in groups for s in g.subs]
        try:
            commit = await self.link.commit(entries, rows)
        except NOT_APPENDED as exc:
            # Refused before entering the pool (full, malformed, tags not checkable): nothing was appended;
            # forget our rows. Any other error (witness_quorum_failed, sequencer_stopped, a lost channel)
            # propagates and leaves them: their entries may be in the log, to be settled from it later.
            await self._forget(groups)
            for i in positions:
                outcomes[i] = Refused(exc)
            return
        refused = []
        at = 0
        for i, group in zip(positions, groups):
            indexes = commit.indexes[at : at + len(group.subs)]
            at += len(group.subs)
            placed = [index for index in indexes if index is not None]
            if len(placed) < len(indexes) or commit.checkpoint is None:
                # Admission refused the relationship's records whole: one of their tags repeats.
                refused.append(group)
                outcomes[i] = Refused(TagConflict("a tag is already in the log, or in a record being committed"))
                continue
            size = commit.checkpoint.size  # every admitted record of the call is in the same checkpoint
            outcomes[i] = Appended(Fate.NEW, [(index, size) for index in placed])
        if refused:
            await self._forget(refused)

    async def _reserve(self, groups: list[Group]) -> list[Any]:
        """Step 1: store the groups' rows in one transaction; each group's reserve result, or its error.

        Groups that create a relationship get an op each; all others share one bulk
        op, which costs one statement per table instead of several per group.
        """
        creating = [i for i, g in enumerate(groups) if g.create is not None]
        plain = [i for i, g in enumerate(groups) if g.create is None]
        # All or nothing together: a genesis that fails takes its relationship with it.
        ops: list[Op] = [
            record_ops.Reserve(groups[i].rel.id, [s[:4] for s in groups[i].subs], before=groups[i].create)
            for i in creating
        ]
        if plain:
            records = [(groups[i].rel.id, [s[:4] for s in groups[i].subs]) for i in plain]
            ops.append(record_ops.ReserveMany(records))
        answers = await self.writer.write(ops)
        results: list[Any] = [None] * len(groups)
        for i, answer in zip(creating, answers):
            results[i] = answer
        if plain:
            bulk = answers[-1]
            for k, i in enumerate(plain):
                results[i] = bulk if isinstance(bulk, BaseException) else bulk[k]
        return results

    async def _forget(self, groups: list[Group]) -> None:
        """Step 5: drop the rows of groups whose entries were never appended (and a relationship their genesis would have made)."""
        undo: list[Op] = []
        for group in groups:
            undo.append(record_ops.Drop(group.rel.id, [s.seq for s in group.subs]))
            if group.create is not None:
                undo.append(record_ops.DropRelationship(group.rel.id))
        try:
            failures = [r for r in await self.writer.write(undo) if isinstance(r, BaseException)]
        except Exception as exc:
            failures = [exc]
        if failures:
            # The other groups' answers stand. These rows stay unsettled (their relationships answer
            # previous_in_flight) until the next start, which drops them: their entries are not in the log.
            log.error("could not drop records that were never appended: %s", failures[0])

    async def repair(self, rids: list[str]) -> int:
        """Step 6 for callers that go on without it: settle_from_log, or 0 if it fails (the rows wait for a later try)."""
        try:
            return await self.settle_from_log(rids)
        except Exception as exc:
            log.warning("could not settle earlier records from the log: %s", exc)
            return 0

    async def settle_from_log(self, rids: list[str]) -> int:
        """Step 6: settle or drop these relationships' unsettled rows by what the published log holds; how many.

        A row whose entry another record already holds was refused by admission (a
        provider's copy of its own record) and is dropped instead.
        """
        rows = [r for rid in rids for r in self.rows.unsettled_of(rid)]
        if not rows:
            return 0
        size = self.link.latest.size
        found = await self.link.find_leaves([leaf_hash(r.entry) for r in rows], size)
        ops, _, _ = _repair_ops(self.rows, rows, found, size, at_start=False)
        if ops:
            for result in await self.writer.write(ops):
                if isinstance(result, BaseException):
                    raise result
        return len(ops)

    async def settled(self, timeout: float = SETTLE_WAIT) -> None:
        """Wait (up to ``timeout``) for every settle queued so far, in whichever process sequences."""
        await self.link.settled(timeout)

    async def ready_to_read(self, rid: str) -> None:
        """Before reading a relationship's log indexes: the settles queued so far are written, and a row left
        unsettled (its answer lost while its checkpoint awaited the witnesses) is settled once it is published."""
        await self.settled()
        if self.rows.has_unsettled(rid):
            await self.repair([rid])


def _unsettled(result: Any) -> bool:
    """A reserve result whose records (or an earlier one of their relationship) still lack a log index."""
    return isinstance(result, InFlight) or (isinstance(result, list) and any(r.index is None for r in result))


# --- steps 6 and 7: the repair decision --------------------------------------------------------


def _repair_ops(
    store: RecordRows, rows: list[StoredRecord], found: Sequence[int | None], published: int, *, at_start: bool
) -> tuple[list[Op], int, int]:
    """The ops settling or dropping unsettled ``rows`` given where their entries are in the log; (ops, settled, dropped).

    ``found`` is each row's entry's first index in the log, or None. An index
    another settled record holds means admission refused this copy: drop it. A
    row not found is dropped only at start (otherwise it may be on its way). A
    row found at or beyond ``published`` is committed but not yet published:
    kept, for a later checkpoint (receipts only ever name published ones).
    """
    taken = store.settled_indexes([i for i in found if i is not None])
    ops: list[Op] = []
    settled = dropped = 0
    for rec, index in zip(rows, found):
        if index is None and not at_start:
            continue
        if index is None or index in taken:
            ops.append(record_ops.Drop(rec.relationship, [rec.seq]))
            if rec.seq == 0:
                # The genesis never reached the log: the relationship was never created.
                ops.append(record_ops.DropRelationship(rec.relationship))
            dropped += 1
        elif index < published:
            ops.append(record_ops.settle(rec.relationship, [(rec.seq, index)], published))
            taken.add(index)
            settled += 1
    return ops, settled, dropped


def reconcile(store: RecordRows, find_leaf: Callable[[bytes], int | None], published_size: int) -> tuple[int, int]:
    """Step 7, at start, before any request: settle or drop every row a crash left without its index; (settled, dropped).

    ``find_leaf`` searches the whole committed log. With witnesses, the published
    checkpoint may be older than the log: a row whose entry lies beyond it stays
    unsettled (it is committed, so never dropped) until a checkpoint covering it
    is published.
    """
    rows = store.unsettled()
    found = [find_leaf(leaf_hash(rec.entry)) for rec in rows]
    ops, settled, dropped = _repair_ops(store, rows, found, published_size, at_start=True)
    if ops:
        for result in store.write(ops):
            if isinstance(result, BaseException):
                raise result
    return settled, dropped


# --- the implementations each port has (checked by mypy, as Sunlight checks its backends at compile time) ---

if TYPE_CHECKING:

    def _ports(records: RecordTables, writer: GroupWriter, store: LogTables, sequencer: Sequencer, sequencing: Sequencing) -> None:
        _rows: RecordRows = records
        _writer: RowWriter = writer
        _leaves: LeafIndex = store
        _sequencer: LogSequencer = sequencer
        _link: SequencerLink = sequencing
