"""An HTTP worker's view of the sequencer, which runs in the parent process (``pacspace serve --workers N``).

``RemoteSequencer`` is a worker's ``appending.SequencerLink``: ``commit``
(durable once it returns, exactly as in-process, and the records' rows settled
by the parent, whose ``appending.Sequencing`` runs steps 2 to 4), ``find_leaves``,
``settled`` and ``latest``, plus ``published`` and ``metrics_text`` for the
read API. Submissions made while a call is on the wire are coalesced into the
next call, so the channel costs one round trip per batch, not per record. The
published checkpoint is read from log.db, which the parent commits before it
answers anyone: a worker never serves a checkpoint older than one a client
already got from another worker.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from ..appending import Commit, Row
from ..checkpoint import SignedCheckpoint, open_checkpoint
from ..errors import PacspaceError, SequencerStopped
from ..note import Ed25519Verifier
from ..policy import Policy
from ..storage.logtables import LogTables
from .published import PublishedView
from .ipc import FIND_LEAVES_PATH, SEQUENCE_PATH, SETTLED_PATH, SequencedRange, encode_records, error_from_json

if TYPE_CHECKING:
    from ..appending import SequencerLink

# Entries per call on the channel; more wait for the next call.
MAX_CALL_ENTRIES = 65536
# A sequence call waits for a commit (and, with witnesses, their cosignatures): never this long.
CALL_TIMEOUT = aiohttp.ClientTimeout(total=120)
# Calls on the wire at once: enough to keep the parent's pool fed while earlier calls wait for their commit.
MAX_CALLS_IN_FLIGHT = 4


@dataclass
class _Waiting:
    entries: list[bytes]
    rows: list[Row]
    future: asyncio.Future[Commit]


@dataclass
class RemoteSequencer:
    session: aiohttp.ClientSession  # bound to the parent's Unix socket
    store: LogTables  # log.db, read-only
    verifier: Ed25519Verifier
    policy: Policy | None = None
    _waiting: list[_Waiting] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._view = PublishedView(self.store, self.verifier, self.policy)

    @property
    def published(self) -> SignedCheckpoint:
        return self._view.published

    @property
    def latest(self) -> SignedCheckpoint:
        """The latest published checkpoint, as committed by the parent (one small read of log.db)."""
        return self._view.latest

    async def commit(self, entries: list[bytes], rows: list[Row]) -> Commit:
        """Sequence records' entries in the parent; returns once they are durable in the log and their rows settled.

        No index for each record of a relationship the parent refused (a tag repeats; nothing of it was appended).
        """
        if not entries:
            return Commit([], None)
        future: asyncio.Future[Commit] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(list(entries), list(rows), future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        """Send waiting submissions until cancelled, up to MAX_CALLS_IN_FLIGHT calls at once."""
        slots = asyncio.Semaphore(MAX_CALLS_IN_FLIGHT)
        calls: set[asyncio.Task[None]] = set()
        try:
            while True:
                while not self._waiting:
                    self._wake.clear()
                    await self._wake.wait()
                await slots.acquire()
                batch: list[_Waiting] = []
                count = 0
                while self._waiting and (not batch or count + len(self._waiting[0].entries) <= MAX_CALL_ENTRIES):
                    waiting = self._waiting.pop(0)
                    batch.append(waiting)
                    count += len(waiting.entries)
                task = asyncio.create_task(self._call(batch))
                calls.add(task)
                task.add_done_callback(calls.discard)
                task.add_done_callback(lambda _: slots.release())
        finally:
            for waiting in self._waiting:
                if not waiting.future.done():
                    waiting.future.set_exception(SequencerStopped("the server is shutting down; nothing was appended"))
            if calls:
                await asyncio.gather(*calls, return_exceptions=True)

    async def _call(self, batch: list[_Waiting]) -> None:
        entries = [e for w in batch for e in w.entries]
        rows = [r for w in batch for r in w.rows]
        try:
            async with self.session.post(
                f"http://sequencer{SEQUENCE_PATH}", data=encode_records(entries, rows), timeout=CALL_TIMEOUT
            ) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise error_from_json(body)
        except PacspaceError as exc:
            self._fail(batch, exc)  # the parent's own answer: typed, and it says whether anything was appended
            return
        except Exception as exc:
            # The parent went away or timed out: whether these entries were committed is unknown here;
            # the rows stay unsettled and are settled from the log later.
            self._fail(batch, SequencerStopped(f"lost the sequencing process: {type(exc).__name__}"))
            return
        try:
            answer = SequencedRange.from_json(body)
            checkpoint = self._checkpoint(answer.note) if answer.count else None
        except Exception as exc:
            # Committed, but the answer is unreadable: the rows stay, to be settled from the log.
            self._fail(batch, SequencerStopped(f"unreadable answer from the sequencing process: {type(exc).__name__}"))
            return
        index = answer.first_index
        for waiting in batch:
            indexes: list[int | None] = []
            if checkpoint is not None and not answer.refused:
                indexes = list(range(index, index + len(waiting.rows)))
                index += len(waiting.rows)
            for rid, _ in waiting.rows if not indexes else ():
                if rid in answer.refused or checkpoint is None:
                    indexes.append(None)
                else:
                    indexes.append(index)
                    index += 1
            if not waiting.future.done():
                waiting.future.set_result(Commit(indexes, checkpoint))

    def _checkpoint(self, note: bytes) -> SignedCheckpoint:
        if note == self.published.format():
            return self.published
        checkpoint = open_checkpoint(note, self.verifier)
        self._view.advance(checkpoint)
        return checkpoint

    @staticmethod
    def _fail(batch: list[_Waiting], exc: BaseException) -> None:
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_exception(exc)

    async def find_leaves(self, hashes: list[bytes], size: int) -> list[int | None]:
        """Each leaf hash's first index below ``size`` in the parent's published tree, or None (the parent's leaf
        index is the complete one)."""
        body = {"hashes": [base64.b64encode(h).decode() for h in hashes]}
        async with self.session.post(f"http://sequencer{FIND_LEAVES_PATH}", json=body, timeout=CALL_TIMEOUT) as resp:
            answer: dict[str, Any] = await resp.json()
            if resp.status != 200:
                raise error_from_json(answer)
        return [i if i is not None and i < size else None for i in answer["indexes"]]

    async def settled(self, timeout: float) -> None:
        """Wait (up to ``timeout``) until the parent has written every settle it has queued."""
        try:
            async with self.session.post(
                f"http://sequencer{SETTLED_PATH}", json={"timeout": timeout}, timeout=aiohttp.ClientTimeout(total=timeout + 5)
            ) as resp:
                await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            pass  # the parent is gone: nothing more will be settled before the next start

    async def metrics_text(self) -> str:
        async with self.session.get("http://sequencer/metrics", timeout=CALL_TIMEOUT) as resp:
            return await resp.text()


if TYPE_CHECKING:  # mypy checks that a worker's link is appending.py's port

    def _is_link(remote: RemoteSequencer) -> SequencerLink:
        return remote
