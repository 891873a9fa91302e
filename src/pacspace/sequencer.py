"""The single writer: pools submissions, sequences them, signs and durably commits one checkpoint per batch.

One ``Sequencer.run`` task owns every write. Each batch goes through these steps,
modelled on Sunlight's ``sequencePool``:

1. take the whole pool as soon as it holds something and the last batch started at least
   ``pool_interval`` ago (group commit; the pool is bounded: a full pool refuses with PoolFull);
2. assign consecutive indexes from the current size and hash the leaves;
3. extend the right-edge tiles and entry bundle in memory (``tiles.extend``);
4. prove the new tree consistent with the last signed checkpoint, from the
   new tiles, and refuse to sign otherwise;
5. sign the checkpoint (Ed25519, key name = origin) and add the log's own
   timestamped cosignature, so every checkpoint carries a signed time;
6. commit tiles, bundles, leaf index and checkpoint in one SQLite transaction
   that is fsynced before it returns, compare-and-swapping the stored size;
7. only then publish the checkpoint and resolve every submitter.

A crash before step 6's COMMIT leaves storage exactly as it was: nothing was
acknowledged and the submitters see a dropped connection. A crash after it
leaves a committed batch whose submitters may not have heard back; it is
published on restart. If any step fails, the sequencer stops, fails every
waiting submitter with SequencerStopped, and re-raises: the server exits
rather than accept writes it cannot sequence.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from .checkpoint import Checkpoint, SignedCheckpoint, sign_checkpoint
from .datadir import LogState
from .errors import EntryTooLarge, MalformedInput, PacspaceError, PoolFull, ProofError, SequencerStopped, UntrustedState
from .merkle import Hash, HashReader, Node, consistency_proof, inclusion_proof, leaf_hash, verify_consistency
from .metrics import LogMetrics
from .note import NoteSigner
from .storage.base import Batch, LogWriter
from .tiles import MAX_ENTRY_SIZE, TILE_WIDTH, TileUpdate, encode_bundle, extend, locate, pack_interior

log = logging.getLogger("pacspace.sequencer")

# How often a committed checkpoint that lacks the witnesses' quorum is offered to them again.
REPUBLISH_INTERVAL = 2.0
# Least time between two storage maintenance runs (leaf-index flush, WAL checkpoint) under load.
MAINTENANCE_INTERVAL = 0.1


class StorageFailed(RuntimeError):
    """The log's storage failed outside a commit (storing a cosigned checkpoint): the sequencer stops. Not a
    PacspaceError, so that no handler of witness failures takes it for one."""


@dataclass(frozen=True)
class SequencerConfig:
    # Group commit: a batch starts as soon as the pool holds something and the last batch started at
    # least this long ago, so a lone submission is sequenced at once, and under load what arrives
    # during one commit goes into the next. It bounds the checkpoints signed a second (1 / interval,
    # here 200; none when idle). Issue 2 asks for at most 500 ms.
    pool_interval: float = 0.005
    # Sequence at once when this many entries wait, without waiting for the interval.
    batch_size: int = 4096
    # Entries allowed to wait; beyond this, submissions are refused (503), never queued without bound.
    pool_capacity: int = 262_144

    def __post_init__(self) -> None:
        if not 0 < self.pool_interval <= 0.5:
            raise ValueError("pool_interval must be in (0, 0.5] seconds")
        if self.batch_size < 1 or self.pool_capacity < self.batch_size:
            raise ValueError("need 1 <= batch_size <= pool_capacity")


@dataclass(frozen=True)
class Sequenced:
    """A submitter's answer: its index, in the durable checkpoint ``checkpoint``, and its proof.

    The inclusion proof is computed on demand from committed tiles (O(log n)
    reads): most callers of the bulk path never need one, and computing 100,000
    proofs per second eagerly would cost more than sequencing them.
    """

    index: int
    leaf_hash: Hash
    checkpoint: SignedCheckpoint
    _tree: HashReader = field(repr=False, compare=False)

    def inclusion_proof(self) -> list[Hash]:
        """RFC 9162 inclusion path of this entry in ``checkpoint``'s tree."""
        return inclusion_proof(self.index, self.checkpoint.size, self._tree)


@dataclass
class _Submission:
    entries: list[bytes]
    future: asyncio.Future[list[Sequenced]]
    arrived: float


@dataclass(frozen=True)
class _Outcome:
    state: LogState
    first_index: int
    leaf_hashes: list[Hash]


class _OverlayReader:
    """HashReader over a batch's fresh tiles, falling back to committed storage."""

    def __init__(self, update: TileUpdate, store: LogWriter) -> None:
        self._expanded = update.expanded
        self._store = store

    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        out = []
        for node in nodes:
            loc = locate(node)
            levels = self._expanded.get((loc.tile_level, loc.tile_n))
            if levels is not None and loc.position < len(levels[loc.sublevel]):
                out.append(levels[loc.sublevel][loc.position])
            else:
                out.append(self._store.read_hashes([node])[0])
        return out


@dataclass
class Sequencer:
    store: LogWriter
    signer: NoteSigner
    state: LogState
    config: SequencerConfig = field(default_factory=SequencerConfig)
    clock: Callable[[], float] = time.time
    metrics: LogMetrics = field(default_factory=LogMetrics)
    # With witnesses: adds their cosignatures to a committed checkpoint, or raises (server/witnessing.py).
    witness: Callable[[SignedCheckpoint], Awaitable[SignedCheckpoint]] | None = None

    def __post_init__(self) -> None:
        # Owned by the event loop thread: the pool and the published state.
        self._pool: list[_Submission] = []
        self._pending = 0
        self._wake = asyncio.Event()
        self._stopped: BaseException | None = None
        self._storage_failed: StorageFailed | None = None  # set by _republish; the run loop raises it
        # The commit runs in one worker thread so the event loop keeps serving reads during fsync.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacspace-sequencer")
        # Leaf-index flushes and WAL checkpoints run here, on the other core, never on the commit path.
        self._maintenance = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacspace-maintenance")
        self._maintenance_run: Future[None] | None = None
        # One witness round at a time: a batch's, or a retry of the newest unpublished checkpoint's.
        self._witnessing = asyncio.Lock()
        self._maintained_at = -math.inf
        self._batch_started = -math.inf
        self.metrics.tree_size = self.state.size
        # Owned by the event loop. Without witnesses, every committed checkpoint is published at once;
        # with them, only one that got the policy's quorum of cosignatures.
        self.published: SignedCheckpoint = self.state.checkpoint

    @property
    def latest(self) -> SignedCheckpoint:
        """The latest published checkpoint: durably committed (and, with witnesses, cosigned by a quorum)."""
        return self.published

    async def submit(self, entry: bytes) -> Sequenced:
        """Append one entry; returns once the checkpoint that covers it is durable."""
        return (await self.submit_many([entry]))[0]

    async def submit_many(self, entries: Sequence[bytes]) -> list[Sequenced]:
        """Append entries as consecutive indexes in one batch (the bulk path); one future for all."""
        if self._stopped is not None:
            raise SequencerStopped("the sequencer has stopped; nothing was appended")
        for entry in entries:
            if not isinstance(entry, bytes):
                raise MalformedInput(f"an entry must be bytes, not {type(entry).__name__}")
            if len(entry) > MAX_ENTRY_SIZE:
                raise EntryTooLarge(f"entry of {len(entry)} bytes exceeds {MAX_ENTRY_SIZE}")
        if not entries:
            return []
        # A bulk submission larger than the pool is taken only into an empty pool.
        if self._pool and self._pending + len(entries) > self.config.pool_capacity:
            self.metrics.pool_rejections_total += 1
            raise PoolFull(
                f"{self._pending} entries are waiting to be sequenced; retry shortly",
                retry_after=max(1, math.ceil(self.config.pool_interval)),
            )
        future: asyncio.Future[list[Sequenced]] = asyncio.get_running_loop().create_future()
        self._pool.append(_Submission(list(entries), future, time.monotonic()))
        self._pending += len(entries)
        self.metrics.pool_depth = self._pending
        self._wake.set()
        # A submitter that goes away cancels only its own wait: its entries stay in
        # the pool, are committed with the batch, and _resolve skips the cancelled future.
        return await future

    def inclusion_proof(self, index: int, size: int) -> list[Hash]:
        return inclusion_proof(index, size, self.store)

    async def metrics_text(self) -> str:
        """The Prometheus text of the log's metrics (as an HTTP worker's RemoteSequencer fetches it from here)."""
        return self.metrics.render() + self.store.metrics_text()

    async def run(self) -> None:
        """Sequence until cancelled. Any failure stops the sequencer and is re-raised."""
        batch: list[_Submission] = []
        republish = asyncio.create_task(self._republish()) if self.witness is not None else None
        try:
            while True:
                await self._wait_for_batch()
                self._batch_started = time.monotonic()
                batch, self._pool, self._pending = self._pool, [], 0
                self.metrics.pool_depth = 0
                await self._sequence_pool(batch)
                batch = []
        except BaseException as exc:
            self._stop(batch, exc)
            raise
        finally:
            if republish is not None:
                republish.cancel()
                await asyncio.gather(republish, return_exceptions=True)
            self._executor.shutdown(wait=True)
            self._maintenance.shutdown(wait=True)

    async def _sequence_pool(self, pool: list[_Submission]) -> None:
        entries = [e for sub in pool for e in sub.entries]
        started = time.monotonic()
        work = asyncio.get_running_loop().run_in_executor(self._executor, self._sequence, self.state, entries)
        try:
            outcome = await asyncio.shield(work)
        except asyncio.CancelledError:
            # Shutting down mid-commit: let the commit finish and answer its submitters first,
            # however many times we are asked to stop meanwhile.
            while not work.done():
                try:
                    await asyncio.shield(work)
                except asyncio.CancelledError:
                    continue
            if self.witness is not None:
                self.state = work.result().state
                self._fail(pool, SequencerStopped("committed, but shut down before the witnesses cosigned it"))
            else:
                self._publish(pool, entries, started, work.result())
            raise
        if self.witness is not None:
            # Committed: the next batch extends this tree whatever the witnesses say.
            self.state = outcome.state
            try:
                cosigned = await self._cosign(outcome.state.checkpoint)
            except PacspaceError as exc:
                self.metrics.witness_failures_total += 1
                self._fail(pool, exc)
                return
            outcome = _Outcome(replace(outcome.state, checkpoint=cosigned), outcome.first_index, outcome.leaf_hashes)
        self._publish(pool, entries, started, outcome)

    async def _cosign(self, checkpoint: SignedCheckpoint) -> SignedCheckpoint:
        """The witnesses' cosignatures on a committed checkpoint, stored with it; one round at a time."""
        assert self.witness is not None
        async with self._witnessing:
            cosigned = await self.witness(checkpoint)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self.store.replace_checkpoint, cosigned.size, cosigned.format()
                )
            except Exception as exc:
                # The storage failed, not the witnesses: the sequencer stops, as when a commit fails (its
                # callers count and retry witness failures, a PacspaceError, and would go on without the storage).
                raise StorageFailed(f"storing the cosigned checkpoint {cosigned.size} failed: {exc}") from exc
        return cosigned

    async def _republish(self) -> None:
        """While the newest committed checkpoint lacks the witnesses' quorum, ask again every few seconds.

        Without this, entries committed during a witness outage would stay unpublished (and their
        submitters' retries unanswered) until some other submission started a new batch.
        """
        while True:
            await asyncio.sleep(REPUBLISH_INTERVAL)
            latest = self.state.checkpoint
            if self.published.size >= latest.size or self._witnessing.locked():
                continue
            try:
                cosigned = await self._cosign(latest)
            except PacspaceError as exc:
                self.metrics.witness_failures_total += 1
                log.warning("checkpoint %d still lacks the witnesses' quorum: %s", latest.size, exc)
                continue
            except StorageFailed as exc:
                self._storage_failed = exc  # the run loop stops the sequencer with it
                self._wake.set()
                return
            if cosigned.size > self.published.size:
                self.published = cosigned
                self.metrics.tree_size = cosigned.size
                log.info("published checkpoint %d once the witnesses cosigned it", cosigned.size)

    def _fail(self, pool: list[_Submission], exc: BaseException) -> None:
        for sub in pool:
            if not sub.future.done():
                sub.future.set_exception(exc)

    def _publish(self, pool: list[_Submission], entries: list[bytes], started: float, outcome: _Outcome) -> None:
        # Only ever called after the commit returned: durable from here on.
        self.state = outcome.state
        self.published = outcome.state.checkpoint
        self._record(pool, entries, started)
        self._resolve(pool, outcome)
        # At most one maintenance run at a time, and not after every one of many small batches a second:
        # each run costs a WAL checkpoint.
        now = time.monotonic()
        idle = self._maintenance_run is None or self._maintenance_run.done()
        if idle and now - self._maintained_at >= MAINTENANCE_INTERVAL:
            self._maintained_at = now
            self._maintenance_run = self._maintenance.submit(self.store.maintain)
            self._maintenance_run.add_done_callback(_log_maintenance_failure)

    async def _wait_for_batch(self) -> None:
        while not self._pool:
            if self._storage_failed is not None:
                raise self._storage_failed
            self._wake.clear()
            await self._wake.wait()
        deadline = self._batch_started + self.config.pool_interval
        while self._pending < self.config.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _sequence(self, state: LogState, entries: list[bytes]) -> _Outcome:
        """Steps 2-6, in the worker thread. Pure but for the final commit."""
        old = state.checkpoint
        hashes = [leaf_hash(e) for e in entries]
        update = extend(old.size, state.edge, hashes)
        self._check_consistent(old, update)
        # Signed times never go backwards, even if the clock does.
        timestamp = max(int(self.clock()), old.timestamp)
        checkpoint = sign_checkpoint(Checkpoint(old.checkpoint.origin, update.size, update.root), self.signer, timestamp)
        bundles, edge_entries = _bundles(old.size, state.edge_entries, entries)
        batch = Batch(
            old_size=old.size,
            new_size=update.size,
            tiles={
                key: (b"".join(hashes_), pack_interior(update.expanded[key]))
                for key, hashes_ in update.tiles.items()
            },
            bundles=bundles,
            leaf_hashes=hashes,
            checkpoint=checkpoint.format(),
            entries=entries,
        )
        self.store.commit(batch)
        return _Outcome(LogState(checkpoint, update.edge, edge_entries), old.size, hashes)

    def _check_consistent(self, old: SignedCheckpoint, update: TileUpdate) -> None:
        """Never sign a tree that does not extend the last signed one (RFC 9162 §2.1.4)."""
        reader = _OverlayReader(update, self.store)
        proof = consistency_proof(old.size, update.size, reader)
        try:
            verify_consistency(old.size, update.size, old.root_hash, update.root, proof)
        except ProofError as exc:
            raise UntrustedState(
                f"refusing to sign size {update.size}: not consistent with size {old.size}: {exc}"
            ) from None

    def _record(self, pool: list[_Submission], entries: list[bytes], started: float) -> None:
        now = time.monotonic()
        self.metrics.tree_size = self.state.size
        self.metrics.appends_total += len(entries)
        self.metrics.checkpoints_total += 1
        self.metrics.batch_size.observe(len(entries))
        self.metrics.commit_seconds.observe(now - started)
        self.metrics.sequencing_seconds.observe(now - pool[0].arrived)

    def _resolve(self, pool: list[_Submission], outcome: _Outcome) -> None:
        checkpoint = outcome.state.checkpoint
        index = outcome.first_index
        for sub in pool:
            count = len(sub.entries)
            hashes = outcome.leaf_hashes[index - outcome.first_index : index - outcome.first_index + count]
            result = [Sequenced(index + i, h, checkpoint, self.store) for i, h in enumerate(hashes)]
            index += count
            if not sub.future.done():
                sub.future.set_result(result)

    def _stop(self, in_flight: list[_Submission], exc: BaseException) -> None:
        self._stopped = exc
        pool, self._pool, self._pending = self._pool, [], 0
        # A batch in flight may have been committed (storage can fail after COMMIT took effect, e.g. a
        # connection lost while PostgreSQL answered it): its submitters cannot be told "not appended".
        for sub in in_flight:
            if not sub.future.done():
                sub.future.set_exception(SequencerStopped("the sequencer stopped while committing the entry: it may "
                                                          "be in the log; the next start settles it"))
        for sub in pool:
            if not sub.future.done():
                sub.future.set_exception(SequencerStopped("the sequencer stopped; the entry was not appended"))


def _log_maintenance_failure(done: Future[None]) -> None:
    exc = done.exception()
    if exc is not None:
        # Maintenance is recoverable (a WAL checkpoint, a leaf-index flush): log it, keep sequencing.
        log.error("storage maintenance failed: %s", exc)


def _bundles(size: int, edge_entries: list[bytes], entries: list[bytes]) -> tuple[dict[int, bytes], list[bytes]]:
    """The entry bundles a batch rewrites, and the new partial bundle's entries."""
    combined = edge_entries + entries
    first = size // TILE_WIDTH
    bundles = {}
    tail: list[bytes] = []
    for i in range(0, len(combined), TILE_WIDTH):
        chunk = combined[i : i + TILE_WIDTH]
        bundles[first + i // TILE_WIDTH] = encode_bundle(chunk)
        tail = chunk if len(chunk) < TILE_WIDTH else []
    return bundles, tail
